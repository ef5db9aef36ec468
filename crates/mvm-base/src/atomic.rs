//! Atomic file replacement: write a temp file beside the target, fsync, rename, fsync the
//! directory. A reader sees the old content or the new, never a torn file, even across a
//! crash or power loss.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

/// Replaces `path` with `content` atomically (mode 0644).
pub fn write_atomic(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    write_atomic_with_mode(path, content, 0o644)
}

/// Replaces `path` with `content` atomically, readable by its owner only (mode 0600):
/// for records that may hold secrets (`vm.toml`'s `[env]`, environment caches).
pub fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    write_atomic_with_mode(path, content, 0o600)
}

fn write_atomic_with_mode(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().with_context(|| format!("{} has no parent directory", path.display()))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    temp.write_all(content)
        .and_then(|()| temp.as_file().set_permissions(Permissions::from_mode(mode)))
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", temp.path().display()))?;
    temp.persist(path).with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(dir)
}

/// Flushes a directory's entries (after a rename into it) to disk.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.toml");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn private_records_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.toml");
        write_private(&path, b"[env]\nTOKEN = \"x\"").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn fails_clearly_when_the_directory_is_missing() {
        let error = write_atomic(Path::new("/nonexistent-mvm-dir/vm.toml"), b"x").unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent-mvm-dir"));
    }
}
