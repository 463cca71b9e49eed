//! Listing the files of a model directory the way model_signing does: every regular file,
//! hidden ones included, empty ones included, symbolic links and special files refused,
//! ignored paths skipped by path component.

use std::fs;
use std::path::{Component, Path, PathBuf};

use super::error::BundleError;

/// Refuse models with more files than this: the manifest of each file is held in memory and
/// signed as one JSON document.
pub(crate) const MAX_FILES: usize = 1_000_000;

/// A relative path inside the model, as its components. Ordering is component-wise, which is
/// how Python's `PurePosixPath` sorts: `sub/a` < `sub/deep/x` < `sub.txt`.
pub(crate) type RelPath = Vec<String>;

/// Joins components the way the manifest names files (POSIX separators). The empty path is
/// a model that is one file, signed as itself: model_signing names it `.`.
pub(crate) fn display(rel: &[String]) -> String {
    if rel.is_empty() {
        ".".to_owned()
    } else {
        rel.join("/")
    }
}

/// One regular file of the model.
#[derive(Debug, Clone)]
pub(crate) struct ModelFile {
    pub(crate) rel: RelPath,
    pub(crate) abs: PathBuf,
    pub(crate) size: u64,
}

/// Paths excluded from the manifest, relative to the model directory. A file is excluded when
/// one entry is a component-wise prefix of its path (Python's `Path.is_relative_to`), so
/// `.git` excludes `.git/config` but not `.gitignore`.
#[derive(Debug, Clone, Default)]
pub(crate) struct IgnoreSet {
    entries: Vec<RelPath>,
}

impl IgnoreSet {
    /// Adds a path written relative to the model directory (`a/b`, `./a/b`, `a/b/`). Entries
    /// that climb out of the model (`..`) can never match a file inside it and are dropped, as
    /// model_signing drops them.
    pub(crate) fn add_relative(&mut self, path: &str) {
        if let Some(rel) = normalize_relative(Path::new(path))
            && !self.entries.contains(&rel)
        {
            self.entries.push(rel);
        }
    }

    /// Adds a path given by a caller: relative paths are relative to the model directory,
    /// absolute ones must lie inside it (otherwise they are dropped).
    pub(crate) fn add_caller_path(&mut self, model_dir: &Path, path: &Path) {
        if path.is_absolute() {
            if let Some(rel) = relative_to_model(model_dir, path)
                && let Some(rel) = normalize_relative(&rel)
                && !self.entries.contains(&rel)
            {
                self.entries.push(rel);
            }
        } else if let Some(s) = path.to_str() {
            self.add_relative(s);
        }
    }

    pub(crate) fn matches(&self, rel: &[String]) -> bool {
        self.entries.iter().any(|e| rel.starts_with(e))
    }

    /// The entries as recorded in the predicate (`ignore_paths`), sorted for a stable payload.
    pub(crate) fn recorded(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.iter().map(|e| display(e)).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// `model_dir`-relative form of an absolute `path`, trying the path as given and then both
/// sides canonicalized (the model may be reached through a different spelling).
pub(crate) fn relative_to_model(model_dir: &Path, path: &Path) -> Option<PathBuf> {
    if let Ok(rel) = path.strip_prefix(model_dir) {
        return Some(rel.to_path_buf());
    }
    let model = fs::canonicalize(model_dir).ok()?;
    if let Ok(rel) = path.strip_prefix(&model) {
        return Some(rel.to_path_buf());
    }
    // The file may not exist yet (a signature about to be written): canonicalize its parent.
    let parent = path.parent()?;
    let name = path.file_name()?;
    let canonical = fs::canonicalize(parent).ok()?.join(name);
    canonical.strip_prefix(&model).ok().map(Path::to_path_buf)
}

fn normalize_relative(path: &Path) -> Option<RelPath> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Lists the model's regular files, sorted by path component. A model that is one regular
/// file is that file alone, with the empty relative path (model_signing's `.`); ignore paths
/// do not apply to it.
pub(crate) fn list_files(
    model_dir: &Path,
    ignore: &IgnoreSet,
) -> Result<Vec<ModelFile>, BundleError> {
    let meta = fs::symlink_metadata(model_dir).map_err(|e| BundleError::io(model_dir, e))?;
    if meta.file_type().is_symlink() {
        return Err(BundleError::Symlink {
            path: model_dir.to_path_buf(),
        });
    }
    if meta.is_file() {
        return Ok(vec![ModelFile {
            rel: Vec::new(),
            abs: model_dir.to_path_buf(),
            size: meta.len(),
        }]);
    }
    if !meta.is_dir() {
        return Err(BundleError::NotDirectoryOrFile {
            path: model_dir.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    // An explicit stack rather than recursion: a deep tree cannot overflow the thread stack.
    let mut stack: Vec<(PathBuf, RelPath)> = vec![(model_dir.to_path_buf(), Vec::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| BundleError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BundleError::io(&dir, e))?;
            let abs = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| BundleError::NonUtf8Path { path: abs.clone() })?;
            let mut rel = rel_dir.clone();
            rel.push(name);
            // Ignored subtrees are skipped whole: they are not covered by the signature, so
            // nothing in them (a `.git` directory, a previous signature) can matter.
            if ignore.matches(&rel) {
                continue;
            }
            // `file_type()` does not follow links, so a link is seen as a link.
            let ft = entry.file_type().map_err(|e| BundleError::io(&abs, e))?;
            if ft.is_symlink() {
                return Err(BundleError::Symlink { path: abs });
            } else if ft.is_dir() {
                stack.push((abs, rel));
            } else if ft.is_file() {
                let size = entry
                    .metadata()
                    .map_err(|e| BundleError::io(&abs, e))?
                    .len();
                files.push(ModelFile { rel, abs, size });
                if files.len() > MAX_FILES {
                    return Err(BundleError::TooLarge {
                        what: format!("model {} (file count)", model_dir.display()),
                        size: files.len() as u64,
                        limit: MAX_FILES as u64,
                    });
                }
            } else {
                return Err(BundleError::SpecialFile { path: abs });
            }
        }
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        s.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn orders_by_path_component_like_python() {
        // Python: sorted(PurePosixPath(p) for p in …) gives this order; a plain string sort
        // would put "sub.txt" before "sub/a" because '.' < '/'.
        let mut v = [
            rel("sub.txt"),
            rel("sub/deep/big"),
            rel("B"),
            rel("sub/a"),
            rel("a.bin"),
        ];
        v.sort();
        let names: Vec<String> = v.iter().map(|r| display(r)).collect();
        assert_eq!(names, ["B", "a.bin", "sub/a", "sub/deep/big", "sub.txt"]);
    }

    #[test]
    fn ignore_matches_by_component() {
        let mut ig = IgnoreSet::default();
        ig.add_relative(".git/");
        ig.add_relative("./docs");
        ig.add_relative("../outside");
        assert!(ig.matches(&rel(".git/config")));
        assert!(ig.matches(&rel(".git")));
        assert!(!ig.matches(&rel(".gitignore")));
        assert!(ig.matches(&rel("docs/readme.md")));
        assert!(!ig.matches(&rel("docsx")));
        assert_eq!(ig.recorded(), [".git", "docs"]);
    }

    #[test]
    fn caller_absolute_paths_inside_model_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut ig = IgnoreSet::default();
        ig.add_caller_path(dir.path(), &dir.path().join("model.sig"));
        ig.add_caller_path(dir.path(), Path::new("/etc/passwd"));
        assert_eq!(ig.recorded(), ["model.sig"]);
    }
}
