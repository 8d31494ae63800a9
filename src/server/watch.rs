//! Noticing that the config file changed (`watch: true`), the way
//! Kubernetes changes a mounted file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config;

/// Watches a config file for changes the way Kubernetes makes them: the
/// path may be a symlink whose target is swapped, so the file is followed,
/// and a change is its identity or timestamp or size moving *and* its
/// content differing from what was last loaded.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    identity: Option<(u64, u64, SystemTime, u64)>,
    content: u64,
}

impl FileWatch {
    /// Starts watching `path`, whose content with digest `loaded` is what runs.
    /// The file's identity is not taken here: if the file changed between
    /// loading and now, the first look sees it (the content check decides).
    pub fn new(path: &Path, loaded: u64) -> FileWatch {
        FileWatch { path: path.to_owned(), identity: None, content: loaded }
    }

    fn identity(&self) -> Option<(u64, u64, SystemTime, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.dev(), m.ino(), m.modified().ok()?, m.len()))
    }

    /// True once per change of content (a touch or a swap to identical content is not a change).
    pub fn changed(&mut self) -> bool {
        let id = self.identity();
        if id.is_none() || id == self.identity {
            return false;
        }
        self.identity = id;
        match std::fs::read(&self.path).map(|b| config::digest(&b)) {
            Ok(h) if h != self.content => {
                self.content = h;
                true
            }
            _ => false,
        }
    }

    /// Records what a reload triggered some other way (SIGHUP) loaded.
    pub fn loaded(&mut self, digest: u64) {
        self.identity = self.identity();
        self.content = digest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_sees_a_symlink_swap_once_and_ignores_touches() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1.yaml");
        let v2 = dir.path().join("v2.yaml");
        let link = dir.path().join("proxy.yaml");
        std::fs::write(&v1, "a: 1\n").unwrap();
        std::fs::write(&v2, "a: 2\n").unwrap();
        std::os::unix::fs::symlink(&v1, &link).unwrap();
        let mut w = FileWatch::new(&link, config::digest(b"a: 1\n"));
        assert!(!w.changed(), "the first look finds what was loaded");
        // The Kubernetes way: a new target, then the link swapped atomically.
        let tmp = dir.path().join("tmp-link");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert!(w.changed(), "the swap is a change");
        assert!(!w.changed(), "and only one");
        // Same content under a new identity: not a change.
        let v3 = dir.path().join("v3.yaml");
        std::fs::write(&v3, "a: 2\n").unwrap();
        std::os::unix::fs::symlink(&v3, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert!(!w.changed());
    }
}
