//! OIDC bearer tokens verified offline against a JWKS file.
//!
//! Strict by construction: compact JWS only, `alg` from the configured allow-list (which can
//! only name RS256 and ES256 — `none` and HMAC are not implemented, so a token "signed" with a
//! public key as an HMAC secret can never verify), a `kid` that must name a key of the matching
//! type, `iss` and `aud` exact, `exp` required and `nbf` honoured with bounded skew, a size cap
//! checked before anything is decoded. Verification runs on ring, which rustls already links.
//! Keys rotate by replacing the file: it is re-read on SIGHUP and, at most once per change of
//! its modification time, when a token names an unknown `kid`.

use super::config::JwtConfig;
use super::identity::{Identity, IdentityKind};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read JWKS {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JWKS {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Why a token was refused. The variant goes to the log and the audit reason; the client only
/// ever sees "authentication required".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token larger than {0} bytes")]
    TooLarge(usize),
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("token names no key id")]
    NoKid,
    #[error("unknown key id")]
    UnknownKid,
    #[error("key type does not match the algorithm")]
    KeyMismatch,
    #[error("signature does not verify")]
    Signature,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("claim {0} missing or malformed")]
    Claim(&'static str),
}

#[derive(Debug, Clone)]
enum Key {
    /// Big-endian modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed SEC1 point.
    P256(Vec<u8>),
}

#[derive(Debug, Default)]
struct KeySet {
    keys: HashMap<String, Key>,
    modified: Option<SystemTime>,
}

#[derive(Deserialize)]
struct JwkSetFile {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The JOSE header. Other members (`x5t`, `cty`, …) are ignored, and so are `jku`, `jwk`,
/// `x5u` and `x5c`: keys come only from the configured JWKS, never from the token. `crit` is
/// refused, as RFC 7515 requires of extensions one does not implement.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    scope: Option<String>,
    scp: Option<Vec<String>>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

pub struct JwtVerifier {
    cfg: JwtConfig,
    keys: RwLock<Arc<KeySet>>,
    /// Tokens already verified, by their exact text, with their validity window: a client
    /// reusing its token pays the signature check once. Bounded; emptied on every key reload,
    /// so a retired key's tokens stop working at once.
    verified: std::sync::Mutex<HashMap<String, Verified>>,
}

#[derive(Clone)]
struct Verified {
    identity: Identity,
    exp: u64,
    nbf: Option<u64>,
}

/// Verified tokens remembered at most.
const CACHE_MAX: usize = 4096;

impl JwtVerifier {
    pub fn new(cfg: JwtConfig) -> Result<JwtVerifier, JwksError> {
        let keys = load(&cfg.jwks)?;
        Ok(JwtVerifier {
            cfg,
            keys: RwLock::new(Arc::new(keys)),
            verified: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Re-reads the JWKS file; on error the previous keys stay in force.
    pub fn reload(&self) -> Result<usize, JwksError> {
        let keys = load(&self.cfg.jwks)?;
        let n = keys.keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(n)
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Verifies `token` at the current time.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verify_at(token, now)
    }

    pub fn verify_at(&self, token: &str, now: u64) -> Result<Identity, TokenError> {
        if token.len() > self.cfg.max_token_bytes {
            return Err(TokenError::TooLarge(self.cfg.max_token_bytes));
        }
        let leeway = self.cfg.leeway_s;
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned();
        if let Some(v) = cached {
            // The time checks are redone on every use; only the signature is remembered.
            if now >= v.exp.saturating_add(leeway) {
                return Err(TokenError::Expired);
            }
            if v.nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
                return Err(TokenError::NotYetValid);
            }
            return Ok(v.identity);
        }
        let v = self.verify_uncached(token, now)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, c| now < c.exp.saturating_add(leeway));
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), v.clone());
        Ok(v.identity)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(h64)?).map_err(|_| TokenError::Malformed)?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        if let Some(typ) = &header.typ
            && !typ.eq_ignore_ascii_case("JWT")
            && !typ.eq_ignore_ascii_case("at+jwt")
        {
            return Err(TokenError::Malformed);
        }
        if !self.cfg.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.ok_or(TokenError::NoKid)?;
        let key = match self.current().keys.get(&kid) {
            Some(k) => k.clone(),
            None => self.reload_if_changed(&kid)?,
        };
        let signed = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        let sig = decode(s64)?;
        let ok = match (header.alg.as_str(), &key) {
            ("RS256", Key::Rsa { n, e }) => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
                .is_ok(),
            ("ES256", Key::P256(point)) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed, &sig)
                    .is_ok()
            }
            ("RS256" | "ES256", _) => return Err(TokenError::KeyMismatch),
            (other, _) => return Err(TokenError::Algorithm(other.to_string())),
        };
        if !ok {
            return Err(TokenError::Signature);
        }
        // Only now, with the signature checked, are the claims read.
        let claims: Claims =
            serde_json::from_slice(&decode(p64)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss.as_deref() != Some(self.cfg.issuer.as_str()) {
            return Err(TokenError::Issuer);
        }
        let aud_ok = match &claims.aud {
            Some(serde_json::Value::String(a)) => *a == self.cfg.audience,
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str() == Some(self.cfg.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Audience);
        }
        let leeway = self.cfg.leeway_s;
        let exp = numeric_date(claims.exp.as_ref()).ok_or(TokenError::Claim("exp"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        let nbf = match claims.nbf.as_ref() {
            Some(nbf) => Some(numeric_date(Some(nbf)).ok_or(TokenError::Claim("nbf"))?),
            None => None,
        };
        if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(TokenError::NotYetValid);
        }
        let sub = claims
            .sub
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(TokenError::Claim("sub"))?;
        let tenant = claims
            .rest
            .get(&self.cfg.tenant_claim)
            .and_then(|v| v.as_str())
            .filter(|t| valid_tenant(t))
            .ok_or(TokenError::Claim("tenant"))?
            .to_string();
        let mut scopes: Vec<String> = claims
            .scope
            .map(|s| s.split_ascii_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        scopes.extend(claims.scp.unwrap_or_default());
        scopes.truncate(64);
        Ok(Verified {
            identity: Identity {
                kind: IdentityKind::Jwt,
                id: format!("jwt:{}#{}", self.cfg.issuer, sub),
                tenant,
                subject: sub,
                scopes,
            },
            exp,
            nbf,
        })
    }

    /// An unknown `kid` may mean the keys rotated: re-read the file once if it changed.
    fn reload_if_changed(&self, kid: &str) -> Result<Key, TokenError> {
        let modified = std::fs::metadata(&self.cfg.jwks)
            .and_then(|m| m.modified())
            .ok();
        let current = self.current();
        if modified.is_none() || modified == current.modified {
            return Err(TokenError::UnknownKid);
        }
        match self.reload() {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "JWKS reload failed; keeping the previous keys");
                return Err(TokenError::UnknownKid);
            }
        }
        self.current()
            .keys
            .get(kid)
            .cloned()
            .ok_or(TokenError::UnknownKid)
    }
}

