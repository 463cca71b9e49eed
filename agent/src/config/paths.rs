//! Relative paths in a config file are relative to the file's directory, so that a config and
//! its PKI, policies and models can move together. Each path field says so where it is
//! declared (`#[serde(deserialize_with = "relative")]`, or `relative_opt`, `relative_vec`):
//! the field is anchored while it is read, against the directory [`Config::parse`] sets for
//! the duration of the parse. Read outside a parse (a section deserialized alone, in a test),
//! a path is taken as written.
//!
//! [`Config::parse`]: super::Config::parse

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

thread_local! {
    /// The directory relative paths are anchored to, while a config is being parsed.
    static BASE: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Runs `parse` with relative paths anchored to `base`.
pub(super) fn anchored<T>(base: &Path, parse: impl FnOnce() -> T) -> T {
    struct Reset(Option<PathBuf>);
    impl Drop for Reset {
        fn drop(&mut self) {
            BASE.with(|b| *b.borrow_mut() = self.0.take());
        }
    }
    let previous = BASE.with(|b| b.replace(Some(base.to_path_buf())));
    let _reset = Reset(previous);
    parse()
}

/// `path` anchored to the base of the parse in progress, if it is relative.
pub fn anchor(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        return path;
    }
    BASE.with(|b| match b.borrow().as_ref() {
        Some(base) => base.join(&path),
        None => path,
    })
}

/// A path field, anchored.
pub fn relative<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    PathBuf::deserialize(d).map(anchor)
}

/// An optional path field, anchored (use with `#[serde(default)]`).
pub fn relative_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Option::<PathBuf>::deserialize(d).map(|p| p.map(anchor))
}

/// A list of paths, each anchored (use with `#[serde(default)]`).
pub fn relative_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Vec::<PathBuf>::deserialize(d).map(|v| v.into_iter().map(anchor).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Paths {
        #[serde(deserialize_with = "relative")]
        one: PathBuf,
        #[serde(default, deserialize_with = "relative_opt")]
        maybe: Option<PathBuf>,
        #[serde(default, deserialize_with = "relative_vec")]
        many: Vec<PathBuf>,
    }

    #[test]
    fn relative_paths_are_anchored_only_during_a_parse() {
        let text = "one = \"a\"\nmaybe = \"/abs\"\nmany = [\"b\", \"c/d\"]";
        let p: Paths = anchored(Path::new("/etc/warden"), || toml::from_str(text)).unwrap();
        assert_eq!(p.one, Path::new("/etc/warden/a"));
        assert_eq!(p.maybe.as_deref(), Some(Path::new("/abs")));
        assert_eq!(
            p.many,
            vec![PathBuf::from("/etc/warden/b"), "/etc/warden/c/d".into()]
        );
        let p: Paths = toml::from_str(text).unwrap();
        assert_eq!(p.one, Path::new("a"), "outside a parse, as written");
        let absent: Paths = anchored(Path::new("/x"), || toml::from_str("one = \"a\"")).unwrap();
        assert_eq!((absent.maybe, absent.many.len()), (None, 0));
    }
}
