//! What a VM changed in its project: the overlay's upper layer read against the project.
//!
//! In the upper layer a whiteout (a character device 0:0) marks a deleted path, an opaque
//! directory (`trusted.overlay.opaque=y`) one whose lower contents are hidden, and any other
//! entry a file the guest wrote. A copied-up file whose bytes equal the project's (a
//! metadata-only change) is not a change. Only the upper layer is walked, so a large
//! project with few changes is read fast.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    /// The one-letter mark of `git status --short` style listings.
    pub fn mark(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'M',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path, relative to the project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    pub path: PathBuf,
    pub kind: ChangeKind,
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"].iter().any(|name| xattr_is_y(dir, name))
}

fn xattr_is_y(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(path), Ok(name)) =
        (std::ffi::CString::new(path.as_os_str().as_bytes()), std::ffi::CString::new(name))
    else {
        return false;
    };
    let mut value = [0u8; 2];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer's
    // length is passed with it.
    let size =
        unsafe { nix::libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    size == 1 && value[0] == b'y'
}

/// The changes of `upper` against `lower`, sorted by path.
pub fn changes(upper: &Path, lower: &Path) -> anyhow::Result<Vec<Change>> {
    let mut found = Vec::new();
    if upper.is_dir() {
        walk(upper, lower, Path::new(""), &mut found)?;
    }
    found.sort();
    Ok(found)
}

fn walk(upper: &Path, lower: &Path, relative: &Path, found: &mut Vec<Change>) -> anyhow::Result<()> {
    let dir = upper.join(relative);
    if is_opaque(&dir) {
        for entry in read_sorted(&lower.join(relative)) {
            let inner = relative.join(entry.file_name());
            if !upper.join(&inner).exists() {
                found.push(Change { path: inner, kind: ChangeKind::Deleted });
            }
        }
    }
    for entry in read_sorted(&dir) {
        let inner = relative.join(entry.file_name());
        let meta = std::fs::symlink_metadata(upper.join(&inner))?;
        let below = std::fs::symlink_metadata(lower.join(&inner)).ok();
        if is_whiteout(&meta) {
            if below.is_some() {
                found.push(Change { path: inner, kind: ChangeKind::Deleted });
            }
        } else if meta.is_dir() {
            if below.as_ref().is_some_and(|b| !b.is_dir()) {
                found.push(Change { path: inner.clone(), kind: ChangeKind::Changed });
            } else if below.is_none() {
                found.push(Change { path: inner.clone(), kind: ChangeKind::Added });
            }
            walk(upper, lower, &inner, found)?;
        } else {
            match below {
                None => found.push(Change { path: inner, kind: ChangeKind::Added }),
                Some(_) if !same_content(&upper.join(&inner), &lower.join(&inner))? => {
                    found.push(Change { path: inner, kind: ChangeKind::Changed })
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn read_sorted(dir: &Path) -> Vec<std::fs::DirEntry> {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map(|e| e.filter_map(Result::ok).collect()).unwrap_or_default();
    entries.sort_by_key(|entry| entry.file_name());
    entries
}

fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (meta_a, meta_b) = (std::fs::symlink_metadata(a)?, std::fs::symlink_metadata(b)?);
    if meta_a.file_type().is_symlink() || meta_b.file_type().is_symlink() {
        return Ok(std::fs::read_link(a).ok() == std::fs::read_link(b).ok());
    }
    if meta_a.len() != meta_b.len() || meta_a.permissions().mode() != meta_b.permissions().mode() {
        return Ok(false);
    }
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}

/// A unified diff of `change` for text files (`None` for binary or directories).
pub fn patch(change: &Change, upper: &Path, lower: &Path) -> Option<String> {
    let read = |root: &Path| -> Option<String> {
        match change.kind {
            ChangeKind::Added if root == lower => Some(String::new()),
            ChangeKind::Deleted if root == upper => Some(String::new()),
            _ => {
                let path = root.join(&change.path);
                if path.is_dir() {
                    return None;
                }
                String::from_utf8(std::fs::read(path).ok()?).ok()
            }
        }
    };
    let (old, new) = (read(lower)?, read(upper)?);
    let name = change.path.display().to_string();
    Some(
        similar::TextDiff::from_lines(&old, &new)
            .unified_diff()
            .header(&format!("a/{name}"), &format!("b/{name}"))
            .to_string(),
    )
}

/// A path whose project copy changed after the VM made its own (a conflict for `apply`).
pub fn conflicts_with_host(change: &Change, upper: &Path, lower: &Path) -> bool {
    let (Ok(ours), Ok(theirs)) = (
        std::fs::symlink_metadata(upper.join(&change.path)),
        std::fs::symlink_metadata(lower.join(&change.path)),
    ) else {
        return false;
    };
    // The upper copy's birth is when the guest first wrote the path.
    let copied_at = ours.created().or_else(|_| ours.modified()).ok();
    let host_changed = theirs.modified().ok();
    matches!((copied_at, host_changed), (Some(copied), Some(changed)) if changed > copied)
}

/// Brings `change` from the upper layer into the project.
pub fn apply(change: &Change, upper: &Path, lower: &Path) -> anyhow::Result<()> {
    let (source, target) = (upper.join(&change.path), lower.join(&change.path));
    match change.kind {
        ChangeKind::Deleted => {
            let meta = std::fs::symlink_metadata(&target);
            if meta.as_ref().is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&target)
            } else {
                std::fs::remove_file(&target)
            }
            .with_context(|| format!("cannot delete {}", target.display()))
        }
        ChangeKind::Added | ChangeKind::Changed => {
            let meta = std::fs::symlink_metadata(&source)?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if let Ok(existing) = std::fs::symlink_metadata(&target) {
                if existing.is_dir() && !meta.is_dir() {
                    std::fs::remove_dir_all(&target)?;
                } else if !existing.is_dir() && (meta.is_dir() || meta.file_type().is_symlink()) {
                    std::fs::remove_file(&target)?;
                }
            }
            if meta.is_dir() {
                std::fs::create_dir_all(&target)?;
            } else if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
            } else {
                // Write through a temp file so a reader never sees half a file.
                let temp = target.with_file_name(format!(
                    ".{}.mvm-apply",
                    target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                ));
                std::fs::copy(&source, &temp)?;
                std::fs::rename(&temp, &target)?;
            }
            let _ = std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()));
            Ok(())
        }
    }
    .with_context(|| format!("cannot apply {}", change.path.display()))
}

