//! What fleet pushes leave behind across restarts: every version pushed or pulled through the
//! admin listener is kept as its bundle in `<state dir>/pushed/<name>/<version>/`, and the
//! defaults chosen by `activate`/`rollback` in `<state dir>/active.json`. At start, after the
//! configured models, each kept bundle goes through the same path as a push — signature,
//! admission, measurement — so nothing kept is trusted because it was kept: a bundle that no
//! longer verifies or is no longer admitted (revoked, tampered on disk, the policy changed) is
//! refused, audited, logged and removed, and the agent serves what remains.

use crate::config::ModelConfig;
use crate::models::ModelRegistry;
use crate::state_files::Durability;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PUSHED: &str = "pushed";
const ACTIVE_FILE: &str = "active.json";

#[derive(Debug, thiserror::Error)]
pub enum FleetStateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding {ACTIVE_FILE}: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FleetStateError + '_ {
    move |source| FleetStateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `active.json`: name → the active version and the one before it.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ActiveFile {
    schema_version: u32,
    models: BTreeMap<String, ActiveEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ActiveEntry {
    version: String,
    previous: Option<String>,
}

/// A name or version as the admin API accepts them; anything else found on disk is ignored
/// (it was not written by us).
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The template for a pushed version of a model the configuration does not name
/// (`admin.accept_new_models`): the defaults (CPU, no batching, no value ranges), and no file
/// yet — [`bundle_config`] takes the bundle's one model file.
pub fn new_model_template(name: &str) -> ModelConfig {
    ModelConfig {
        name: name.to_owned(),
        version: String::new(),
        directory: PathBuf::new(),
        file: PathBuf::new(),
        signature: None,
        release: None,
        attestations: Vec::new(),
        inputs: Default::default(),
        batching: None,
        accelerator: None,
    }
}

/// Why an unpacked bundle cannot be a version of its model.
#[derive(Debug, thiserror::Error)]
pub enum BundleLayoutError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model/ holds no .onnx or .safetensors file")]
    NoModelFile,
    #[error(
        "model/ holds {} model files ({}); a new model's bundle must hold exactly one",
        .0.len(),
        .0.join(", ")
    )]
    SeveralModelFiles(Vec<String>),
}

/// The one `.onnx` or `.safetensors` file at the top of `model_dir`, for a model whose
/// configuration names no file.
fn sole_model_file(model_dir: &Path) -> Result<PathBuf, BundleLayoutError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(model_dir)
        .map_err(|source| BundleLayoutError::Read {
            path: model_dir.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| PathBuf::from(e.file_name()))
        .filter(|name| warden_runtime_client::model_format::ModelFormat::of(name).is_ok())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(BundleLayoutError::NoModelFile),
        _ => Err(BundleLayoutError::SeveralModelFiles(
            found.iter().map(|p| p.display().to_string()).collect(),
        )),
    }
}

