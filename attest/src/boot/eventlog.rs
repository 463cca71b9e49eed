//! The TCG PC Client event log in the crypto-agile format, as Linux exposes it at
//! `/sys/kernel/security/tpm0/binary_bios_measurements` (TCG PC Client Platform Firmware
//! Profile, §10): a first `TCG_PCClientPCREvent` in the SHA-1 layout whose data is the
//! `Spec ID Event03` header (the digest algorithms and sizes), then `TCG_PCR_EVENT2` records,
//! all little-endian.
//!
//! [`EventLog::replay`] recomputes the PCRs from the logged digests; `EV_NO_ACTION` events are
//! not extended, except that the `StartupLocality` event sets PCR 0's initial locality byte.
//! Replay proves that the log matches the PCRs; it does not re-derive each digest from its
//! event data (that is event-type-specific and left to the policy that reads the log).

use std::collections::BTreeMap;

use sha2::Digest as _;

use super::BootError;

/// `EV_NO_ACTION`: informational, never extended.
pub const EV_NO_ACTION: u32 = 0x0000_0003;
/// TPM algorithm identifier of SHA-1.
pub const ALG_SHA1: u16 = 0x0004;
/// TPM algorithm identifier of SHA-256.
pub const ALG_SHA256: u16 = 0x000B;
/// TPM algorithm identifier of SHA-384.
pub const ALG_SHA384: u16 = 0x000C;
/// TPM algorithm identifier of SHA-512.
pub const ALG_SHA512: u16 = 0x000D;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// Where Linux exposes the firmware event log.
pub const SYSTEM_EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";
/// The largest log accepted.
pub const MAX_LOG_BYTES: usize = 16 * 1024 * 1024;
/// The largest single event's data.
pub const MAX_EVENT_DATA: usize = 1024 * 1024;
/// The most algorithms in the header.
const MAX_ALGORITHMS: u32 = 16;

/// One measured event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The PCR extended.
    pub pcr: u32,
    /// The event type (`EV_POST_CODE`, `EV_EFI_VARIABLE_DRIVER_CONFIG`, …).
    pub event_type: u32,
    /// One digest per algorithm of the header: `(algorithm id, digest)`.
    pub digests: Vec<(u16, Vec<u8>)>,
    /// The event data.
    pub data: Vec<u8>,
}

impl Event {
    /// This event's SHA-256 digest, if logged.
    pub fn sha256(&self) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(alg, _)| *alg == ALG_SHA256)
            .map(|(_, d)| d.as_slice())
    }
}

