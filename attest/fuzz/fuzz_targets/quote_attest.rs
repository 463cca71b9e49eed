//! Quote verification off the TPM (`boot::quote::verify_quote`) and its `TPMS_ATTEST` parser,
//! which runs only after the attestation key's signature verifies: the target signs the fuzzed
//! attest bytes with a fixed P-256 AK, so that every input reaches the parser.
//!
//! Input: `flags`, `nonce_len`, the nonce, `n`, n × (PCR index byte, 32-byte value), then the
//! attest bytes. Flags:
//! - bit 0: write the right PCR digest (`TPM2B_DIGEST` of SHA-256 over the carried values)
//!   into the attest's last 34 bytes, so that the digest check can pass;
//! - bit 1: the golden set is every carried value; bit 2: plus one changed value (must fail);
//! - bit 3: the first carried value is not hex (must fail);
//! - bit 4: also verify with another AK (must fail); bit 5: and with another nonce when the
//!   quote verified (must fail).
//!
//! Properties: no panic; a verified quote reports exactly the carried PCR values, and every
//! golden value is among them; what must fail fails.
#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::Signer as _;
use sha2::Digest as _;
use warden_attest::boot::quote::verify_quote;
use warden_keystore::attestation::Quote;

fuzz_target!(|data: &[u8]| run(data));

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (a, b) = data.split_at(n);
    *data = b;
    Some(a)
}

fn run(mut data: &[u8]) {
    let Some(&[flags, nonce_len]) = take(&mut data, 2) else {
        return;
    };
    let Some(nonce) = take(&mut data, usize::from(nonce_len)) else {
        return;
    };
    let Some(&[n]) = take(&mut data, 1) else {
        return;
    };
    let mut values: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
    for _ in 0..n {
        let Some(e) = take(&mut data, 33) else {
            return;
        };
        let mut v = [0u8; 32];
        v.copy_from_slice(&e[1..]);
        values.insert(u32::from(e[0]), v);
    }
    let mut attest = data.to_vec();
    if flags & 1 != 0 && attest.len() >= 34 {
        let mut h = sha2::Sha256::new();
        for v in values.values() {
            h.update(v);
        }
        let at = attest.len() - 34;
        attest[at..at + 2].copy_from_slice(&[0x00, 0x20]);
        attest[at + 2..].copy_from_slice(&h.finalize());
    }

    let ak = p256::ecdsa::SigningKey::from(&common::ak_key());
    let sig: p256::ecdsa::Signature = ak.sign(&attest);
    let mut pcrs: BTreeMap<u32, String> =
        values.iter().map(|(p, v)| (*p, hex::encode(v))).collect();
    let corrupt = flags & 8 != 0 && !pcrs.is_empty();
    if corrupt && let Some(v) = pcrs.values_mut().next() {
        v.replace_range(0..1, "g");
    }
    let quote = Quote {
        attest: STANDARD.encode(&attest),
        signature: STANDARD.encode(sig.to_der().as_bytes()),
        pcrs,
    };
    let mut golden = BTreeMap::new();
    if flags & 2 != 0 {
        golden = values.clone();
    }
    let mut wrong_golden = false;
    if flags & 4 != 0 {
        let (p, mut v) = values
            .iter()
            .next()
            .map_or((0, [0u8; 32]), |(p, v)| (*p, *v));
        v[31] ^= 0x80;
        golden.insert(p, v);
        wrong_golden = true;
    }
    let ak_public = common::ak_key().public_key();
    let result = verify_quote(&quote, &ak_public, nonce, &golden);
    if corrupt || wrong_golden {
        assert!(
            result.is_err(),
            "a quote with a bad value or golden set verified"
        );
    }
    if let Ok(v) = &result {
        assert_eq!(v.pcrs, values);
        for (p, want) in &golden {
            assert_eq!(v.pcrs.get(p), Some(want));
        }
    }
    if flags & 16 != 0 {
        let other = common::secret_key().public_key();
        assert!(
            verify_quote(&quote, &other, nonce, &golden).is_err(),
            "a quote verified under another attestation key"
        );
    }
    if flags & 32 != 0 && result.is_ok() {
        let mut other_nonce = nonce.to_vec();
        other_nonce.push(0);
        assert!(verify_quote(&quote, &ak_public, &other_nonce, &golden).is_err());
    }
}
