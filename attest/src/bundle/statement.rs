//! The in-toto Statement v1 that OMS signs: one subject (model name, SHA-256 root digest) and
//! the `https://model_signing/signature/v1.0` predicate listing every resource.

use serde::{Deserialize, Serialize};

use super::digest::{HashAlgorithm, root_digest};
use super::error::BundleError;
use super::manifest::{Resource, Serialization, SerializationDesc};

pub(crate) const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub(crate) const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// Shard sizes are JSON numbers; Python's protobuf Struct turns them into doubles, so beyond
/// 2^53 they could not round-trip.
const MAX_SHARD_SIZE: u64 = 1 << 53;

/// A statement whose signature has been checked and whose root digest is consistent.
#[derive(Debug)]
pub(crate) struct SignedManifest {
    pub(crate) model_name: String,
    pub(crate) root_digest: String,
    pub(crate) serialization: SerializationDesc,
    pub(crate) resources: Vec<Resource>,
}

// ---- writing ------------------------------------------------------------------------------
// Field order follows model_signing's output; verifiers never depend on it.

#[derive(Serialize)]
struct StatementOut<'a> {
    #[serde(rename = "_type")]
    type_: &'a str,
    subject: [SubjectOut<'a>; 1],
    #[serde(rename = "predicateType")]
    predicate_type: &'a str,
    predicate: PredicateOut<'a>,
}

#[derive(Serialize)]
struct SubjectOut<'a> {
    name: &'a str,
    digest: DigestOut<'a>,
}

#[derive(Serialize)]
struct DigestOut<'a> {
    sha256: &'a str,
}

#[derive(Serialize)]
struct PredicateOut<'a> {
    resources: Vec<ResourceOut>,
    serialization: SerializationOut<'a>,
}

#[derive(Serialize)]
struct ResourceOut {
    algorithm: String,
    digest: String,
    name: String,
}

#[derive(Serialize)]
struct SerializationOut<'a> {
    method: &'a str,
    hash_type: &'a str,
    // Written as an integer: model_signing writes `1024.0` (protobuf Struct doubles), which
    // its own verifier then cannot use as a shard size; an integer works for both.
    #[serde(skip_serializing_if = "Option::is_none")]
    shard_size: Option<u64>,
    allow_symlinks: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ignore_paths: &'a [String],
}

/// Serializes the statement (pretty-printed like model_signing's payload). Returns the payload
/// bytes and the root digest (hex).
pub(crate) fn build(
    model_name: &str,
    desc: &SerializationDesc,
    resources: &[Resource],
) -> Result<(Vec<u8>, String), BundleError> {
    let root = root_digest(resources.iter().map(|r| r.digest.as_slice()));
    let algorithm = desc.resource_algorithm();
    let statement = StatementOut {
        type_: STATEMENT_TYPE,
        subject: [SubjectOut {
            name: model_name,
            digest: DigestOut { sha256: &root },
        }],
        predicate_type: PREDICATE_TYPE,
        predicate: PredicateOut {
            resources: resources
                .iter()
                .map(|r| ResourceOut {
                    algorithm: algorithm.clone(),
                    digest: hex::encode(&r.digest),
                    name: r.name(),
                })
                .collect(),
            serialization: SerializationOut {
                method: match desc.method {
                    Serialization::Files => "files",
                    Serialization::Shards { .. } => "shards",
                },
                hash_type: desc.hash.name(),
                shard_size: match desc.method {
                    Serialization::Files => None,
                    Serialization::Shards { shard_size } => Some(shard_size),
                },
                allow_symlinks: desc.allow_symlinks,
                ignore_paths: &desc.ignore_paths,
            },
        },
    };
    let json = serde_json::to_vec_pretty(&statement).map_err(|e| BundleError::MalformedJson {
        what: "in-toto statement",
        detail: e.to_string(),
    })?;
    Ok((json, root))
}

