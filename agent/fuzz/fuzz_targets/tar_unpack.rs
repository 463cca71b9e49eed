//! The admin listener's archive reader (`admin::archive::unpack`): a pushed model bundle or
//! policy set, as a tar, unpacked under small limits.
//!
//! Input: one mode byte, then the archive. Mode bit 0 picks the layout (bundle or policy
//! set); bits 1-3 the entry limit (1 to 8, or 64); bits 4-7 the byte limit (2^4 .. 2^19).
//!
//! Properties checked after every call (refused or not), by walking the directory that holds
//! the unpack directory (`into`), without following links:
//! - nothing exists outside `into` except the archive itself; nothing is a symlink, device,
//!   FIFO or socket: only regular files and directories;
//! - at most `max_entries` regular files were created (one per entry; directories are not
//!   counted: one entry may create its parents), and they hold at most `max_bytes` in all.
//!
//! And after a successful unpack: every top-level name is one the layout allows, the layout's
//! directories are directories and its files are regular files ("the directories are never
//! files themselves, and the files never directories", archive.rs).
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_agent::admin::archive::{BUNDLE_LAYOUT, Layout, POLICY_LAYOUT, unpack};
use warden_agent::models::policy_set::{POLICIES, STATEMENT};

/// This process's scratch directory (its contents made again for every input): in /dev/shm
/// when there is one (many times the executions per second of a disk-backed /tmp in the runs
/// here), else the temporary directory.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale(&tmp, "warden-fuzz-tar-");
        let dir = tmp.join(format!("warden-fuzz-tar-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    })
}

/// Removes the scratch directories of earlier runs whose process is gone (statics are never
/// dropped: a run leaves its directory behind).
fn remove_stale(tmp: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));

struct Found {
    files: usize,
    dirs: usize,
    bytes: u64,
}

/// Walks `dir` without following links; everything must be a regular file or a directory.
fn walk(dir: &Path, found: &mut Found) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let e = e.unwrap_or_else(|e| panic!("{e}"));
        let path = e.path();
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{e}"));
        let kind = meta.file_type();
        if kind.is_dir() {
            found.dirs += 1;
            walk(&path, found);
        } else if kind.is_file() {
            found.files += 1;
            found.bytes += meta.len();
        } else {
            panic!(
                "{} is neither a regular file nor a directory ({kind:?})",
                path.display()
            );
        }
    }
}

fn run(data: &[u8]) {
    let Some((&mode, archive_bytes)) = data.split_first() else {
        return;
    };
    let (layout, dirs, files): (&Layout, &[&str], &[&str]) = if mode & 1 == 0 {
        (
            &BUNDLE_LAYOUT,
            &["model", "attestations"],
            &["model.sig", "release.json"],
        )
    } else {
        (&POLICY_LAYOUT, &[POLICIES], &[STATEMENT])
    };
    let max_entries = match (mode >> 1) & 7 {
        7 => 64,
        n => usize::from(n) + 1,
    };
    let max_bytes = 1u64 << (4 + (mode >> 4));

    let base = scratch();
    let root = base.join("root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{e}"));
    let archive = base.join("archive.tar");
    fs::write(&archive, archive_bytes).unwrap_or_else(|e| panic!("{e}"));
    let into = root.join("into");

    let result = unpack(&archive, &into, max_bytes, max_entries, layout);

    // Nothing beside `into` under root; the archive file is untouched.
    for e in fs::read_dir(&root).unwrap_or_else(|e| panic!("{e}")) {
        let e = e.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            e.file_name(),
            "into",
            "unpack wrote {:?} outside into",
            e.path()
        );
    }
    for e in fs::read_dir(base).unwrap_or_else(|e| panic!("{e}")) {
        let e = e.unwrap_or_else(|e| panic!("{e}"));
        let name = e.file_name();
        assert!(
            name == "root" || name == "archive.tar",
            "unpack wrote {name:?} beside root"
        );
    }
    assert_eq!(fs::read(&archive).ok().as_deref(), Some(archive_bytes));
    let mut found = Found {
        files: 0,
        dirs: 0,
        bytes: 0,
    };
    if into.exists() {
        assert!(fs::symlink_metadata(&into).is_ok_and(|m| m.is_dir()));
        walk(&into, &mut found);
    }
    assert!(
        found.files <= max_entries,
        "{} files from at most {max_entries} entries ({} directories)",
        found.files,
        found.dirs
    );
    assert!(
        found.bytes <= max_bytes,
        "{} bytes unpacked, limit {max_bytes}",
        found.bytes
    );

    if result.is_ok() {
        for e in fs::read_dir(&into).unwrap_or_else(|e| panic!("{e}")) {
            let e = e.unwrap_or_else(|e| panic!("{e}"));
            let name = e.file_name();
            let kind = e.file_type().unwrap_or_else(|e| panic!("{e}"));
            if dirs.iter().any(|d| name == *d) {
                assert!(kind.is_dir(), "{name:?} is not a directory");
            } else if files.iter().any(|f| name == *f) {
                assert!(kind.is_file(), "{name:?} is not a regular file");
            } else {
                panic!("{name:?} is not in the layout");
            }
        }
    }
}
