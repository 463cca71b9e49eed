//! Who is calling: one [`Identity`] type, from a client certificate (a SPIFFE-style URI SAN
//! `spiffe://<trust-domain>/tenant/<t>/app/<a>`, or subject attributes through a configured
//! mapping) or from an OIDC bearer token (see `jwt.rs`).

use super::config::IdentityConfig;
use crate::listener::tls::CertNames;
use serde::Serialize;

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    MtlsUri,
    MtlsSubject,
    Jwt,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::MtlsUri => "mtls_uri",
            IdentityKind::MtlsSubject => "mtls_subject",
            IdentityKind::Jwt => "jwt",
        }
    }
}

/// An authenticated caller. `id` is stable and names it in the audit trail and the rate
/// limiter; it is built from names the issuer vouched for, never from request content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub kind: IdentityKind,
    pub id: String,
    pub tenant: String,
    /// The app (certificates) or the token's `sub`.
    pub subject: String,
    /// Token scopes; empty for certificates.
    pub scopes: Vec<String>,
}

/// A tenant or app name as it may appear in identities, policy input and metrics labels.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses `spiffe://<domain>/tenant/<t>/app/<a>` for one of `trust_domains`; exact shape only
/// (no query, fragment, extra or empty segments, percent escapes or user info).
pub fn parse_spiffe(uri: &str, trust_domains: &[String]) -> Option<(String, String)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    if !trust_domains.iter().any(|d| d == domain) {
        return None;
    }
    let segs: Vec<&str> = path.split('/').collect();
    match segs.as_slice() {
        ["tenant", t, "app", a] if valid_segment(t) && valid_segment(a) => {
            Some((t.to_string(), a.to_string()))
        }
        _ => None,
    }
}

/// The identity a client certificate establishes under `cfg`, if any: a trusted SPIFFE URI
/// SAN first, then the subject mapping.
pub fn from_certificate(names: &CertNames, cfg: &IdentityConfig) -> Option<Identity> {
    for uri in &names.uris {
        if let Some((tenant, app)) = parse_spiffe(uri, &cfg.trust_domains) {
            return Some(Identity {
                kind: IdentityKind::MtlsUri,
                id: uri.clone(),
                tenant,
                subject: app,
                scopes: Vec::new(),
            });
        }
    }
    let mapping = cfg.subject_mapping.as_ref()?;
    let attr = |name: &str| {
        let mut values = names.subject.iter().filter(|(a, _)| *a == name);
        // Exactly one value: an ambiguous subject names no one.
        match (values.next(), values.next()) {
            (Some((_, v)), None) if valid_segment(v) => Some(v.clone()),
            _ => None,
        }
    };
    let tenant = attr(&mapping.tenant)?;
    let app = attr(&mapping.app)?;
    Some(Identity {
        kind: IdentityKind::MtlsSubject,
        id: format!("subject:{tenant}/{app}"),
        tenant,
        subject: app,
        scopes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::config::SubjectMapping;

    fn cfg() -> IdentityConfig {
        IdentityConfig {
            trust_domains: vec!["warden.test".into()],
            subject_mapping: Some(SubjectMapping {
                tenant: "O".into(),
                app: "CN".into(),
            }),
        }
    }

    #[test]
    fn spiffe_shapes() {
        let d = vec!["warden.test".to_string()];
        assert_eq!(
            parse_spiffe("spiffe://warden.test/tenant/acme/app/web", &d),
            Some(("acme".into(), "web".into()))
        );
        for bad in [
            "spiffe://other.test/tenant/acme/app/web",
            "spiffe://warden.test/tenant/acme/app/web/x",
            "spiffe://warden.test/tenant//app/web",
            "spiffe://warden.test/tenant/acme/app/web?x=1",
            "spiffe://warden.test/tenant/ac%2Fme/app/web",
            "spiffe://warden.test/app/web/tenant/acme",
            "https://warden.test/tenant/acme/app/web",
            "spiffe://warden.test",
        ] {
            assert_eq!(parse_spiffe(bad, &d), None, "{bad}");
        }
    }

    #[test]
    fn uri_first_then_subject_mapping() {
        let names = CertNames {
            uris: vec!["spiffe://warden.test/tenant/acme/app/web".into()],
            subject: vec![("O", "globex".into()), ("CN", "api".into())],
        };
        let id = from_certificate(&names, &cfg()).unwrap();
        assert_eq!(
            (id.kind, id.tenant.as_str()),
            (IdentityKind::MtlsUri, "acme")
        );
        let names = CertNames {
            uris: vec!["spiffe://elsewhere/tenant/acme/app/web".into()],
            subject: vec![("O", "globex".into()), ("CN", "api".into())],
        };
        let id = from_certificate(&names, &cfg()).unwrap();
        assert_eq!(id.kind, IdentityKind::MtlsSubject);
        assert_eq!((id.tenant.as_str(), id.subject.as_str()), ("globex", "api"));
        // Ambiguous or unusable subjects, or no mapping: no identity.
        let two = CertNames {
            uris: vec![],
            subject: vec![("O", "a".into()), ("O", "b".into()), ("CN", "x".into())],
        };
        assert_eq!(from_certificate(&two, &cfg()), None);
        let spaces = CertNames {
            uris: vec![],
            subject: vec![("O", "a b".into()), ("CN", "x".into())],
        };
        assert_eq!(from_certificate(&spaces, &cfg()), None);
        let unmapped = IdentityConfig {
            subject_mapping: None,
            ..cfg()
        };
        assert_eq!(
            from_certificate(
                &CertNames {
                    uris: vec![],
                    subject: vec![("O", "a".into()), ("CN", "x".into())]
                },
                &unmapped
            ),
            None
        );
    }
}
