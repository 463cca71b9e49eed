//! Files the agent keeps in its private state: directories are created mode 0700; files are
//! replaced atomically (written beside the target under a unique name, then renamed over it),
//! so a reader sees the old content or the new, never part of one, and a failed write leaves
//! nothing behind. Documents the agent is handed (signed statements, revocation lists) are read
//! with a bound.

use std::io::Read as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Creates `path` (and its parents) with mode 0700, and makes an existing one 0700.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Reads `path` whole, refusing it past `limit` bytes (read one byte past the limit, so that a
/// growing file or a FIFO cannot get around a size from metadata).
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

/// Whether [`write_atomically`] waits for the bytes to reach the disk before the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced first: the new content survives a power cut once this returns (documents the
    /// agent acts on: revocation lists, the chosen defaults).
    Synced,
    /// Not synced: reports rewritten every few seconds, where a lost update costs nothing.
    Report,
}

/// Replaces `path` with `bytes`, created with `mode`.
pub fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durability == Durability::Synced {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create_private_dir(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        let file = state.join("f.json");
        write_atomically(&file, b"one", 0o600, Durability::Synced).unwrap();
        write_atomically(&file, b"two", 0o600, Durability::Report).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert_eq!(mode(&file), 0o600);
        let names: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file was left behind");
    }
}