/// The model config of an unpacked bundle (`model/`, `model.sig`, `release.json`,
/// `attestations/*.json`) as a version of `template`; a template without a file (a new
/// model) takes the bundle's one model file.
pub fn bundle_config(
    bundle: &Path,
    template: ModelConfig,
    version: &str,
) -> Result<ModelConfig, BundleLayoutError> {
    let release = bundle.join("release.json");
    let mut attestations: Vec<PathBuf> = std::fs::read_dir(bundle.join("attestations"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    attestations.sort();
    let directory = bundle.join("model");
    let file = if template.file.as_os_str().is_empty() {
        sole_model_file(&directory)?
    } else {
        template.file.clone()
    };
    Ok(ModelConfig {
        version: version.to_owned(),
        directory,
        file,
        signature: Some(bundle.join("model.sig")),
        release: release.is_file().then_some(release),
        attestations,
        ..template
    })
}

/// Moves a loaded version's unpacked bundle to where a restart finds it.
pub fn keep(
    state_dir: &Path,
    name: &str,
    version: &str,
    bundle: &Path,
) -> Result<PathBuf, FleetStateError> {
    let parent = state_dir.join(PUSHED).join(name);
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let to = parent.join(version);
    if to.exists() {
        std::fs::remove_dir_all(&to).map_err(io(&to))?;
    }
    std::fs::rename(bundle, &to).map_err(io(&to))?;
    Ok(to)
}

/// Records the registry's chosen defaults (after a push, an activate or a rollback).
pub fn save_active(state_dir: &Path, models: &ModelRegistry) -> Result<(), FleetStateError> {
    let file = ActiveFile {
        schema_version: 1,
        models: models
            .pinned_defaults()
            .into_iter()
            .map(|(name, (version, previous))| (name, ActiveEntry { version, previous }))
            .collect(),
    };
    let path = state_dir.join(ACTIVE_FILE);
    let bytes = serde_json::to_vec_pretty(&file)?;
    crate::state_files::write_atomically(&path, &bytes, 0o600, Durability::Synced)
        .map_err(io(&path))
}

/// At start: loads every kept version (refusing, with a log line and an audit event, those
/// that no longer pass) and restores the chosen defaults. Returns what was refused.
pub async fn restore(models: &ModelRegistry) -> Vec<String> {
    let state_dir = models.state_dir().to_path_buf();
    let mut refused = Vec::new();
    let root = state_dir.join(PUSHED);
    let Ok(names) = std::fs::read_dir(&root) else {
        return refused;
    };
    let mut kept: Vec<(String, String, PathBuf)> = Vec::new();
    for n in names.filter_map(Result::ok) {
        let name = n.file_name().to_string_lossy().into_owned();
        let Ok(versions) = std::fs::read_dir(n.path()) else {
            continue;
        };
        for v in versions.filter_map(Result::ok) {
            let version = v.file_name().to_string_lossy().into_owned();
            if plain(&name) && plain(&version) && v.path().is_dir() {
                kept.push((name.clone(), version, v.path()));
            }
        }
    }
    kept.sort();
    for (name, version, dir) in kept {
        let template = match models.configured(&name) {
            Some(template) => template,
            None if models.accepts_new_models() => new_model_template(&name),
            None => {
                tracing::warn!(model = %name, version = %version, "a kept pushed version belongs to a model no longer configured (and admin.accept_new_models is off): not loaded");
                continue;
            }
        };
        if models.resolve(&name, Some(&version)).is_some() {
            // The config names this version itself: the config's copy is the one served.
            continue;
        }
        let m = match bundle_config(&dir, template, &version) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(model = %name, version = %version, error = %e, "a kept pushed version no longer loads");
                refused.push(format!("{name} {version}: {e}"));
                continue;
            }
        };
        match models.add(&m).await {
            Ok(()) => {
                tracing::info!(model = %name, version = %version, "restored a pushed version")
            }
            Err(e) => {
                tracing::error!(model = %name, version = %version, error = %e, "a kept pushed version no longer loads: removed");
                refused.push(format!("{name} {version}: {e}"));
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot remove a refused pushed version");
                }
            }
        }
    }
    let path = state_dir.join(ACTIVE_FILE);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the chosen defaults")
        }
        Ok(bytes) => match serde_json::from_slice::<ActiveFile>(&bytes) {
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "the chosen defaults do not parse: highest versions serve")
            }
            Ok(file) => {
                for (name, entry) in file.models {
                    if !models.restore_default(&name, &entry.version, entry.previous) {
                        tracing::warn!(model = %name, version = %entry.version, "the chosen default is not loaded: the highest loaded version serves");
                    }
                }
            }
        },
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_read_back() {
        for ok in ["demo", "v2", "1.0.3", "a_b-c"] {
            assert!(plain(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(!plain(bad), "{bad}");
        }
    }

    #[test]
    fn the_active_file_refuses_unknown_fields() {
        let good =
            r#"{"schema_version": 1, "models": {"demo": {"version": "2", "previous": "1"}}}"#;
        let f: ActiveFile = serde_json::from_str(good).unwrap();
        assert_eq!(f.models["demo"].previous.as_deref(), Some("1"));
        assert!(serde_json::from_str::<ActiveFile>(&good.replace("previous", "prev")).is_err());
    }
}
