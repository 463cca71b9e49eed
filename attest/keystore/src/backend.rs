//! What every backend shares: counter moves, the size and header of sealed blobs, and P-256
//! keys and signatures from the raw coordinates and scalars a TPM or token returns. Public for
//! the backends of the key service (`warden-keyd`); nothing here holds a key.

use crate::{Counter, KeyStoreError, MAX_COUNTER_STEP, MAX_SEALED_BYTES};

/// Checks a counter move common to every backend; returns how many steps to take.
pub fn counter_step(counter: Counter, current: u64, to: u64) -> Result<u64, KeyStoreError> {
    if to < current {
        return Err(KeyStoreError::CounterRollback {
            counter,
            current,
            requested: to,
        });
    }
    let step = to - current;
    if step > MAX_COUNTER_STEP {
        return Err(KeyStoreError::CounterStepTooLarge {
            counter,
            current,
            requested: to,
            limit: MAX_COUNTER_STEP,
        });
    }
    Ok(step)
}

/// Checks a secret's size before sealing.
pub fn check_seal_size(secret: &[u8]) -> Result<(), KeyStoreError> {
    if secret.is_empty() || secret.len() > MAX_SEALED_BYTES {
        return Err(KeyStoreError::InvalidInput {
            detail: format!(
                "a sealed secret must hold 1 to {MAX_SEALED_BYTES} bytes, not {}",
                secret.len()
            ),
        });
    }
    Ok(())
}

/// Header of sealed blobs: magic, version, backend tag; a blob from another backend is refused
/// by name instead of failing to decrypt.
pub const SEAL_MAGIC: &[u8; 4] = b"WSL1";

pub fn seal_header(backend_tag: u8) -> Vec<u8> {
    let mut v = SEAL_MAGIC.to_vec();
    v.push(backend_tag);
    v
}

/// Splits a sealed blob's header off; refuses blobs of another backend.
pub fn seal_body<'a>(
    blob: &'a [u8],
    backend_tag: u8,
    backend: &'static str,
) -> Result<&'a [u8], KeyStoreError> {
    let Some(rest) = blob.strip_prefix(SEAL_MAGIC.as_slice()) else {
        return Err(KeyStoreError::MalformedSealedBlob {
            detail: "not a Warden sealed blob".to_owned(),
        });
    };
    match rest.split_first() {
        Some((tag, body)) if *tag == backend_tag => Ok(body),
        Some((tag, _)) => Err(KeyStoreError::MalformedSealedBlob {
            detail: format!(
                "sealed by another backend (tag {tag}), not by this {backend} key store"
            ),
        }),
        None => Err(KeyStoreError::MalformedSealedBlob {
            detail: "truncated".to_owned(),
        }),
    }
}

/// A P-256 public key from its uncompressed coordinates.
pub fn p256_from_xy(x: &[u8], y: &[u8]) -> Result<p256::PublicKey, KeyStoreError> {
    if x.len() > 32 || y.len() > 32 {
        return Err(KeyStoreError::InvalidInput {
            detail: "EC point coordinate longer than 32 bytes".to_owned(),
        });
    }
    let mut sec1 = vec![0x04];
    sec1.extend(std::iter::repeat_n(0, 32 - x.len()));
    sec1.extend_from_slice(x);
    sec1.extend(std::iter::repeat_n(0, 32 - y.len()));
    sec1.extend_from_slice(y);
    p256::PublicKey::from_sec1_bytes(&sec1).map_err(|e| KeyStoreError::InvalidInput {
        detail: format!("device public key is not a P-256 point: {e}"),
    })
}

/// A P-256 signature from its scalars, each possibly shorter than 32 bytes.
pub fn p256_sig_from_rs(r: &[u8], s: &[u8]) -> Result<p256::ecdsa::Signature, KeyStoreError> {
    let pad = |v: &[u8]| -> Result<[u8; 32], KeyStoreError> {
        let v = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[][..],
        };
        if v.len() > 32 {
            return Err(KeyStoreError::InvalidInput {
                detail: "ECDSA scalar longer than 32 bytes".to_owned(),
            });
        }
        let mut out = [0u8; 32];
        out[32 - v.len()..].copy_from_slice(v);
        Ok(out)
    };
    p256::ecdsa::Signature::from_scalars(pad(r)?, pad(s)?).map_err(|e| {
        KeyStoreError::InvalidInput {
            detail: format!("ECDSA signature out of range: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_scalars_are_left_padded() {
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&key, b"message");
        let (r, s) = sig.split_bytes();
        // A TPM may drop leading zero bytes, or add one.
        let trimmed: Vec<u8> = r.iter().copied().skip_while(|b| *b == 0).collect();
        let mut padded = vec![0u8];
        padded.extend_from_slice(&s);
        assert_eq!(p256_sig_from_rs(&trimmed, &padded).unwrap(), sig);
        assert!(p256_sig_from_rs(&[1u8; 33], &s).is_err());
    }

    #[test]
    fn counter_steps_are_checked() {
        let c = Counter::RevocationSerial;
        assert_eq!(counter_step(c, 3, 3).unwrap(), 0);
        assert_eq!(counter_step(c, 3, 4).unwrap(), 1);
        assert!(matches!(
            counter_step(c, 3, 2),
            Err(KeyStoreError::CounterRollback { .. })
        ));
        assert!(matches!(
            counter_step(c, 0, MAX_COUNTER_STEP + 1),
            Err(KeyStoreError::CounterStepTooLarge { .. })
        ));
    }
}
