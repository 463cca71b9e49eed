//! The archives the admin listener takes: a body spooled to disk under a size limit, then
//! unpacked with only regular files and directories, relative paths without `..`, under the
//! top-level names the archive's kind allows, within byte and entry limits.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use warden_attest::policyset::files::is_policy_set_file;

/// Whether the request says it carries a tar archive.
pub fn is_tar(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "application/x-tar")
}

/// Why a body could not be spooled.
#[derive(Debug)]
pub enum SpoolError {
    /// More than the limit (the limit).
    TooLarge(u64),
    /// The connection failed mid-body.
    Body(String),
    Io(std::io::Error),
}

/// Streams the body into `to`, refusing more than `limit` bytes.
pub async fn spool(mut body: Incoming, to: &Path, limit: u64) -> Result<(), SpoolError> {
    let mut file = std::fs::File::create(to).map_err(SpoolError::Io)?;
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SpoolError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            written = written.saturating_add(data.len() as u64);
            if written > limit {
                return Err(SpoolError::TooLarge(limit));
            }
            file.write_all(&data).map_err(SpoolError::Io)?;
        }
    }
    file.sync_all().map_err(SpoolError::Io)
}

/// Why an archive could not be unpacked.
#[derive(Debug)]
pub enum UnpackError {
    /// Over the size or entry limit.
    TooLarge(String),
    /// A refused entry, or a malformed archive.
    Invalid(String),
}

/// The top-level names an archive may hold: directories and single files.
pub struct Layout {
    dirs: &'static [&'static str],
    files: &'static [&'static str],
}

/// A model bundle (`PUT …/versions/{version}`, an OCI pull).
pub const BUNDLE_LAYOUT: Layout = Layout {
    dirs: &["model", "attestations"],
    files: &["model.sig", "release.json"],
};

/// A policy set (`PUT /admin/v1/policies`).
pub const POLICY_LAYOUT: Layout = Layout {
    dirs: &[crate::models::policy_set::POLICIES],
    files: &[crate::models::policy_set::STATEMENT],
};

/// Unpacks `archive` into `into`: regular files and directories only, relative paths without
/// `..`, under the top-level names `layout` allows; at most `max_bytes` unpacked and
/// `max_entries` entries.
pub fn unpack(
    archive: &Path,
    into: &Path,
    max_bytes: u64,
    max_entries: usize,
    layout: &Layout,
) -> Result<(), UnpackError> {
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |e: &dyn std::fmt::Display| UnpackError::Invalid(e.to_string());
    let file = std::fs::File::open(archive).map_err(|e| invalid(&e))?;
    let mut tar = tar::Archive::new(file);
    let mut total: u64 = 0;
    let mut count: usize = 0;
    std::fs::create_dir_all(into).map_err(|e| invalid(&e))?;
    for entry in tar.entries().map_err(|e| invalid(&e))? {
        let mut entry = entry.map_err(|e| invalid(&e))?;
        count += 1;
        if count > max_entries {
            return Err(UnpackError::TooLarge(format!(
                "more than {max_entries} entries"
            )));
        }
        let path = entry.path().map_err(|e| invalid(&e))?.into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir => {}
                _ => {
                    return Err(UnpackError::Invalid(format!(
                        "{}: absolute paths and '..' are refused",
                        path.display()
                    )));
                }
            }
        }
        let Some(top) = rel.components().next() else {
            continue;
        };
        let top = top.as_os_str();
        let is_file_top = layout.files.iter().any(|f| top == *f);
        let is_dir_top = layout.dirs.iter().any(|d| top == *d);
        if !(is_dir_top || is_file_top) {
            return Err(UnpackError::Invalid(format!(
                "{}: unexpected entry (only {} and {})",
                path.display(),
                layout
                    .dirs
                    .iter()
                    .map(|d| format!("{d}/"))
                    .collect::<Vec<_>>()
                    .join(", "),
                layout.files.join(", ")
            )));
        }
        // The directories are never files themselves, and the files never directories: nothing
        // lies below a single file's name (`model.sig/x` would make `model.sig` a directory).
        if is_file_top && rel.components().count() > 1 {
            return Err(UnpackError::Invalid(format!(
                "{}: {} is a file, not a directory",
                path.display(),
                top.to_string_lossy()
            )));
        }
        let dir_only = is_dir_top && rel.components().count() == 1;
        let target = into.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory if !is_file_top => {
                std::fs::create_dir_all(&target).map_err(|e| invalid(&e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous if !dir_only => {
                let size = entry.header().size().map_err(|e| invalid(&e))?;
                total = total.saturating_add(size);
                if total > max_bytes {
                    return Err(UnpackError::TooLarge(format!(
                        "more than {max_bytes} bytes unpacked"
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| invalid(&e))?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(|e| UnpackError::Invalid(format!("{}: {e}", path.display())))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(|e| invalid(&e))?;
                if copied != size {
                    return Err(UnpackError::Invalid(format!(
                        "{}: truncated",
                        path.display()
                    )));
                }
            }
            other => {
                return Err(UnpackError::Invalid(format!(
                    "{}: {other:?} entries are refused here (regular files and directories only)",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Refuses anything under a pushed `policies/` but directories and `.rego` files: every file
/// of the set must be one its digest covers.
pub fn only_policy_set_files(dir: &Path) -> Result<(), UnpackError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| UnpackError::Invalid(format!("{}: {e}", dir.display())))?;
    for e in entries {
        let e = e.map_err(|e| UnpackError::Invalid(e.to_string()))?;
        let path = e.path();
        let kind = e
            .file_type()
            .map_err(|e| UnpackError::Invalid(e.to_string()))?;
        if kind.is_dir() {
            only_policy_set_files(&path)?;
        } else if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_policy_set_file)
        {
            return Err(UnpackError::Invalid(format!(
                "{}: only .rego files and data.json documents belong in a policy set",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of regular files, each `(path, contents)`.
    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            t.append_data(&mut h, path, *data).unwrap();
        }
        t.into_inner().unwrap()
    }

    fn unpack_bytes(bytes: &[u8], layout: &Layout) -> (tempfile::TempDir, Result<(), UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive.tar");
        std::fs::write(&archive, bytes).unwrap();
        let into = dir.path().join("into");
        let r = unpack(&archive, &into, 1 << 20, 64, layout);
        (dir, r)
    }

    /// Found by the `tar_unpack` fuzz target (agent/fuzz): a regular file below a file-only
    /// top-level name was unpacked, and made that name a directory.
    #[test]
    fn nothing_lies_below_a_single_files_name() {
        for (layout, path) in [
            (&BUNDLE_LAYOUT, "model.sig/x"),
            (&BUNDLE_LAYOUT, "release.json/a/b"),
            (&POLICY_LAYOUT, "statement.json/x"),
        ] {
            let (dir, r) = unpack_bytes(&tar_of(&[(path, b"x")]), layout);
            assert!(matches!(r, Err(UnpackError::Invalid(_))), "{path}: {r:?}");
            let top = path.split('/').next().unwrap();
            assert!(!dir.path().join("into").join(top).exists(), "{path}");
        }
        // The files themselves and files under the directories still unpack.
        let (dir, r) = unpack_bytes(
            &tar_of(&[
                ("model.sig", b"{}"),
                ("model/m.onnx", b"m"),
                ("release.json", b"{}"),
            ]),
            &BUNDLE_LAYOUT,
        );
        assert!(r.is_ok(), "{r:?}");
        assert!(dir.path().join("into/model.sig").is_file());
        assert!(dir.path().join("into/model/m.onnx").is_file());
    }
}
