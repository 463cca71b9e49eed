//! The attestation key's public area (`TPMT_PUBLIC`, marshalled) as a device sends it to be
//! enrolled (`boot::credential::check_ak_public_area`), a hand-written parser.
//!
//! Input: the area's bytes.
//!
//! Properties of every area accepted:
//! - the name is `TPM_ALG_SHA256 ‖ SHA-256(area)` (34 bytes) and `make_credential` takes it;
//! - the area is an ECC key (type 0x0023, name algorithm SHA-256), and the key returned is
//!   the area's last two sized buffers (x, y) as a P-256 point;
//! - any strict prefix of an accepted area is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use sha2::Digest as _;
use warden_attest::boot::credential::{check_ak_public_area, make_credential};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Ok((key, name)) = check_ak_public_area(data) else {
        return;
    };
    assert_eq!(name.len(), 34);
    assert_eq!(&name[..2], &[0x00, 0x0b]);
    assert_eq!(name[2..], sha2::Sha256::digest(data)[..]);
    assert_eq!(&data[..2], &[0x00, 0x23], "not an ECC area");
    assert_eq!(&data[2..4], &[0x00, 0x0b], "name algorithm");

    // x and y are the last two TPM2B buffers: y's size sits right before it.
    let point = key.to_encoded_point(false);
    let (x, y) = (point.x().map(|x| x.to_vec()), point.y().map(|y| y.to_vec()));
    let (Some(x), Some(y)) = (x, y) else {
        panic!("an accepted key without coordinates");
    };
    let strip = |b: &[u8]| {
        let first = b.iter().position(|&v| v != 0).unwrap_or(b.len());
        b[first..].to_vec()
    };
    assert!(data.len() >= 4 + 2 + 2);
    let n = data.len();
    // Find the y buffer: size (2 bytes) then bytes to the end; leading zeros may be dropped.
    let y_ok = (0..=64usize).any(|len| {
        len + 2 <= n
            && usize::from(u16::from_be_bytes([data[n - len - 2], data[n - len - 1]])) == len
            && strip(&data[n - len..]) == strip(&y)
            && {
                let rest = &data[..n - len - 2];
                let m = rest.len();
                (0..=64usize).any(|xl| {
                    xl + 2 <= m
                        && usize::from(u16::from_be_bytes([rest[m - xl - 2], rest[m - xl - 1]]))
                            == xl
                        && strip(&rest[m - xl..]) == strip(&x)
                })
            }
    });
    assert!(y_ok, "the key is not the area's (x, y)");

    make_credential(&key, &name, b"a 32-byte credential secret....")
        .unwrap_or_else(|e| panic!("make_credential on an accepted AK: {e}"));

    for cut in [0, 1, n / 2, n - 1] {
        assert!(
            check_ak_public_area(&data[..cut]).is_err(),
            "prefix of {cut} bytes accepted"
        );
    }
}
