//! Audit v0: one JSON object per line for every request and every refused connection.
//! Identity, model, version, outcome and latency are recorded; payloads, tensors, headers and
//! tokens never are. Each line is written with one `write` on an append-only file, so lines from
//! concurrent requests never interleave and a crash loses at most the line being written.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where audit lines go.
pub struct AuditLog {
    sink: Mutex<Sink>,
}

enum Sink {
    File(File),
    Stdout,
    /// Tests collect lines in memory.
    #[cfg(test)]
    Memory(Vec<String>),
}

/// One audited event. Strings are borrowed: building an event allocates nothing.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    /// `request` or `connection`.
    pub kind: &'a str,
    pub request_id: Option<&'a str>,
    /// The client: the authenticated identity's id (a SPIFFE URI, `subject:<tenant>/<app>`,
    /// `jwt:<issuer>#<sub>`); before authentication, the certificate's URI SAN,
    /// `cn:<common name>` or `anonymous`.
    pub identity: Option<&'a str>,
    /// The authenticated identity's tenant.
    pub tenant: Option<&'a str>,
    pub peer: Option<String>,
    pub method: Option<&'a str>,
    /// The route pattern, never the raw path (which the client controls).
    pub route: Option<&'a str>,
    pub model: Option<&'a str>,
    pub version: Option<&'a str>,
    /// `ok`, `invalid`, `not_found`, `unavailable`, `internal`, `tls_refused`, …
    pub outcome: &'a str,
    pub status: Option<u16>,
    /// A short, payload-free reason for refusals.
    pub reason: Option<&'a str>,
    /// The route policy rule that decided (`tenant_model_grant`, `default_deny`, …).
    pub rule: Option<&'a str>,
    pub latency_us: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a AuditEvent<'a>,
}

impl AuditLog {
    pub fn open(path: Option<&Path>) -> Result<AuditLog, AuditError> {
        let sink = match path {
            Some(path) => Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AuditError::Open {
                        path: path.to_path_buf(),
                        source,
                    })?,
            ),
            None => Sink::Stdout,
        };
        Ok(AuditLog {
            sink: Mutex::new(sink),
        })
    }

    #[cfg(test)]
    pub fn memory() -> AuditLog {
        AuditLog {
            sink: Mutex::new(Sink::Memory(Vec::new())),
        }
    }

    #[cfg(test)]
    pub fn lines(&self) -> Vec<String> {
        match &*self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::Memory(lines) => lines.clone(),
            _ => Vec::new(),
        }
    }

    /// Writes one event. A failing audit write is reported on the log; the request itself has
    /// already been decided.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let line = Line {
            ts: rfc3339_now(),
            event,
        };
        let mut text = match serde_json::to_string(&line) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "audit event could not be serialized");
                return;
            }
        };
        text.push('\n');
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let result = match &mut *sink {
            Sink::File(f) => f.write_all(text.as_bytes()),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            #[cfg(test)]
            Sink::Memory(lines) => {
                lines.push(text);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "audit write failed");
        }
    }
}

/// UTC time as RFC 3339 with microseconds, without pulling a date crate into the hot path.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn one_line_per_event_without_payload_fields() {
        let log = AuditLog::memory();
        log.record(&AuditEvent {
            kind: "request",
            request_id: Some("r1"),
            identity: Some("spiffe://warden.test/app/a"),
            tenant: Some("a"),
            peer: None,
            method: Some("POST"),
            route: Some("/v2/models/{name}/infer"),
            model: Some("demo"),
            version: Some("1"),
            outcome: "ok",
            status: Some(200),
            reason: None,
            rule: Some("tenant_model_grant"),
            latency_us: Some(120),
        });
        let lines = log.lines();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["identity"], "spiffe://warden.test/app/a");
        assert_eq!(v["latency_us"], 120);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
