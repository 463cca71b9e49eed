//! The digest a worker checks its model file against before anything parses it.
//!
//! The agent takes it from the signed manifest it has just verified (never from hashing the
//! staged file again), so the worker's check binds what it loads to what was signed: a file
//! changed after verification, or between verification and the worker's read, is refused.
//! The manifest's own form is kept — the whole file's digest, or its shards' digests — so the
//! worker hashes the file the way its signer did: SHA-256, BLAKE2b-512 or BLAKE3 over the
//! whole file, or over each shard of `shard_size` bytes (model_signing's shard boundaries:
//! every `shard_size` bytes and the end of the file; an empty file has no shard).
//!
//! On the worker's command line it is `--digest HASH:HEX` for a whole file (`sha256:…`,
//! `blake2b:…`, `blake3:…`) and `--digest HASH-sharded-SIZE:HEX` for shards, where HEX is the
//! SHA-256 of the shards' digests concatenated in file order: one fixed-size argument however
//! many shards a model has, and each shard still checked.

use std::fmt;
use std::str::FromStr;

use blake2::Blake2b512;
use sha2::{Digest as _, Sha256};

/// The hash a model was signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestHash {
    /// SHA-256, model_signing's default.
    Sha256,
    /// BLAKE2b with a 64-byte output.
    Blake2b,
    /// BLAKE3 with a 32-byte output.
    Blake3,
}

impl DigestHash {
    fn name(self) -> &'static str {
        match self {
            DigestHash::Sha256 => "sha256",
            DigestHash::Blake2b => "blake2b",
            DigestHash::Blake3 => "blake3",
        }
    }

    fn from_name(name: &str) -> Option<DigestHash> {
        match name {
            "sha256" => Some(DigestHash::Sha256),
            "blake2b" => Some(DigestHash::Blake2b),
            "blake3" => Some(DigestHash::Blake3),
            _ => None,
        }
    }

    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            DigestHash::Sha256 | DigestHash::Blake3 => 32,
            DigestHash::Blake2b => 64,
        }
    }

    fn hash(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            DigestHash::Sha256 => Sha256::digest(bytes).to_vec(),
            DigestHash::Blake2b => Blake2b512::digest(bytes).to_vec(),
            DigestHash::Blake3 => blake3::hash(bytes).as_bytes().to_vec(),
        }
    }
}

/// What a model file must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDigest {
    hash: DigestHash,
    /// `None`: `value` is the whole file's digest. `Some(n)`: `value` is the SHA-256 of the
    /// digests of the file's shards of `n` bytes.
    shard_size: Option<u64>,
    value: Vec<u8>,
}

/// Why a digest could not be built, parsed, or was not matched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// A digest of the wrong length for its hash.
    #[error("a {hash} digest has {expected} bytes, not {actual}")]
    Length {
        /// The hash.
        hash: &'static str,
        /// Its output length.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// A shard size of zero.
    #[error("the shard size must be positive")]
    ShardSize,
    /// Not `HASH:HEX` or `HASH-sharded-SIZE:HEX`.
    #[error(
        "not a model digest (HASH:HEX or HASH-sharded-SIZE:HEX with HASH sha256, blake2b or blake3)"
    )]
    Syntax,
    /// The file does not hash to the expected digest.
    #[error("model digest mismatch: expected {expected}, the file has {actual}")]
    Mismatch {
        /// The expected digest, as on the command line.
        expected: String,
        /// What the file hashed to, in the same form.
        actual: String,
    },
}

impl ModelDigest {
    /// A whole file's digest.
    pub fn whole(hash: DigestHash, digest: Vec<u8>) -> Result<ModelDigest, DigestError> {
        check_len(hash, digest.len())?;
        Ok(ModelDigest {
            hash,
            shard_size: None,
            value: digest,
        })
    }

    /// A file's shards' digests, in file order.
    pub fn shards(
        hash: DigestHash,
        shard_size: u64,
        digests: &[Vec<u8>],
    ) -> Result<ModelDigest, DigestError> {
        if shard_size == 0 {
            return Err(DigestError::ShardSize);
        }
        let mut all = Sha256::new();
        for d in digests {
            check_len(hash, d.len())?;
            all.update(d);
        }
        Ok(ModelDigest {
            hash,
            shard_size: Some(shard_size),
            value: all.finalize().to_vec(),
        })
    }

    /// What `bytes` hash to in the form of `self` (same hash, same shards).
    pub fn of_bytes(&self, bytes: &[u8]) -> ModelDigest {
        let value = match self.shard_size {
            None => self.hash.hash(bytes),
            Some(size) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                let mut all = Sha256::new();
                // model_signing's boundaries: every `size` bytes, the last shard shorter.
                for shard in bytes.chunks(size) {
                    all.update(self.hash.hash(shard));
                }
                all.finalize().to_vec()
            }
        };
        ModelDigest {
            hash: self.hash,
            shard_size: self.shard_size,
            value,
        }
    }

    /// The SHA-256 of a whole file's bytes (for tests and tools that start a worker on a file
    /// they hold, outside any signature).
    pub fn sha256_of(bytes: &[u8]) -> ModelDigest {
        ModelDigest {
            hash: DigestHash::Sha256,
            shard_size: None,
            value: Sha256::digest(bytes).to_vec(),
        }
    }

    /// Checks `bytes` against the digest.
    pub fn check(&self, bytes: &[u8]) -> Result<(), DigestError> {
        let actual = self.of_bytes(bytes);
        if actual == *self {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.to_string(),
                actual: actual.to_string(),
            })
        }
    }
}