/// Whether `path` is selected by `filters` (no filters select everything; a filter selects
/// itself and everything under it).
pub fn selected(path: &Path, filters: &[PathBuf]) -> bool {
    filters.is_empty() || filters.iter().any(|filter| path.starts_with(filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (upper, lower) = (dir.path().join("upper"), dir.path().join("lower"));
        std::fs::create_dir_all(lower.join("src")).unwrap();
        std::fs::write(lower.join("README"), "one\n").unwrap();
        std::fs::write(lower.join("src/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(lower.join("same.txt"), "same\n").unwrap();
        std::fs::create_dir_all(upper.join("src")).unwrap();
        (dir, upper, lower)
    }

    #[test]
    fn finds_added_changed_and_unchanged_copies() {
        let (_dir, upper, lower) = layers();
        std::fs::write(upper.join("README"), "two\n").unwrap();
        std::fs::write(upper.join("same.txt"), "same\n").unwrap();
        std::fs::write(upper.join("src/new.rs"), "// new\n").unwrap();
        let found = changes(&upper, &lower).unwrap();
        assert_eq!(
            found,
            [
                Change { path: "README".into(), kind: ChangeKind::Changed },
                Change { path: "src/new.rs".into(), kind: ChangeKind::Added },
            ]
        );
        let patch = patch(&found[0], &upper, &lower).unwrap();
        assert!(
            patch.contains("--- a/README") && patch.contains("-one") && patch.contains("+two"),
            "{patch}"
        );
    }

    #[test]
    fn applies_and_selects() {
        let (_dir, upper, lower) = layers();
        std::fs::write(upper.join("README"), "two\n").unwrap();
        std::fs::create_dir_all(upper.join("docs")).unwrap();
        std::fs::write(upper.join("docs/guide.md"), "guide\n").unwrap();
        let found = changes(&upper, &lower).unwrap();
        let docs: Vec<&Change> = found.iter().filter(|c| selected(&c.path, &["docs".into()])).collect();
        assert_eq!(docs.len(), 2, "{found:?}");
        for change in &found {
            apply(change, &upper, &lower).unwrap();
        }
        assert_eq!(std::fs::read_to_string(lower.join("README")).unwrap(), "two\n");
        assert_eq!(std::fs::read_to_string(lower.join("docs/guide.md")).unwrap(), "guide\n");
        assert!(changes(&upper, &lower).unwrap().is_empty());
    }

    #[test]
    fn nothing_upper_means_no_changes() {
        let (dir, _upper, lower) = layers();
        assert!(changes(&dir.path().join("none"), &lower).unwrap().is_empty());
    }
}
