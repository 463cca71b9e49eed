//! The key service's wire format (`warden_keystore::keyd::protocol`): request frames as keyd
//! reads them from any local caller, response frames as the agent's client reads them.
//!
//! Input: one mode byte, then bytes. Mode bit 0: the bytes are a stream of frames
//! (`read_frame_blocking`, limit `64 << (mode >> 4)` bytes), each body parsed; otherwise one
//! body. Mode bit 1: parse bodies as responses rather than requests.
//!
//! Properties:
//! - framing: a frame is at most the limit, a body is exactly the bytes after its prefix, and
//!   `Closed` comes only with fewer than 4 bytes left;
//! - a request or response that parses serializes and parses back to the same value;
//! - every base64 field that `unb64` accepts re-encodes to the same text (canonical base64);
//! - the bounds checks hold: an accepted quote request has a 1 to 64-byte nonce and 1 to 24
//!   distinct PCRs 0..=23; an extendable PCR is 16..=23;
//! - `quote_from_wire` keeps every carried PCR value (no two keys name the same PCR), and
//!   `quote_to_wire` gives back the same fields.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use warden_keystore::keyd::protocol::{
    FrameError, Request, Response, b64, check_extendable_pcr, check_quote_request, quote_from_wire,
    quote_to_wire, read_frame_blocking, unb64,
};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let responses = mode & 2 != 0;
    if mode & 1 == 0 {
        body(rest, responses);
        return;
    }
    let limit: u32 = 64 << (mode >> 4);
    let mut cursor = Cursor::new(rest);
    loop {
        let before = cursor.position() as usize;
        match read_frame_blocking(&mut cursor, limit) {
            Ok(frame) => {
                assert!(frame.len() <= limit as usize);
                let after = cursor.position() as usize;
                assert_eq!(after - before, 4 + frame.len());
                assert_eq!(&rest[before + 4..after], &frame[..]);
                body(&frame, responses);
            }
            Err(FrameError::Closed) => {
                assert!(rest.len() - before < 4, "Closed with a whole prefix left");
                break;
            }
            Err(FrameError::TooLarge { size, limit: l }) => {
                assert!(size > l && l == limit);
                break;
            }
            Err(FrameError::Io(_)) => break,
        }
    }
}

/// `unb64` accepts only canonical base64: what it accepts encodes back to the same text.
fn canonical_b64(field: &str, s: &str) -> Option<Vec<u8>> {
    let bytes = unb64(field, s).ok()?;
    assert_eq!(b64(&bytes), s, "{field}: non-canonical base64 accepted");
    Some(bytes)
}

fn body(bytes: &[u8], responses: bool) {
    if responses {
        response(bytes);
    } else {
        request(bytes);
    }
}

fn request(bytes: &[u8]) {
    let Ok(r) = serde_json::from_slice::<Request>(bytes) else {
        return;
    };
    let text = serde_json::to_vec(&r).unwrap_or_else(|e| panic!("{e}"));
    let back: Request = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, r);
    let _ = r.operation();
    match &r {
        Request::Sign { message } => {
            canonical_b64("message", message);
        }
        Request::Unseal { blob } => {
            canonical_b64("blob", blob);
        }
        Request::ExtendPcr { pcr, digest } => {
            assert_eq!(check_extendable_pcr(*pcr).is_ok(), (16..=23).contains(pcr));
            canonical_b64("digest", digest);
        }
        Request::Quote { nonce, pcrs } => {
            if let Some(nonce) = canonical_b64("nonce", nonce) {
                let ok = check_quote_request(&nonce, pcrs).is_ok();
                let mut distinct = pcrs.clone();
                distinct.sort_unstable();
                distinct.dedup();
                let expected = (1..=64).contains(&nonce.len())
                    && (1..=24).contains(&pcrs.len())
                    && distinct.len() == pcrs.len()
                    && pcrs.iter().all(|&p| p <= 23);
                assert_eq!(ok, expected, "check_quote_request({nonce:?}, {pcrs:?})");
            }
        }
        Request::ActivateCredential {
            credential_blob,
            encrypted_seed,
        } => {
            canonical_b64("credential_blob", credential_blob);
            canonical_b64("encrypted_seed", encrypted_seed);
        }
        _ => {}
    }
}

fn response(bytes: &[u8]) {
    let Ok(r) = serde_json::from_slice::<Response>(bytes) else {
        return;
    };
    let text = serde_json::to_vec(&r).unwrap_or_else(|e| panic!("{e}"));
    let back: Response = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{e}"));
    let text2 = serde_json::to_vec(&back).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, text2);
    let _ = format!("{r:?}");
    match r {
        Response::PublicKey { spki: s }
        | Response::Signature { der: s }
        | Response::Unsealed { secret: s }
        | Response::Pcr { value: s }
        | Response::Credential { secret: s } => {
            canonical_b64("field", &s);
        }
        Response::Anchors { pem: Some(s) } => {
            canonical_b64("pem", &s);
        }
        Response::Identity {
            endorsement_key,
            ak_public_area,
            ek_certificate,
        } => {
            canonical_b64("endorsement_key", &endorsement_key);
            if let Some(area) = canonical_b64("ak_public_area", &ak_public_area) {
                let _ = warden_attest::boot::credential::check_ak_public_area(&area);
            }
            if let Some(c) = ek_certificate {
                canonical_b64("ek_certificate", &c);
            }
        }
        Response::Quote {
            attest,
            signature,
            pcrs,
        } => {
            let carried = pcrs.len();
            let Ok(q) = quote_from_wire(attest.clone(), signature.clone(), pcrs.clone()) else {
                return;
            };
            assert_eq!(
                q.pcrs.len(),
                carried,
                "two PCR keys of {:?} name the same PCR: a carried value was dropped",
                pcrs.keys().collect::<Vec<_>>()
            );
            let Response::Quote {
                attest: a2,
                signature: s2,
                pcrs: p2,
            } = quote_to_wire(q.clone())
            else {
                panic!("quote_to_wire is not a quote");
            };
            assert_eq!((&a2, &s2), (&attest, &signature));
            let q2 = quote_from_wire(a2, s2, p2).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(q2, q);
        }
        _ => {}
    }
}
