//! One policy set, read once: every policy the agent evaluates (`serving/startup.rego`,
//! `serving/routes.rego`, and those to come) and their data documents (`data.json`, loaded at
//! the data path of their directory as in an OPA bundle), with the digest over exactly these
//! bytes (`warden_attest::policyset::files`). Every consumer compiles from the same read, so
//! what is evaluated is what the digest names: what releases pin, loads measure and quotes
//! report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warden_attest::policyset::files::{DATA_DOCUMENT, PolicyFilesError, policy_set_files};

use super::engine::Source;

/// Why a policy set cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum PolicySetError {
    /// The files themselves (a link, a file too large, unreadable).
    #[error(transparent)]
    Files(#[from] PolicyFilesError),
    /// A policy that is not UTF-8 text.
    #[error("policy {path}: not UTF-8")]
    NotText { path: PathBuf },
    /// A data document that is not JSON, or that collides with another.
    #[error("policy data {path}: {detail}")]
    Data { path: PathBuf, detail: String },
}

/// The files of a policy set as read, and their digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySetFiles {
    directory: PathBuf,
    digest: String,
    files: BTreeMap<String, Vec<u8>>,
}

impl PolicySetFiles {
    /// Reads the set under `directory` once.
    pub fn read(directory: &Path) -> Result<PolicySetFiles, PolicySetError> {
        let (files, digest) = policy_set_files(directory)?;
        Ok(PolicySetFiles {
            directory: directory.to_path_buf(),
            digest,
            files,
        })
    }

    /// Where it was read from.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Its canonical digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The policy at `relative` (e.g. `serving/routes.rego`), named by its path for messages;
    /// `None` when the set has none.
    pub fn policy(&self, relative: &str) -> Option<Result<Source, PolicySetError>> {
        let bytes = self.files.get(relative)?;
        let path = self.directory.join(relative);
        Some(
            String::from_utf8(bytes.clone())
                .map(|text| Source {
                    name: path.display().to_string(),
                    text,
                })
                .map_err(|_| PolicySetError::NotText { path }),
        )
    }

    /// Every policy of the set (`.rego`), in path order: a consumer compiles them all, so a
    /// rule may use any module of the set, and its configured entry point picks the decision.
    pub fn policies(&self) -> Result<Vec<Source>, PolicySetError> {
        self.files
            .keys()
            .filter(|path| path.ends_with(".rego"))
            .filter_map(|path| self.policy(path))
            .collect()
    }

    /// Every data document of the set merged into one `data` tree: `a/b/data.json` at
    /// `data.a.b`. Two documents that set the same value are refused rather than one silently
    /// winning.
    pub fn data(&self) -> Result<serde_json::Value, PolicySetError> {
        let mut data = serde_json::Value::Object(serde_json::Map::new());
        for (relative, bytes) in &self.files {
            let Some(parent) = data_document_parent(relative) else {
                continue;
            };
            let path = self.directory.join(relative);
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| PolicySetError::Data {
                    path: path.clone(),
                    detail: format!("not JSON: {e}"),
                })?;
            // The document wrapped in one object per directory, innermost first.
            let mut at = value;
            for segment in parent.split('/').filter(|s| !s.is_empty()).rev() {
                let mut wrapper = serde_json::Map::new();
                wrapper.insert(segment.to_owned(), at);
                at = serde_json::Value::Object(wrapper);
            }
            merge(&mut data, at, "data").map_err(|at| PolicySetError::Data {
                path: path.clone(),
                detail: if at == "data" {
                    "the top-level data document must be a JSON object".to_owned()
                } else {
                    format!("{at} is also set by another data document")
                },
            })?;
        }
        Ok(data)
    }

    /// [`PolicySetFiles::data`] with `extra` (data the agent supplies from its config, e.g.
    /// the stages this appliance serves) merged in; a collision with the set's data is refused.
    pub fn data_with(&self, extra: serde_json::Value) -> Result<serde_json::Value, PolicySetError> {
        let mut data = self.data()?;
        merge(&mut data, extra, "data").map_err(|at| PolicySetError::Data {
            path: self.directory.clone(),
            detail: format!("{at} is set by the agent's configuration and by a data document"),
        })?;
        Ok(data)
    }

    /// What differs from `older`, file by file (`changed: serving/routes.rego`, `added: …`,
    /// `removed: …`), for naming a change the agent refuses.
    pub fn changes_from(&self, older: &PolicySetFiles) -> Vec<String> {
        let mut changes = Vec::new();
        for (path, bytes) in &self.files {
            match older.files.get(path) {
                None => changes.push(format!("added: {path}")),
                Some(before) if before != bytes => changes.push(format!("changed: {path}")),
                Some(_) => {}
            }
        }
        for path in older.files.keys() {
            if !self.files.contains_key(path) {
                changes.push(format!("removed: {path}"));
            }
        }
        changes
    }
}

/// `Some(directory)` (possibly empty) when `relative` is a data document.
fn data_document_parent(relative: &str) -> Option<&str> {
    if relative == DATA_DOCUMENT {
        return Some("");
    }
    relative
        .strip_suffix(DATA_DOCUMENT)
        .and_then(|p| p.strip_suffix('/'))
}

/// Merges `from` into `into`: objects key by key, anything else only where nothing is yet.
/// Returns the path of a collision.
fn merge(into: &mut serde_json::Value, from: serde_json::Value, at: &str) -> Result<(), String> {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                let here = format!("{at}.{k}");
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v, &here)?,
                    None => {
                        a.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        _ => Err(at.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> (tempfile::TempDir, PolicySetFiles) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let read = PolicySetFiles::read(dir.path()).unwrap();
        (dir, read)
    }

    #[test]
    fn data_documents_sit_at_their_directorys_path() {
        let (_d, s) = set(&[
            ("data.json", r#"{"tenants": {"a": {}}}"#),
            ("llm/data.json", r#"{"budget": 3}"#),
            ("llm/tools/data.json", r#"["search"]"#),
            ("serving/routes.rego", "package warden.serving.routes\n"),
            ("serving/routes_test.json", "not read"),
        ]);
        assert_eq!(
            s.data().unwrap(),
            serde_json::json!({
                "tenants": {"a": {}},
                "llm": {"budget": 3, "tools": ["search"]},
            })
        );
        assert!(s.policy("serving/routes.rego").unwrap().is_ok());
        assert!(s.policy("serving/startup.rego").is_none());
    }

    #[test]
    fn colliding_or_broken_data_is_refused() {
        let (_d, s) = set(&[
            ("data.json", r#"{"llm": {"budget": 1}}"#),
            ("llm/data.json", r#"{"budget": 3}"#),
        ]);
        let e = s.data().unwrap_err().to_string();
        assert!(e.contains("data.llm.budget"), "{e}");
        let (_d, s) = set(&[("data.json", "{")]);
        assert!(s.data().unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn changes_are_named_file_by_file() {
        let (d, before) = set(&[
            ("data.json", "{}"),
            ("serving/routes.rego", "package a\n"),
            ("serving/old.rego", "package o\n"),
        ]);
        std::fs::write(d.path().join("serving/routes.rego"), "package b\n").unwrap();
        std::fs::remove_file(d.path().join("serving/old.rego")).unwrap();
        std::fs::write(d.path().join("serving/new.rego"), "package n\n").unwrap();
        let after = PolicySetFiles::read(d.path()).unwrap();
        assert_ne!(after.digest(), before.digest());
        assert_eq!(
            after.changes_from(&before),
            [
                "added: serving/new.rego",
                "changed: serving/routes.rego",
                "removed: serving/old.rego"
            ]
        );
    }
}
