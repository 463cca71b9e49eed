//! The manifest: each resource (file or shard) of the model with its digest, the way it was
//! serialized, and the comparison between a signed manifest and the model on disk.

use std::collections::{BTreeMap, BTreeSet};

use super::digest::HashAlgorithm;
use super::error::BundleError;
use super::walk::{RelPath, display};

/// How the model is cut into resources before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Serialization {
    /// One resource per file (`"method": "files"`), model_signing's default.
    #[default]
    Files,
    /// Files cut into shards of `shard_size` bytes (`"method": "shards"`), each shard a
    /// resource named `path:start:end` with algorithm `<hash>-sharded-<shard_size>`. Empty
    /// files have no shards and so are not listed, exactly as model_signing does.
    Shards {
        /// Bytes per shard; model_signing's default is 1 000 000 000.
        shard_size: u64,
    },
}

impl Serialization {
    /// model_signing's default shard size.
    pub const DEFAULT_SHARD_SIZE: u64 = 1_000_000_000;
}

/// The serialization section of the predicate: everything needed to hash the model again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SerializationDesc {
    pub(crate) method: Serialization,
    pub(crate) hash: HashAlgorithm,
    pub(crate) allow_symlinks: bool,
    pub(crate) ignore_paths: Vec<String>,
}

impl SerializationDesc {
    /// The `algorithm` each resource carries: the hash name, with the shard size for shards.
    pub(crate) fn resource_algorithm(&self) -> String {
        match self.method {
            Serialization::Files => self.hash.name().to_owned(),
            Serialization::Shards { shard_size } => {
                format!("{}-sharded-{}", self.hash.name(), shard_size)
            }
        }
    }
}

/// One hashed resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resource {
    /// The file the resource belongs to.
    pub(crate) path: RelPath,
    /// `[start, end)` for a shard, `None` for a whole file.
    pub(crate) range: Option<(u64, u64)>,
    pub(crate) digest: Vec<u8>,
}

impl Resource {
    /// The resource's name in the manifest: `path` or `path:start:end`.
    pub(crate) fn name(&self) -> String {
        match self.range {
            None => display(&self.path),
            Some((s, e)) => format!("{}:{s}:{e}", display(&self.path)),
        }
    }

    /// Parses a signed resource name for the given serialization.
    pub(crate) fn parse_name(
        name: &str,
        method: Serialization,
    ) -> Result<(RelPath, Option<(u64, u64)>), BundleError> {
        let invalid = |reason: &str| BundleError::InvalidResource {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let (path, range) = match method {
            Serialization::Files => (name, None),
            Serialization::Shards { .. } => {
                // model_signing splits on every ':' and wants exactly three parts.
                let parts: Vec<&str> = name.split(':').collect();
                let [path, start, end] = parts.as_slice() else {
                    return Err(invalid("a shard name is path:start:end"));
                };
                let start: u64 = start
                    .parse()
                    .map_err(|_| invalid("shard start is not a number"))?;
                let end: u64 = end
                    .parse()
                    .map_err(|_| invalid("shard end is not a number"))?;
                if end <= start {
                    return Err(invalid("shard end must be greater than its start"));
                }
                (*path, Some((start, end)))
            }
        };
        // Names are only compared with what the walk found on disk, never opened, but a
        // name that cannot come from a walk is a forged or broken manifest: say so. A walk
        // writes `a/b`, never `./a/b`, `a//b` or `a/../b`; `.` alone is the one file of a
        // model that is a single file (whether it stands alone is the statement's check).
        if path == "." {
            return Ok((Vec::new(), range));
        }
        let rel: RelPath = path.split('/').map(str::to_owned).collect();
        if rel.iter().any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(invalid("not a relative path inside the model"));
        }
        Ok((rel, range))
    }
}

/// Sort key: path components, then shard offsets (Python sorts `_Shard(path, start, end)`
/// dataclasses as tuples).
pub(crate) fn sort_resources(resources: &mut [Resource]) {
    resources.sort_by(|a, b| (&a.path, a.range).cmp(&(&b.path, b.range)));
}

