//! A policy set on disk and its canonical digest.
//!
//! A policy set is every policy the agent evaluates (the startup policy, the route policy, and
//! those to come) with the data documents they read: `.rego` files and files named
//! `data.json`, anywhere under one directory. A `data.json` is loaded at the data path of its
//! directory, as in an OPA bundle (`data.json` at the top is `data`, `a/b/data.json` is
//! `data.a.b`). Release statements pin the policy set they were approved under
//! (`policySetDigest`), a load measures it, a quote names it; the set's digest is
//! [`policy_set_digest`] of the directory:
//!
//! ```text
//! manifest = "warden-policy-set/v2\n"
//!          + for each regular file named "*.rego" or "data.json", anywhere under the
//!            directory, sorted by its relative path ('/'-separated, UTF-8, compared bytewise):
//!              hex(SHA-256(file bytes)) + "  " + relative path + "\n"
//! digest   = "sha256:" + hex(SHA-256(manifest))
//! ```
//!
//! The manifest lines are those of `sha256sum`, so the digest is reproducible with coreutils:
//!
//! ```sh
//! cd policies && { printf 'warden-policy-set/v2\n';
//!   find . -type f \( -name '*.rego' -o -name data.json \) | sed 's|^\./||' | LC_ALL=C sort |
//!   while read -r f; do printf '%s  %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$f"; done
//! } | sha256sum
//! ```
//!
//! Nothing else in the directory is read or evaluated (case files `*_test.json`, a README), so
//! nothing else counts. Symbolic links, non-UTF-8 names, more than [`MAX_POLICY_FILES`] files
//! or a file over [`MAX_POLICY_FILE_BYTES`] are refused, so the digest always names exactly the
//! bytes that are evaluated. (Version 1 of the manifest covered `.rego` files only: a set's
//! data could change under the same digest.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// Files in a policy set at most.
pub const MAX_POLICY_FILES: usize = 1024;
/// Bytes of one policy file at most.
pub const MAX_POLICY_FILE_BYTES: u64 = 1024 * 1024;

const MANIFEST_HEADER: &str = "warden-policy-set/v2\n";

/// The name of a data document in a policy set.
pub const DATA_DOCUMENT: &str = "data.json";

/// Whether a file of the directory belongs to the set: a policy or a data document.
pub fn is_policy_set_file(name: &str) -> bool {
    name == DATA_DOCUMENT || name.ends_with(".rego")
}

/// Why a policy directory cannot be digested.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFilesError {
    /// A file or directory of the policy set.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The policy tree holds something that cannot be digested unambiguously.
    #[error("policy set {path}: {detail}")]
    Tree {
        /// The offending path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, PolicyFilesError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| PolicyFilesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(PolicyFilesError::Tree {
            path: path.to_path_buf(),
            detail: "not a regular file (symbolic links are refused)".to_owned(),
        });
    }
    if meta.len() > MAX_POLICY_FILE_BYTES {
        return Err(PolicyFilesError::Tree {
            path: path.to_path_buf(),
            detail: format!("larger than {MAX_POLICY_FILE_BYTES} bytes"),
        });
    }
    std::fs::read(path).map_err(|source| PolicyFilesError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The canonical digest of the policy set under `dir` (see the module documentation).
pub fn policy_set_digest(dir: &Path) -> Result<String, PolicyFilesError> {
    Ok(digest_of(&policy_set_manifest(dir)?))
}

/// The manifest that [`policy_set_digest`] hashes.
pub fn policy_set_manifest(dir: &Path) -> Result<String, PolicyFilesError> {
    Ok(manifest_of(&read_policy_set(dir)?))
}

/// Every file of the set under `dir` (relative path → bytes), read once, and the set's
/// canonical digest over exactly those bytes: for packing a set that must match its digest.
pub fn policy_set_files(
    dir: &Path,
) -> Result<(BTreeMap<String, Vec<u8>>, String), PolicyFilesError> {
    let files = read_policy_set(dir)?;
    let digest = digest_of(&manifest_of(&files));
    Ok((files, digest))
}

fn digest_of(manifest: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(manifest.as_bytes()))
    )
}

/// Every file of the set (policies and data documents), by relative path, with its bytes.
fn read_policy_set(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, PolicyFilesError> {
    let mut files = BTreeMap::new();
    collect_set_files(dir, dir, &mut files, 0)?;
    files
        .into_iter()
        .map(|(rel, path)| Ok((rel, read_bounded(&path)?)))
        .collect()
}

fn manifest_of(set: &BTreeMap<String, Vec<u8>>) -> String {
    let mut manifest = String::from(MANIFEST_HEADER);
    for (rel, bytes) in set {
        manifest.push_str(&hex::encode(sha2::Sha256::digest(bytes)));
        manifest.push_str("  ");
        manifest.push_str(rel);
        manifest.push('\n');
    }
    manifest
}

fn collect_set_files(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, PathBuf>,
    depth: usize,
) -> Result<(), PolicyFilesError> {
    if depth > 16 {
        return Err(PolicyFilesError::Tree {
            path: dir.to_path_buf(),
            detail: "nested deeper than 16 directories".to_owned(),
        });
    }
    let read_err = |source| PolicyFilesError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|source| PolicyFilesError::Read {
            path: path.clone(),
            source,
        })?;
        if ft.is_symlink() {
            return Err(PolicyFilesError::Tree {
                path,
                detail: "symbolic links are refused in a policy set".to_owned(),
            });
        }
        if ft.is_dir() {
            collect_set_files(root, &path, out, depth + 1)?;
            continue;
        }
        let in_set = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_policy_set_file);
        if !in_set {
            continue;
        }
        if !ft.is_file() {
            return Err(PolicyFilesError::Tree {
                path,
                detail: "a policy that is not a regular file (symbolic links are refused)"
                    .to_owned(),
            });
        }
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(|r| {
                r.components()
                    .map(|c| c.as_os_str().to_str())
                    .collect::<Option<Vec<_>>>()
            })
            .map(|parts| parts.join("/"))
            .ok_or_else(|| PolicyFilesError::Tree {
                path: path.clone(),
                detail: "file name is not UTF-8".to_owned(),
            })?;
        if rel.contains('\n') {
            return Err(PolicyFilesError::Tree {
                path,
                detail: "file name holds a newline".to_owned(),
            });
        }
        if out.len() >= MAX_POLICY_FILES {
            return Err(PolicyFilesError::Tree {
                path,
                detail: format!("more than {MAX_POLICY_FILES} policy files"),
            });
        }
        out.insert(rel, path);
    }
    Ok(())
}