/// A parsed crypto-agile event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// `(algorithm id, digest size)` from the Spec ID header, in order.
    pub algorithms: Vec<(u16, u16)>,
    /// The events after the header.
    pub events: Vec<Event>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BootError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(BootError::MalformedEventLog {
                offset: self.pos,
                detail: format!("truncated {what}"),
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, BootError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, BootError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, BootError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn err(&self, detail: String) -> BootError {
        BootError::MalformedEventLog {
            offset: self.pos,
            detail,
        }
    }
}

impl EventLog {
    /// Parses a log. An empty input is [`BootError::EmptyEventLog`]: a machine with a TPM and
    /// measured boot always logs at least the header.
    pub fn parse(bytes: &[u8]) -> Result<Self, BootError> {
        if bytes.is_empty() {
            return Err(BootError::EmptyEventLog);
        }
        if bytes.len() > MAX_LOG_BYTES {
            return Err(BootError::MalformedEventLog {
                offset: 0,
                detail: format!("log of {} bytes exceeds {MAX_LOG_BYTES}", bytes.len()),
            });
        }
        let mut r = Reader { buf: bytes, pos: 0 };
        // The header, in the SHA-1 layout.
        let pcr = r.u32("header PCR index")?;
        let event_type = r.u32("header event type")?;
        r.take(20, "header digest")?;
        let size = r.u32("header size")? as usize;
        if pcr != 0 || event_type != EV_NO_ACTION {
            return Err(r.err(
                "the first event is not the EV_NO_ACTION Spec ID header (not a crypto-agile log)"
                    .to_owned(),
            ));
        }
        let header = r.take(size, "Spec ID header")?;
        let algorithms = parse_spec_id(header).map_err(|e| r.err(e.to_string()))?;

        let mut events = Vec::new();
        while r.pos < bytes.len() {
            let pcr = r.u32("PCR index")?;
            let event_type = r.u32("event type")?;
            let count = r.u32("digest count")?;
            if count as usize != algorithms.len() {
                return Err(r.err(format!(
                    "event has {count} digests, the header declares {}",
                    algorithms.len()
                )));
            }
            let mut digests = Vec::with_capacity(algorithms.len());
            for _ in 0..count {
                let alg = r.u16("digest algorithm")?;
                let size = algorithms
                    .iter()
                    .find(|(a, _)| *a == alg)
                    .map(|(_, s)| usize::from(*s))
                    .ok_or_else(|| {
                        r.err(format!("digest algorithm {alg:#06x} not in the header"))
                    })?;
                digests.push((alg, r.take(size, "digest")?.to_vec()));
            }
            let size = r.u32("event size")? as usize;
            if size > MAX_EVENT_DATA {
                return Err(r.err(format!("event data of {size} bytes")));
            }
            let data = r.take(size, "event data")?.to_vec();
            events.push(Event {
                pcr,
                event_type,
                digests,
                data,
            });
        }
        Ok(Self { algorithms, events })
    }

    /// Reads and parses the kernel's copy of the firmware log
    /// ([`SYSTEM_EVENT_LOG`]). A missing file is an error: on a machine with a TPM and
    /// measured boot, no log means nothing can be checked.
    pub fn read_system() -> Result<Self, BootError> {
        Self::read_file(std::path::Path::new(SYSTEM_EVENT_LOG))
    }

    /// Reads and parses a binary log file, refusing more than [`MAX_LOG_BYTES`].
    pub fn read_file(path: &std::path::Path) -> Result<Self, BootError> {
        let file = std::fs::File::open(path).map_err(|e| BootError::MalformedEventLog {
            offset: 0,
            detail: format!("cannot read {}: {e}", path.display()),
        })?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_LOG_BYTES as u64 + 1),
            &mut buf,
        )
        .map_err(|e| BootError::MalformedEventLog {
            offset: 0,
            detail: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse(&buf)
    }

    /// Recomputes the SHA-256 bank from the log: `(PCR, value)` for every PCR the log
    /// touches (PCR 0 also when only its startup locality is set).
    pub fn replay(&self) -> Result<BTreeMap<u32, [u8; 32]>, BootError> {
        if !self.algorithms.iter().any(|(a, _)| *a == ALG_SHA256) {
            return Err(BootError::MalformedEventLog {
                offset: 0,
                detail: "the log has no SHA-256 digests".to_owned(),
            });
        }
        let mut pcrs: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
        for event in &self.events {
            if event.pcr > 23 {
                return Err(BootError::MalformedEventLog {
                    offset: 0,
                    detail: format!("event on PCR {}", event.pcr),
                });
            }
            if event.event_type == EV_NO_ACTION {
                if event.pcr == 0
                    && event.data.len() == 17
                    && event.data.starts_with(STARTUP_LOCALITY_SIGNATURE)
                {
                    let mut init = [0u8; 32];
                    init[31] = event.data[16];
                    pcrs.insert(0, init);
                }
                continue;
            }
            let digest = event.sha256().ok_or_else(|| BootError::MalformedEventLog {
                offset: 0,
                detail: format!("event on PCR {} without a SHA-256 digest", event.pcr),
            })?;
            let current = pcrs.entry(event.pcr).or_insert([0u8; 32]);
            *current = extend(current, digest);
        }
        Ok(pcrs)
    }

    /// Replays the log and compares every PCR in `expected_pcrs` with the TPM's values
    /// (`actual`); a PCR the log does not touch must still hold its reset value (zeros).
    pub fn verify(&self, actual: &[(u32, [u8; 32])]) -> Result<(), BootError> {
        let replayed = self.replay()?;
        for (pcr, value) in actual {
            let expected = replayed.get(pcr).copied().unwrap_or([0u8; 32]);
            if expected != *value {
                return Err(BootError::PcrMismatch {
                    pcr: *pcr,
                    expected: hex::encode(expected),
                    actual: hex::encode(value),
                });
            }
        }
        Ok(())
    }

    /// Serializes a log (for tests and tools that build logs; a replay of the bytes parses
    /// back to `self`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = SPEC_ID_SIGNATURE.to_vec();
        header.extend_from_slice(&0u32.to_le_bytes()); // platform class: client
        header.extend_from_slice(&[0, 2, 0, 2]); // version 2.0, errata 0, uintn size 2 (64-bit)
        header.extend_from_slice(&(self.algorithms.len() as u32).to_le_bytes());
        for (alg, size) in &self.algorithms {
            header.extend_from_slice(&alg.to_le_bytes());
            header.extend_from_slice(&size.to_le_bytes());
        }
        header.push(0); // no vendor info
        let mut out = Vec::new();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        out.extend_from_slice(&[0u8; 20]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for e in &self.events {
            out.extend_from_slice(&e.pcr.to_le_bytes());
            out.extend_from_slice(&e.event_type.to_le_bytes());
            out.extend_from_slice(&(e.digests.len() as u32).to_le_bytes());
            for (alg, d) in &e.digests {
                out.extend_from_slice(&alg.to_le_bytes());
                out.extend_from_slice(d);
            }
            out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.data);
        }
        out
    }
}

/// Why the Spec ID header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SpecIdError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("the header is not a `Spec ID Event03` (not a crypto-agile log)")]
    NotSpecId,
    #[error("spec version {0} (expected 2)")]
    Version(u8),
    #[error("{0} digest algorithms")]
    AlgorithmCount(u32),
    #[error("algorithm {alg:#06x} with digest size {size}")]
    Algorithm { alg: u16, size: u16 },
}

