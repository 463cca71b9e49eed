//! The TCG crypto-agile firmware event log (`boot::eventlog::EventLog`): read from
//! `/sys/kernel/security/tpm0/binary_bios_measurements` or carried to a verifier.
//!
//! Input: the log's bytes.
//!
//! Properties of every log that parses:
//! - the events hold no more data than the input;
//! - `to_bytes` parses back to the same log, and serializes again to the same bytes;
//! - `replay` succeeds or refuses without panicking; when it succeeds, `verify` against the
//!   replayed values passes, and a PCR changed in one bit fails with `PcrMismatch`; only PCRs
//!   0 to 23 appear.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_attest::boot::BootError;
use warden_attest::boot::eventlog::EventLog;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Ok(log) = EventLog::parse(data) else {
        return;
    };
    let held: usize = log.events.iter().map(|e| e.data.len()).sum();
    assert!(held <= data.len());

    let bytes = log.to_bytes();
    let again = EventLog::parse(&bytes).unwrap_or_else(|e| panic!("to_bytes does not parse: {e}"));
    assert_eq!(again, log);
    assert_eq!(again.to_bytes(), bytes);

    let Ok(pcrs) = log.replay() else {
        return;
    };
    assert!(pcrs.keys().all(|&p| p <= 23));
    let actual: Vec<(u32, [u8; 32])> = pcrs.iter().map(|(p, v)| (*p, *v)).collect();
    log.verify(&actual)
        .unwrap_or_else(|e| panic!("the log does not verify against its own replay: {e}"));
    if let Some(&(pcr, value)) = actual.first() {
        let mut changed = value;
        changed[0] ^= 1;
        assert!(matches!(
            log.verify(&[(pcr, changed)]),
            Err(BootError::PcrMismatch { .. })
        ));
    }
}
