//! Resource digest algorithms, named exactly as model_signing names them in the predicate.

use sha2::Digest as _;

/// Digest algorithm for the model's resources (files or shards).
///
/// The root digest in the statement's subject is always SHA-256 over the resource digests,
/// whatever this algorithm is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// SHA-256 (`"sha256"`), model_signing's default.
    #[default]
    Sha256,
    /// BLAKE2b with a 64-byte output (`"blake2b"`, Python's `hashlib.blake2b()` defaults).
    Blake2b,
    /// BLAKE3 with a 32-byte output (`"blake3"`).
    Blake3,
}

impl HashAlgorithm {
    /// The name recorded as `hash_type` and, for file serialization, as each resource's
    /// `algorithm`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Blake2b => "blake2b",
            Self::Blake3 => "blake3",
        }
    }

    /// Parses a `hash_type` as model_signing records it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Self::Sha256),
            "blake2b" => Some(Self::Blake2b),
            "blake3" => Some(Self::Blake3),
            _ => None,
        }
    }

    /// Length of a digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha256 | Self::Blake3 => 32,
            Self::Blake2b => 64,
        }
    }

    pub(crate) fn hasher(self) -> StreamHasher {
        match self {
            Self::Sha256 => StreamHasher::Sha256(sha2::Sha256::new()),
            Self::Blake2b => StreamHasher::Blake2b(blake2::Blake2b512::new()),
            Self::Blake3 => StreamHasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }
}

impl std::str::FromStr for HashAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // "blake2" is what model_signing's Python API calls it; accept both spellings.
        match s {
            "blake2" => Ok(Self::Blake2b),
            other => Self::from_name(other)
                .ok_or_else(|| format!("unknown hash {other:?} (sha256, blake2b, blake3)")),
        }
    }
}

/// An incremental hasher over one resource.
pub(crate) enum StreamHasher {
    Sha256(sha2::Sha256),
    Blake2b(blake2::Blake2b512),
    // Boxed: the BLAKE3 state is large (≈2 KiB) next to the others.
    Blake3(Box<blake3::Hasher>),
}

impl StreamHasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Blake2b(h) => h.update(data),
            // BLAKE3 is tree-hashed: large chunks split across the rayon pool, which keeps all
            // cores busy even when the model is one big file.
            Self::Blake3(h) => {
                if data.len() >= 128 * 1024 {
                    h.update_rayon(data);
                } else {
                    h.update(data);
                }
            }
        }
    }

    pub(crate) fn finalize(self) -> Vec<u8> {
        match self {
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Blake2b(h) => h.finalize().to_vec(),
            Self::Blake3(h) => h.finalize().as_bytes().to_vec(),
        }
    }
}

/// SHA-256 of the concatenated resource digests: the statement's subject digest.
pub(crate) fn root_digest<'a>(digests: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = sha2::Sha256::new();
    for d in digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(alg: HashAlgorithm, data: &[u8]) -> String {
        let mut h = alg.hasher();
        h.update(data);
        hex::encode(h.finalize())
    }

    // Known answers computed with Python's hashlib / blake3 (what model_signing uses).
    #[test]
    fn known_answers() {
        assert_eq!(
            digest(HashAlgorithm::Sha256, b"hello"),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            digest(HashAlgorithm::Sha256, b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest(HashAlgorithm::Blake2b, b"hello"),
            "e4cfa39a3d37be31c59609e807970799caa68a19bfaa15135f165085e01d41a6\
             5ba1e1b146aeb6bd0092b49eac214c103ccfa3a365954bbbe52f74a2b3620c94"
        );
        assert_eq!(
            digest(HashAlgorithm::Blake3, b"B"),
            "9f9524ca18c0cc03aef1a0b84faed9375e5d19575e9328e65fea72991f0f58cf"
        );
    }

    #[test]
    fn blake3_large_update_matches_small_updates() {
        let data = vec![7u8; 1 << 20];
        let mut a = HashAlgorithm::Blake3.hasher();
        a.update(&data);
        let mut b = HashAlgorithm::Blake3.hasher();
        for chunk in data.chunks(1000) {
            b.update(chunk);
        }
        assert_eq!(a.finalize(), b.finalize());
    }

    #[test]
    fn names_round_trip() {
        for alg in [
            HashAlgorithm::Sha256,
            HashAlgorithm::Blake2b,
            HashAlgorithm::Blake3,
        ] {
            assert_eq!(HashAlgorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(
            "blake2".parse::<HashAlgorithm>(),
            Ok(HashAlgorithm::Blake2b)
        );
    }

    #[test]
    fn root_digest_of_python_sample() {
        // Resource digests and root digest from a bundle signed by model_signing 1.1.1
        // (files B, a.bin, empty, sub/a, sub/deep/big, sub.txt in signed order).
        let resources = [
            "df7e70e5021544f4834bbee64a9e3789febc4be81470df629cad6ddb03320a5c",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa",
            "e1630f843370f402870799e14abbf2b06af2d23b0153658e1211dffabc61ad8f",
            "594e519ae499312b29433b7dd8a97ff068defcba9755b6d5d00e84c524d67b06",
        ];
        let bytes: Vec<Vec<u8>> = resources.iter().map(|h| hex::decode(h).unwrap()).collect();
        assert_eq!(
            root_digest(bytes.iter().map(Vec::as_slice)),
            "79cff9323a3fc13341542ccf6500ab99335166d13a6bb8f720461f4b30a7c086"
        );
    }
}