fn parse_spec_id(header: &[u8]) -> Result<Vec<(u16, u16)>, SpecIdError> {
    let mut r = Reader {
        buf: header,
        pos: 0,
    };
    // The inner reader's own errors carry the field that was cut; its offset is the outer one.
    let cut = |what: &'static str| move |_: BootError| SpecIdError::Truncated(what);
    if r.take(16, "signature").map_err(cut("signature"))? != SPEC_ID_SIGNATURE {
        return Err(SpecIdError::NotSpecId);
    }
    r.u32("platform class").map_err(cut("platform class"))?;
    let _minor = r.u8("version").map_err(cut("version"))?;
    let major = r.u8("version").map_err(cut("version"))?;
    r.u8("errata").map_err(cut("errata"))?;
    r.u8("uintn size").map_err(cut("uintn size"))?;
    if major != 2 {
        return Err(SpecIdError::Version(major));
    }
    let n = r.u32("algorithm count").map_err(cut("algorithm count"))?;
    if n == 0 || n > MAX_ALGORITHMS {
        return Err(SpecIdError::AlgorithmCount(n));
    }
    let mut algs = Vec::new();
    for _ in 0..n {
        let alg = r.u16("algorithm").map_err(cut("algorithm"))?;
        let size = r.u16("digest size").map_err(cut("digest size"))?;
        let known = match alg {
            ALG_SHA1 => Some(20),
            ALG_SHA256 => Some(32),
            ALG_SHA384 => Some(48),
            ALG_SHA512 => Some(64),
            _ => None,
        };
        if known.is_some_and(|k| k != size) || size == 0 || size > 64 {
            return Err(SpecIdError::Algorithm { alg, size });
        }
        algs.push((alg, size));
    }
    let vendor = r.u8("vendor info size").map_err(cut("vendor info size"))?;
    r.take(usize::from(vendor), "vendor info")
        .map_err(cut("vendor info"))?;
    Ok(algs)
}

/// `PCR ← SHA-256(PCR ‖ digest)`.
pub fn extend(pcr: &[u8; 32], digest: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(pcr: u32, data: &[u8]) -> Event {
        Event {
            pcr,
            event_type: 0x8000_0001,
            digests: vec![
                (ALG_SHA1, vec![0u8; 20]),
                (ALG_SHA256, sha2::Sha256::digest(data).to_vec()),
            ],
            data: data.to_vec(),
        }
    }

    fn log(events: Vec<Event>) -> EventLog {
        EventLog {
            algorithms: vec![(ALG_SHA1, 20), (ALG_SHA256, 32)],
            events,
        }
    }

    #[test]
    fn round_trips_and_replays() {
        let l = log(vec![ev(0, b"a"), ev(7, b"b"), ev(0, b"c")]);
        let parsed = EventLog::parse(&l.to_bytes()).unwrap();
        assert_eq!(parsed, l);
        let r = parsed.replay().unwrap();
        let a = sha2::Sha256::digest(b"a");
        let c = sha2::Sha256::digest(b"c");
        assert_eq!(r[&0], extend(&extend(&[0; 32], &a), &c));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn startup_locality_sets_pcr0() {
        let mut data = STARTUP_LOCALITY_SIGNATURE.to_vec();
        data.push(3);
        let l = log(vec![Event {
            pcr: 0,
            event_type: EV_NO_ACTION,
            digests: vec![(ALG_SHA1, vec![0; 20]), (ALG_SHA256, vec![0; 32])],
            data,
        }]);
        let mut expected = [0u8; 32];
        expected[31] = 3;
        assert_eq!(l.replay().unwrap()[&0], expected);
    }

    /// A poor man's fuzzer (the parser reads untrusted firmware output): random bytes and
    /// random mutations of a valid log never panic, and never take more than the input holds.
    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = log(vec![ev(0, b"a"), ev(4, b"b"), ev(7, b"c")]).to_bytes();
        for _ in 0..20_000 {
            let mut input = if next() % 2 == 0 {
                valid.clone()
            } else {
                (0..next() % 300).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 4) {
                if !input.is_empty() {
                    let i = (next() as usize) % input.len();
                    input[i] = next() as u8;
                }
            }
            if next() % 5 == 0 && !input.is_empty() {
                let cut = (next() as usize) % input.len();
                input.truncate(cut);
            }
            if let Ok(l) = EventLog::parse(&input) {
                let _ = l.replay();
                assert!(l.events.iter().map(|e| e.data.len()).sum::<usize>() <= input.len());
            }
        }
    }

    #[test]
    fn refuses_garbage_truncation_and_empty() {
        assert!(matches!(
            EventLog::parse(&[]),
            Err(BootError::EmptyEventLog)
        ));
        let bytes = log(vec![ev(1, b"x")]).to_bytes();
        for cut in [1, 10, 40, bytes.len() - 1] {
            assert!(EventLog::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong = bytes.clone();
        wrong[32] ^= 0xff; // inside the Spec ID signature
        assert!(EventLog::parse(&wrong).is_err());
    }
}