// ---- reading ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct StatementIn {
    #[serde(rename = "_type")]
    type_: String,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    subject: Vec<SubjectIn>,
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct SubjectIn {
    name: String,
    digest: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PredicateIn {
    serialization: SerializationIn,
    resources: Vec<ResourceIn>,
}

#[derive(Deserialize)]
struct SerializationIn {
    method: String,
    hash_type: String,
    #[serde(default)]
    shard_size: Option<serde_json::Number>,
    allow_symlinks: bool,
    #[serde(default)]
    ignore_paths: Vec<String>,
}

#[derive(Deserialize)]
struct ResourceIn {
    name: String,
    algorithm: String,
    digest: String,
}

fn malformed(detail: impl ToString) -> BundleError {
    BundleError::MalformedJson {
        what: "in-toto statement",
        detail: detail.to_string(),
    }
}

/// Parses a payload whose signature has already been verified, checking types, the
/// serialization and the root digest.
pub(crate) fn parse(payload: &[u8]) -> Result<SignedManifest, BundleError> {
    let st: StatementIn = serde_json::from_slice(payload).map_err(malformed)?;
    if st.type_ != STATEMENT_TYPE {
        return Err(BundleError::WrongStatementType {
            expected: STATEMENT_TYPE,
            actual: st.type_,
        });
    }
    // The v0.1 "Digests" predicate of model_signing ≤ 0.2 is refused: it lists no
    // serialization, so what it covers cannot be established.
    if st.predicate_type != PREDICATE_TYPE {
        return Err(BundleError::WrongPredicateType {
            expected: PREDICATE_TYPE,
            actual: st.predicate_type,
        });
    }
    let [subject] = <[SubjectIn; 1]>::try_from(st.subject)
        .map_err(|s| malformed(format!("expected exactly one subject, found {}", s.len())))?;
    let expected_root = subject
        .digest
        .get("sha256")
        .ok_or_else(|| malformed("subject has no sha256 digest"))?
        .clone();
    let pred: PredicateIn = serde_json::from_value(st.predicate).map_err(malformed)?;
    let desc = parse_serialization(pred.serialization)?;
    let algorithm = desc.resource_algorithm();

    let mut resources = Vec::with_capacity(pred.resources.len());
    let mut seen = std::collections::HashSet::new();
    for r in pred.resources {
        let invalid = |reason: String| BundleError::InvalidResource {
            name: r.name.clone(),
            reason,
        };
        if r.algorithm != algorithm {
            return Err(invalid(format!(
                "algorithm {:?} does not match the serialization ({algorithm:?})",
                r.algorithm
            )));
        }
        let digest =
            hex::decode(&r.digest).map_err(|e| invalid(format!("digest is not hex: {e}")))?;
        if digest.len() != desc.hash.digest_len() {
            return Err(invalid(format!(
                "digest has {} bytes, {} has {}",
                digest.len(),
                desc.hash.name(),
                desc.hash.digest_len()
            )));
        }
        // model_signing keeps the last of duplicate names; a signer never produces them.
        if !seen.insert(r.name.clone()) {
            return Err(invalid("listed twice".to_owned()));
        }
        let (path, range) = Resource::parse_name(&r.name, desc.method)?;
        resources.push(Resource {
            path,
            range,
            digest,
        });
    }

    // `.` is the model itself when the model is one file: then it is all the manifest lists
    // (once, or as that file's shards). Beside other names it would stand for a directory
    // holding them, which no walk produces.
    if resources.iter().any(|r| r.path.is_empty()) && resources.iter().any(|r| !r.path.is_empty()) {
        return Err(BundleError::InvalidResource {
            name: ".".to_owned(),
            reason: "names the signed file itself, so nothing else may be listed beside it"
                .to_owned(),
        });
    }

    // The root digest is over the resources in the order listed, as model_signing computes it.
    let actual_root = root_digest(resources.iter().map(|r| r.digest.as_slice()));
    if actual_root != expected_root {
        return Err(BundleError::InconsistentRootDigest {
            expected: expected_root,
            actual: actual_root,
        });
    }
    Ok(SignedManifest {
        model_name: subject.name,
        root_digest: actual_root,
        serialization: desc,
        resources,
    })
}

fn parse_serialization(s: SerializationIn) -> Result<SerializationDesc, BundleError> {
    let unsupported = |detail: String| BundleError::UnsupportedSerialization { detail };
    let hash = HashAlgorithm::from_name(&s.hash_type)
        .ok_or_else(|| unsupported(format!("hash_type {:?}", s.hash_type)))?;
    let method = match s.method.as_str() {
        "files" => Serialization::Files,
        "shards" => {
            let n = s
                .shard_size
                .ok_or_else(|| unsupported("shards without shard_size".to_owned()))?;
            // Accept 1024 and 1024.0 (what model_signing writes), nothing fractional.
            let size = match n.as_u64() {
                Some(v) => v,
                None => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f >= 1.0 && f <= MAX_SHARD_SIZE as f64 => {
                        f as u64
                    }
                    _ => return Err(unsupported(format!("shard_size {n}"))),
                },
            };
            if size == 0 || size > MAX_SHARD_SIZE {
                return Err(unsupported(format!("shard_size {n}")));
            }
            Serialization::Shards { shard_size: size }
        }
        other => return Err(unsupported(format!("method {other:?}"))),
    };
    Ok(SerializationDesc {
        method,
        hash,
        allow_symlinks: s.allow_symlinks,
        ignore_paths: s.ignore_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(method: Serialization) -> SerializationDesc {
        SerializationDesc {
            method,
            hash: HashAlgorithm::Sha256,
            allow_symlinks: false,
            ignore_paths: vec![".git".to_owned()],
        }
    }

    #[test]
    fn dot_names_the_single_file_and_stands_alone() {
        let res = |path: &[&str], range| Resource {
            path: path.iter().map(|c| (*c).to_owned()).collect(),
            range,
            digest: vec![7; 32],
        };
        // A single file, whole or as shards: `.` (or `.:start:end`) round-trips.
        for (d, rs) in [
            (desc(Serialization::Files), vec![res(&[], None)]),
            (
                desc(Serialization::Shards { shard_size: 4 }),
                vec![res(&[], Some((0, 4))), res(&[], Some((4, 6)))],
            ),
        ] {
            let (json, _) = build("model.onnx", &d, &rs).unwrap();
            let text = String::from_utf8(json.clone()).unwrap();
            assert!(
                text.contains("\"name\": \".\"") || text.contains("\"name\": \".:0:4\""),
                "{text}"
            );
            assert_eq!(parse(&json).unwrap().resources, rs);
        }
        // `.` beside another name (a directory manifest claiming its own root) is refused.
        let (json, _) = build(
            "m",
            &desc(Serialization::Files),
            &[res(&[], None), res(&["a"], None)],
        )
        .unwrap();
        assert!(matches!(
            parse(&json),
            Err(BundleError::InvalidResource { name, .. }) if name == "."
        ));
    }

    #[test]
    fn build_then_parse_round_trips() {
        let rs = vec![Resource {
            path: vec!["a".to_owned()],
            range: Some((0, 3)),
            digest: vec![9; 32],
        }];
        let d = desc(Serialization::Shards { shard_size: 3 });
        let (json, root) = build("m", &d, &rs).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"shard_size\": 3,"), "{text}");
        assert!(
            text.contains("\"algorithm\": \"sha256-sharded-3\""),
            "{text}"
        );
        let m = parse(&json).unwrap();
        assert_eq!(m.root_digest, root);
        assert_eq!(m.resources, rs);
        assert_eq!(m.serialization, d);
    }

    #[test]
    fn python_float_shard_size_is_accepted() {
        let json = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"m","digest":{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}],"predicateType":"https://model_signing/signature/v1.0","predicate":{"resources":[],"serialization":{"shard_size":1024.0,"method":"shards","hash_type":"sha256","allow_symlinks":false}}}"#;
        let m = parse(json).unwrap();
        assert_eq!(
            m.serialization.method,
            Serialization::Shards { shard_size: 1024 }
        );
    }
}