/// Compares the signed resources with those hashed on disk and names the first difference.
///
/// Both lists hold the same serialization. Differences are grouped per file so that a size
/// change of a sharded file reads as "file changed" rather than as shards added and removed.
pub(crate) fn compare(
    expected: &[Resource],
    actual: &[Resource],
    algorithm: &str,
) -> Result<(), BundleError> {
    let group = |rs: &[Resource]| {
        let mut m: BTreeMap<RelPath, Vec<Resource>> = BTreeMap::new();
        for r in rs {
            m.entry(r.path.clone()).or_default().push(r.clone());
        }
        for v in m.values_mut() {
            v.sort_by_key(|r| r.range);
        }
        m
    };
    let exp = group(expected);
    let act = group(actual);

    for (path, want) in &exp {
        let Some(got) = act.get(path) else { continue };
        if want == got {
            continue;
        }
        let name = display(path);
        // First resource (shard) that differs, by position.
        for (i, w) in want.iter().enumerate() {
            match got.get(i) {
                Some(g) if g == w => {}
                Some(g) if g.range == w.range => {
                    return Err(BundleError::FileChanged {
                        name,
                        resource: w.name(),
                        algorithm: algorithm.to_owned(),
                        expected: hex::encode(&w.digest),
                        actual: hex::encode(&g.digest),
                    });
                }
                other => {
                    return Err(BundleError::FileChanged {
                        name,
                        resource: w.name(),
                        algorithm: algorithm.to_owned(),
                        expected: hex::encode(&w.digest),
                        actual: match other {
                            Some(g) => format!("shard {} instead (file size changed)", g.name()),
                            None => "no such shard (file is shorter)".to_owned(),
                        },
                    });
                }
            }
        }
        // Every signed shard matched but there are more on disk: the file grew.
        if let Some(extra) = got.get(want.len()) {
            return Err(BundleError::FileChanged {
                name,
                resource: extra.name(),
                algorithm: algorithm.to_owned(),
                expected: "no such shard".to_owned(),
                actual: format!("{} (file is longer)", hex::encode(&extra.digest)),
            });
        }
    }

    let missing: BTreeSet<&RelPath> = exp.keys().filter(|p| !act.contains_key(*p)).collect();
    let added: BTreeSet<&RelPath> = act.keys().filter(|p| !exp.contains_key(*p)).collect();
    // A file missing under its signed name but present, byte for byte, under a new one.
    for m in &missing {
        for a in &added {
            let (Some(w), Some(g)) = (exp.get(*m), act.get(*a)) else {
                continue;
            };
            let same = w.len() == g.len()
                && w.iter()
                    .zip(g)
                    .all(|(x, y)| x.digest == y.digest && x.range == y.range);
            if same {
                return Err(BundleError::FileRenamed {
                    from: display(m),
                    to: display(a),
                });
            }
        }
    }
    if let Some(m) = missing.first() {
        return Err(BundleError::FileRemoved { name: display(m) });
    }
    if let Some(a) = added.first() {
        return Err(BundleError::FileAdded { name: display(a) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str, range: Option<(u64, u64)>, d: u8) -> Resource {
        Resource {
            path: path.split('/').map(str::to_owned).collect(),
            range,
            digest: vec![d; 32],
        }
    }

    #[test]
    fn shard_sort_is_numeric_not_textual() {
        let mut v = vec![
            res("f", Some((10, 20)), 0),
            res("f", Some((2, 10)), 0),
            res("f", Some((0, 2)), 0),
        ];
        sort_resources(&mut v);
        let names: Vec<String> = v.iter().map(Resource::name).collect();
        assert_eq!(names, ["f:0:2", "f:2:10", "f:10:20"]);
    }

    #[test]
    fn parse_names() {
        let shards = Serialization::Shards { shard_size: 4 };
        assert_eq!(
            Resource::parse_name("a/b:0:4", shards).unwrap(),
            (vec!["a".to_owned(), "b".to_owned()], Some((0, 4)))
        );
        assert!(Resource::parse_name("a:b:0:4", shards).is_err());
        assert!(Resource::parse_name("a:4:4", shards).is_err());
        assert!(Resource::parse_name("../x", Serialization::Files).is_err());
        assert!(Resource::parse_name("/etc/x", Serialization::Files).is_err());
        // `.` alone is a single-file model; nowhere else is `.` (or an empty component) a name
        // a walk produces.
        assert_eq!(
            Resource::parse_name(".", Serialization::Files).unwrap(),
            (Vec::new(), None)
        );
        assert_eq!(
            Resource::parse_name(".:0:4", shards).unwrap(),
            (Vec::new(), Some((0, 4)))
        );
        for forged in ["", "./a", "a/.", "a/./b", "a//b", "a/", "..", "a/../b"] {
            assert!(
                Resource::parse_name(forged, Serialization::Files).is_err(),
                "{forged:?}"
            );
        }
    }

    #[test]
    fn differences_are_named() {
        let signed = vec![res("a", None, 1), res("b", None, 2)];
        assert!(compare(&signed, &signed, "sha256").is_ok());
        assert!(matches!(
            compare(&signed, &[res("a", None, 1), res("b", None, 3)], "sha256"),
            Err(BundleError::FileChanged { name, .. }) if name == "b"
        ));
        assert!(matches!(
            compare(&signed, &[res("a", None, 1)], "sha256"),
            Err(BundleError::FileRemoved { name }) if name == "b"
        ));
        assert!(matches!(
            compare(&signed, &[res("a", None, 1), res("b", None, 2), res("c", None, 9)], "sha256"),
            Err(BundleError::FileAdded { name }) if name == "c"
        ));
        assert!(matches!(
            compare(&signed, &[res("a", None, 1), res("z", None, 2)], "sha256"),
            Err(BundleError::FileRenamed { from, to }) if from == "b" && to == "z"
        ));
    }
}
