//! What a key store says about itself to an operator (`warden status`, `warden-keyd status`):
//! the backend (development-only said loudly), its capabilities, and whether the device key,
//! each role's anchors and the counters are there. Names and sizes only, never key material.

use crate::{Counter, KeyStore, Role};

/// One line of a status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// As it should be.
    Fine(String),
    /// Something an operator must fix, with a hint on the lines after the first.
    Problem(String),
}

impl Line {
    /// The text, whichever kind.
    pub fn text(&self) -> &str {
        match self {
            Line::Fine(t) | Line::Problem(t) => t,
        }
    }

    /// Whether this line is a problem.
    pub fn is_problem(&self) -> bool {
        matches!(self, Line::Problem(_))
    }
}

/// The report, a line each; problems carry a hint.
pub fn status_lines(store: &dyn KeyStore) -> Vec<Line> {
    let mut out = Vec::new();
    let info = store.describe();
    if info.development_only {
        out.push(Line::Problem(format!(
            "key store: {info}\n  hint: choose backend = \"tpm\" or \"pkcs11\" in keyd.toml for production"
        )));
    } else {
        out.push(Line::Fine(format!("key store: {info}")));
    }
    let c = store.capabilities();
    let qualified = |supported: bool, strong: bool, how: &str| {
        format!(
            "{}{}",
            if supported { "yes" } else { "no" },
            if strong { how } else { "" }
        )
    };
    out.push(Line::Fine(format!(
        "capabilities: anchors {}, device key {}, seal {}, counters {}, PCRs and quotes {}",
        qualified(c.anchors, c.anchors_hardware_locked, " (hardware-locked)"),
        qualified(
            c.device_key,
            c.device_key_non_exportable,
            " (non-exportable)"
        ),
        qualified(c.seal, c.seal_bound_to_pcrs, " (bound to PCRs)"),
        qualified(
            c.counters,
            c.counters_hardware_monotonic,
            " (hardware-monotonic)"
        ),
        qualified(c.pcrs, false, ""),
    )));
    match store.device_public_key() {
        Ok(_) => out.push(Line::Fine("device key: present".to_owned())),
        Err(e) => out.push(Line::Problem(format!(
            "device key: {e}\n  hint: run `warden-keyd provision --config …`"
        ))),
    }
    for role in Role::ALL {
        match store.anchors(role) {
            Ok(Some(pem)) => out.push(Line::Fine(format!(
                "anchors {role}: present ({} bytes)",
                pem.len()
            ))),
            Ok(None) => out.push(Line::Problem(format!(
                "anchors {role}: ABSENT\n  hint: `warden-keyd provision --anchor {role}=FILE.pem`"
            ))),
            Err(e) => out.push(Line::Problem(format!("anchors {role}: {e}"))),
        }
    }
    for counter in [Counter::RevocationSerial, Counter::PolicySetSerial] {
        match store.counter(counter) {
            Ok(v) => out.push(Line::Fine(format!("counter {counter}: {v}"))),
            Err(e) => out.push(Line::Problem(format!("counter {counter}: {e}"))),
        }
    }
    out
}

/// Prints `lines` and counts the problems among them.
pub fn print_lines(lines: Vec<Line>) -> usize {
    for line in &lines {
        println!("{}", line.text());
    }
    lines.iter().filter(|l| l.is_problem()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::software::SoftwareKeyStore;

    #[test]
    fn a_fresh_development_store_reports_every_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = SoftwareKeyStore::open(dir.path()).unwrap();
        let lines = status_lines(&store);
        let problems: Vec<&str> = lines
            .iter()
            .filter(|l| l.is_problem())
            .map(Line::text)
            .collect();
        // Development only, no device key, four roles without anchors.
        assert_eq!(problems.len(), 6, "{lines:?}");
        assert!(problems[0].contains("DEVELOPMENT ONLY"), "{}", problems[0]);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("anchors tenant-cas: ABSENT"))
        );
        store.ensure_device_key().unwrap();
        store
            .install_anchors(Role::TenantCas, b"-----BEGIN CERTIFICATE-----\n")
            .unwrap();
        let lines = status_lines(&store);
        assert!(
            lines.contains(&Line::Fine("device key: present".to_owned())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&Line::Fine("counter revocation-serial: 0".to_owned())),
            "{lines:?}"
        );
    }
}