fn valid_tenant(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A NumericDate: a non-negative integer (fractions are truncated).
fn numeric_date(v: Option<&serde_json::Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn load(path: &std::path::Path) -> Result<KeySet, JwksError> {
    let err = |message: String| JwksError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| JwksError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let file: JwkSetFile = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    let mut keys = HashMap::new();
    for (i, jwk) in file.keys.iter().enumerate() {
        let s = |k: &str| jwk.get(k).and_then(|v| v.as_str());
        let b = |k: &str| -> Result<Vec<u8>, JwksError> {
            let v = s(k).ok_or_else(|| err(format!("key {i}: missing {k}")))?;
            URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|_| err(format!("key {i}: {k} is not base64url")))
        };
        if s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let Some(kid) = s("kid") else {
            return Err(err(format!("key {i}: missing kid")));
        };
        let key = match (s("kty"), s("crv")) {
            (Some("RSA"), _) => {
                let n = b("n")?;
                let n = n
                    .iter()
                    .skip_while(|b| **b == 0)
                    .copied()
                    .collect::<Vec<_>>();
                if n.len() < 256 {
                    return Err(err(format!(
                        "key {kid}: RSA keys must be 2048 bits or more"
                    )));
                }
                Key::Rsa { n, e: b("e")? }
            }
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (b("x")?, b("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(err(format!("key {kid}: bad P-256 coordinates")));
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Key::P256(point)
            }
            // Symmetric ("oct") and other key types are never used for verification.
            _ => continue,
        };
        if keys.insert(kid.to_string(), key).is_some() {
            return Err(err(format!("key id {kid} appears twice")));
        }
    }
    Ok(KeySet { keys, modified })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};

    /// A 2048-bit RSA key for tests only.
    pub const TEST_RSA_PKCS8_PEM: &str = include_str!("../../tests/data/jwt-test-rsa.pem");

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    struct Keys {
        ec: EcdsaKeyPair,
        rsa: RsaKeyPair,
        dir: tempfile::TempDir,
    }

    fn keys() -> Keys {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let der = pem_body(TEST_RSA_PKCS8_PEM);
        let rsa = RsaKeyPair::from_pkcs8(&der).unwrap();
        Keys {
            ec,
            rsa,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn pem_body(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    fn jwks(k: &Keys, ec_kid: &str) -> serde_json::Value {
        let p = k.ec.public_key().as_ref();
        let rsa: ring::rsa::PublicKeyComponents<Vec<u8>> = k.rsa.public().into();
        serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": ec_kid, "x": b64(&p[1..33]), "y": b64(&p[33..])},
            {"kty": "RSA", "kid": "rsa-1",
             "n": b64(&rsa.n),
             "e": b64(&rsa.e)},
            {"kty": "oct", "kid": "hmac", "k": b64(b"secret")}
        ]})
    }

    fn verifier(k: &Keys) -> JwtVerifier {
        let path = k.dir.path().join("jwks.json");
        std::fs::write(&path, jwks(k, "ec-1").to_string()).unwrap();
        JwtVerifier::new(JwtConfig {
            jwks: path,
            issuer: "https://idp.test".into(),
            audience: "warden".into(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            leeway_s: 30,
            max_token_bytes: 4096,
            tenant_claim: "tenant".into(),
        })
        .unwrap()
    }

    const NOW: u64 = 1_800_000_000;

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss": "https://idp.test", "aud": ["warden"], "sub": "svc-1",
            "tenant": "acme", "scope": "warden:infer", "exp": NOW + 600, "nbf": NOW - 10})
    }

    fn sign(k: &Keys, header: serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match header["alg"].as_str().unwrap() {
            "ES256" => k.ec.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            "RS256" => {
                let mut sig = vec![0; k.rsa.public().modulus_len()];
                k.rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &rng,
                        input.as_bytes(),
                        &mut sig,
                    )
                    .unwrap();
                sig
            }
            _ => unreachable!(),
        };
        format!("{input}.{}", b64(&sig))
    }

    fn es(kid: &str) -> serde_json::Value {
        serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT", "x5t": "ignored"})
    }

    #[test]
    fn good_tokens_give_an_identity() {
        let k = keys();
        let v = verifier(&k);
        let id = v.verify_at(&sign(&k, es("ec-1"), &claims()), NOW).unwrap();
        assert_eq!(id.kind, IdentityKind::Jwt);
        assert_eq!((id.tenant.as_str(), id.subject.as_str()), ("acme", "svc-1"));
        assert_eq!(id.scopes, vec!["warden:infer".to_string()]);
        let rs = serde_json::json!({"alg": "RS256", "kid": "rsa-1"});
        assert!(v.verify_at(&sign(&k, rs, &claims()), NOW).is_ok());
    }

    #[test]
    fn attacks_are_refused() {
        let k = keys();
        let v = verifier(&k);
        let good = sign(&k, es("ec-1"), &claims());
        let parts: Vec<&str> = good.split('.').collect();

        // alg none, with and without a signature.
        let none = format!("{}.{}.", b64(br#"{"alg":"none","kid":"ec-1"}"#), parts[1]);
        assert_eq!(
            v.verify_at(&none, NOW),
            Err(TokenError::Algorithm("none".into()))
        );

        // HS256 "signed" with the public key (the RSA modulus and the EC point both tried).
        let rsa: ring::rsa::PublicKeyComponents<Vec<u8>> = k.rsa.public().into();
        for (kid, secret) in [
            ("rsa-1", rsa.n.clone()),
            ("ec-1", k.ec.public_key().as_ref().to_vec()),
            ("hmac", b"secret".to_vec()),
        ] {
            let h = b64(format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#).as_bytes());
            let input = format!("{h}.{}", parts[1]);
            let tag = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                input.as_bytes(),
            );
            let forged = format!("{input}.{}", b64(tag.as_ref()));
            assert_eq!(
                v.verify_at(&forged, NOW),
                Err(TokenError::Algorithm("HS256".into()))
            );
        }

        // RS256 header on the EC key: key type mismatch.
        let mixed = sign(&k, es("ec-1"), &claims()).replacen(
            parts[0],
            &b64(br#"{"alg":"RS256","kid":"ec-1"}"#),
            1,
        );
        assert_eq!(v.verify_at(&mixed, NOW), Err(TokenError::KeyMismatch));

        // Expired, not yet valid (beyond the leeway), and within the leeway.
        let mut c = claims();
        c["exp"] = (NOW - 31).into();
        assert_eq!(
            v.verify_at(&sign(&k, es("ec-1"), &c), NOW),
            Err(TokenError::Expired)
        );
        c["exp"] = (NOW - 5).into();
        assert!(v.verify_at(&sign(&k, es("ec-1"), &c), NOW).is_ok());
        let mut c = claims();
        c["nbf"] = (NOW + 31).into();
        assert_eq!(
            v.verify_at(&sign(&k, es("ec-1"), &c), NOW),
            Err(TokenError::NotYetValid)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify_at(&sign(&k, es("ec-1"), &c), NOW),
            Err(TokenError::Claim("exp"))
        );

        // Issuer and audience.
        let mut c = claims();
        c["iss"] = "https://evil.test".into();
        assert_eq!(
            v.verify_at(&sign(&k, es("ec-1"), &c), NOW),
            Err(TokenError::Issuer)
        );
        let mut c = claims();
        c["aud"] = "other".into();
        assert_eq!(
            v.verify_at(&sign(&k, es("ec-1"), &c), NOW),
            Err(TokenError::Audience)
        );

        // Unknown and missing kid.
        assert_eq!(
            v.verify_at(&sign(&k, es("ec-9"), &claims()), NOW),
            Err(TokenError::UnknownKid)
        );
        let nokid = sign(&k, serde_json::json!({"alg": "ES256"}), &claims());
        assert_eq!(v.verify_at(&nokid, NOW), Err(TokenError::NoKid));
        // A critical extension, and a key embedded in the header (never used).
        let crit = sign(
            &k,
            serde_json::json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"]}),
            &claims(),
        );
        assert_eq!(v.verify_at(&crit, NOW), Err(TokenError::Malformed));
        let other = keys();
        let embedded = sign(
            &other,
            serde_json::json!({"alg": "ES256", "kid": "ec-1", "jwk": {"kty": "EC"}}),
            &claims(),
        );
        assert_eq!(v.verify_at(&embedded, NOW), Err(TokenError::Signature));

        // Tampered payload: the tenant changed after signing.
        let mut c = claims();
        c["tenant"] = "globex".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(v.verify_at(&tampered, NOW), Err(TokenError::Signature));

        // Oversized, refused before decoding.
        let mut c = claims();
        c["pad"] = "x".repeat(5000).into();
        assert_eq!(
            v.verify_at(&sign(&k, es("ec-1"), &c), NOW),
            Err(TokenError::TooLarge(4096))
        );
        // Not a JWS.
        assert_eq!(v.verify_at("a.b", NOW), Err(TokenError::Malformed));
        assert_eq!(
            v.verify_at(&format!("{good}.x"), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let k = keys();
        let v = verifier(&k);
        let t = sign(&k, es("ec-1"), &claims());
        assert!(v.verify_at(&t, NOW).is_ok());
        assert!(v.verify_at(&t, NOW + 1).is_ok());
        assert_eq!(v.verify_at(&t, NOW + 600 + 30), Err(TokenError::Expired));
        assert_eq!(v.verify_at(&t, NOW - 10 - 31), Err(TokenError::NotYetValid));
        // A tampered copy is a different text: verified from scratch.
        let mut bad = t.clone();
        bad.pop();
        bad.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert!(v.verify_at(&bad, NOW).is_err());
    }

    #[test]
    fn keys_rotate_when_the_file_changes() {
        let k = keys();
        let v = verifier(&k);
        let token = sign(&k, es("ec-2"), &claims());
        assert_eq!(v.verify_at(&token, NOW), Err(TokenError::UnknownKid));
        // The same key under a new id: picked up on the next unknown kid after the file changes.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(k.dir.path().join("jwks.json"), jwks(&k, "ec-2").to_string()).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(k.dir.path().join("jwks.json"))
            .unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(v.verify_at(&token, NOW).is_ok());
        // The old id is gone.
        let old = sign(&k, es("ec-1"), &claims());
        assert_eq!(v.verify_at(&old, NOW), Err(TokenError::UnknownKid));
    }
}