fn check_len(hash: DigestHash, actual: usize) -> Result<(), DigestError> {
    if actual == hash.output_len() {
        Ok(())
    } else {
        Err(DigestError::Length {
            hash: hash.name(),
            expected: hash.output_len(),
            actual,
        })
    }
}

impl fmt::Display for ModelDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hash.name())?;
        if let Some(n) = self.shard_size {
            write!(f, "-sharded-{n}")?;
        }
        write!(f, ":{}", hex::encode(&self.value))
    }
}

impl FromStr for ModelDigest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<ModelDigest, DigestError> {
        let (form, digits) = s.split_once(':').ok_or(DigestError::Syntax)?;
        let (hash, shard_size) = match form.split_once("-sharded-") {
            Some((hash, n)) => {
                // Digits only: no sign, no spaces.
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(DigestError::Syntax);
                }
                (
                    hash,
                    Some(n.parse::<u64>().map_err(|_| DigestError::Syntax)?),
                )
            }
            None => (form, None),
        };
        let hash = DigestHash::from_name(hash).ok_or(DigestError::Syntax)?;
        if shard_size == Some(0) {
            return Err(DigestError::ShardSize);
        }
        let value = hex::decode(digits).map_err(|_| DigestError::Syntax)?;
        let expected = if shard_size.is_some() {
            32
        } else {
            hash.output_len()
        };
        if value.len() != expected {
            return Err(DigestError::Length {
                hash: if shard_size.is_some() {
                    "sha256 (of the shard digests)"
                } else {
                    hash.name()
                },
                expected,
                actual: value.len(),
            });
        }
        Ok(ModelDigest {
            hash,
            shard_size,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn whole_file_digests_check_and_refuse() {
        let b = bytes();
        for hash in [DigestHash::Sha256, DigestHash::Blake2b, DigestHash::Blake3] {
            let d = ModelDigest::whole(hash, hash.hash(&b)).unwrap();
            assert_eq!(d.check(&b), Ok(()));
            let mut changed = b.clone();
            changed[9_999] ^= 1;
            assert!(matches!(
                d.check(&changed),
                Err(DigestError::Mismatch { .. })
            ));
            assert_eq!(d.to_string().parse::<ModelDigest>().unwrap(), d);
        }
        assert_eq!(
            ModelDigest::whole(DigestHash::Blake2b, vec![0; 32]),
            Err(DigestError::Length {
                hash: "blake2b",
                expected: 64,
                actual: 32
            })
        );
    }

    #[test]
    fn shards_follow_model_signings_boundaries() {
        let b = bytes();
        // Shards of 4096: [0, 4096), [4096, 8192), [8192, 10000).
        let digests: Vec<Vec<u8>> = [0..4096, 4096..8192, 8192..10_000]
            .into_iter()
            .map(|r| Sha256::digest(&b[r]).to_vec())
            .collect();
        let d = ModelDigest::shards(DigestHash::Sha256, 4096, &digests).unwrap();
        assert_eq!(d.check(&b), Ok(()));
        assert!(d.to_string().starts_with("sha256-sharded-4096:"));
        assert_eq!(d.to_string().parse::<ModelDigest>().unwrap(), d);
        // A changed byte in the middle shard, a missing or an extra byte: refused.
        let mut changed = b.clone();
        changed[5000] ^= 1;
        assert!(d.check(&changed).is_err());
        assert!(d.check(&b[..9_999]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(d.check(&longer).is_err());
        // Another shard size over the same bytes is another digest.
        let other = ModelDigest::shards(DigestHash::Sha256, 2048, &digests).unwrap();
        assert!(other.check(&b).is_err());
        // An empty file has no shard.
        let empty = ModelDigest::shards(DigestHash::Blake2b, 4096, &[]).unwrap();
        assert_eq!(empty.check(&[]), Ok(()));
    }

    #[test]
    fn the_command_line_form_is_strict() {
        let sha = "ab".repeat(32);
        assert!(format!("sha256:{sha}").parse::<ModelDigest>().is_ok());
        assert!(
            format!("sha256-sharded-1024:{sha}")
                .parse::<ModelDigest>()
                .is_ok()
        );
        for bad in [
            String::new(),
            sha.clone(),
            format!("md5:{sha}"),
            format!("sha256:{}", &sha[1..]),
            format!("sha256:{}zz", &sha[2..]),
            format!("blake2b:{sha}"),
            format!("sha256-sharded-:{sha}"),
            format!("sha256-sharded-+1:{sha}"),
            format!("sha256-sharded-0:{sha}"),
            format!("sha256-sharded-1024:{sha}00"),
        ] {
            assert!(bad.parse::<ModelDigest>().is_err(), "{bad:?}");
        }
    }
}
