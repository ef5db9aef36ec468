//! What a VM changed in its project: the overlay's upper layer read against the project.
//!
//! In the upper layer a whiteout (a character device 0:0) marks a deleted path, an opaque
//! directory (`trusted.overlay.opaque=y`) one whose lower contents are hidden, and any other
//! entry a file the guest wrote. A copied-up file whose bytes equal the project's (a
//! metadata-only change) is not a change. Only the upper layer is walked, so a large
//! project with few changes is read fast.

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::fs::{Kind, Tree};

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

/// `path` as text safe for a terminal: control characters (escape sequences a guest put
/// in a file name to hide lines of a review) are shown escaped.
pub fn printable(path: &Path) -> String {
    escape_unprintable(&path.to_string_lossy(), false)
}

/// `text` with terminal controls, bidi overrides and zero-width characters escaped
/// (newlines and tabs kept when `keep_lines`).
pub fn escape_unprintable(text: &str, keep_lines: bool) -> String {
    let hidden = |c: char| {
        (c.is_control() && !(keep_lines && (c == '\n' || c == '\t')))
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    text.chars().map(|c| if hidden(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// One changed path, relative to the project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    pub path: PathBuf,
    pub kind: ChangeKind,
}

/// The most of one file `diff --patch` reads on either side.
pub const PATCH_CAP: u64 = 1 << 20;

fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// A VM's overlay: the upper layer the guest wrote (hostile) over the project (which
/// a guest with `--mount rw` once may have written too). Both are read and written only
/// beneath their roots, never through a symlink ([`crate::fs`]).
pub struct Layers {
    upper: Tree,
    lower: Tree,
    /// Who owns the project: what `apply` gives the files it writes.
    owner: (u32, u32),
}

/// What `apply` did with one change beyond copying it, for the user to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyNote {
    /// A FIFO, socket or device node: never brought to the project.
    SkippedSpecial(PathBuf),
    /// Setuid/setgid bits the guest set, dropped.
    DroppedPrivilegeBits(PathBuf),
}

impl std::fmt::Display for ApplyNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyNote::SkippedSpecial(path) => {
                write!(f, "skipped {}: a FIFO, socket or device node", printable(path))
            }
            ApplyNote::DroppedPrivilegeBits(path) => {
                write!(f, "dropped the setuid/setgid bits of {}", printable(path))
            }
        }
    }
}

impl Layers {
    /// The layers at `upper` and `lower`; `None` when the VM has no upper layer yet.
    pub fn open(upper: &Path, lower: &Path) -> anyhow::Result<Option<Layers>> {
        let upper = match Tree::open(upper) {
            Ok(tree) => tree,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        // The project as recorded: no symlink anywhere on its path redirects `apply`.
        let lower = Tree::open_exact(lower)?;
        let root = lower.metadata(Path::new(""))?.context("the project vanished")?;
        Ok(Some(Layers { upper, lower, owner: (root.uid(), root.gid()) }))
    }

    /// The changes of the upper layer against the project, sorted by path.
    pub fn changes(&self) -> anyhow::Result<Vec<Change>> {
        let mut found = Vec::new();
        self.walk(Path::new(""), &mut found)?;
        found.sort();
        Ok(found)
    }

    fn walk(&self, relative: &Path, found: &mut Vec<Change>) -> anyhow::Result<()> {
        let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"]
            .iter()
            .any(|name| self.upper.dir_xattr(relative, name).ok().flatten().as_deref() == Some(b"y"));
        if opaque {
            for entry in self.lower.entries(relative).unwrap_or_default() {
                let inner = relative.join(&entry.name);
                if self.upper.metadata(&inner)?.is_none() {
                    found.push(Change { path: inner, kind: ChangeKind::Deleted });
                }
            }
        }
        for entry in self.upper.entries(relative)? {
            let inner = relative.join(&entry.name);
            let below = self.lower.metadata(&inner)?;
            let meta = &entry.meta;
            if is_whiteout(meta) {
                if below.is_some() {
                    found.push(Change { path: inner, kind: ChangeKind::Deleted });
                }
            } else if meta.is_dir() {
                match &below {
                    Some(below) if !below.is_dir() => {
                        found.push(Change { path: inner.clone(), kind: ChangeKind::Changed })
                    }
                    None => found.push(Change { path: inner.clone(), kind: ChangeKind::Added }),
                    Some(_) => {}
                }
                self.walk(&inner, found)?;
            } else {
                match below {
                    None => found.push(Change { path: inner, kind: ChangeKind::Added }),
                    Some(below) if !self.same_content(&inner, meta, &below)? => {
                        found.push(Change { path: inner, kind: ChangeKind::Changed })
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    fn same_content(&self, relative: &Path, ours: &Metadata, theirs: &Metadata) -> anyhow::Result<bool> {
        match (Kind::of(ours), Kind::of(theirs)) {
            (Kind::Symlink, Kind::Symlink) => {
                Ok(self.upper.read_link(relative)? == self.lower.read_link(relative)?)
            }
            (Kind::File, Kind::File)
                if ours.len() == theirs.len() && ours.permissions().mode() == theirs.permissions().mode() =>
            {
                let (mut a, mut b) = (self.upper.open_file(relative)?, self.lower.open_file(relative)?);
                same_bytes(&mut a, &mut b)
            }
            _ => Ok(false),
        }
    }

    /// One side of a patch: text, a symlink's target, or `None` (binary, large, other).
    fn side(&self, tree: &Tree, relative: &Path) -> Option<String> {
        let Some(meta) = tree.metadata(relative).ok()? else { return Some(String::new()) };
        match Kind::of(&meta) {
            Kind::Symlink => Some(format!("symlink -> {}\n", printable(&tree.read_link(relative).ok()?))),
            Kind::File if meta.len() <= PATCH_CAP => {
                String::from_utf8(tree.read(relative, PATCH_CAP).ok()?).ok()
            }
            _ => None,
        }
    }

    /// A unified diff of `change` for text files and symlinks (a symlink shows as its
    /// target text, never as the file it points at); `None` for anything else.
    pub fn patch(&self, change: &Change) -> Option<String> {
        let old = match change.kind {
            ChangeKind::Added => String::new(),
            _ => self.side(&self.lower, &change.path)?,
        };
        let new = match change.kind {
            ChangeKind::Deleted => String::new(),
            _ => self.side(&self.upper, &change.path)?,
        };
        let name = printable(&change.path);
        Some(
            similar::TextDiff::from_lines(&old, &new)
                .unified_diff()
                .header(&format!("a/{name}"), &format!("b/{name}"))
                .to_string(),
        )
    }

    /// Whether the project's copy of `change` changed after the VM made its own.
    pub fn conflicts_with_host(&self, change: &Change) -> bool {
        let (Ok(Some(ours)), Ok(Some(theirs))) =
            (self.upper.metadata(&change.path), self.lower.metadata(&change.path))
        else {
            return false;
        };
        // The upper copy's birth is when the guest first wrote the path.
        let copied_at = ours.created().or_else(|_| ours.modified()).ok();
        let host_changed = theirs.modified().ok();
        matches!((copied_at, host_changed), (Some(copied), Some(changed)) if changed > copied)
    }

    /// Brings `change` into the project: symlinks as symlinks, files with the project
    /// owner's ids and without setuid/setgid bits; FIFOs, sockets and devices are
    /// skipped. Nothing is written through a symlink of the project.
    pub fn apply(&self, change: &Change) -> anyhow::Result<Option<ApplyNote>> {
        self.apply_one(change).with_context(|| format!("cannot apply {}", printable(&change.path)))
    }

    fn apply_one(&self, change: &Change) -> anyhow::Result<Option<ApplyNote>> {
        let path = &change.path;
        if change.kind == ChangeKind::Deleted {
            self.lower.remove(path)?;
            return Ok(None);
        }
        let meta = self.upper.metadata(path)?.with_context(|| format!("{} vanished", printable(path)))?;
        let kind = Kind::of(&meta);
        if kind == Kind::Special {
            return Ok(Some(ApplyNote::SkippedSpecial(path.clone())));
        }
        let owner = Some(self.owner);
        if let Some(parent) = path.parent() {
            self.lower.create_dir_all(parent, 0o755, owner)?;
        }
        if let Some(existing) = self.lower.metadata(path)? {
            let existing = Kind::of(&existing);
            if (existing == Kind::Dir) != (kind == Kind::Dir) || kind == Kind::Symlink {
                self.lower.remove(path)?;
            }
        }
        // No setuid, setgid or sticky bit, and nothing writable by every user.
        let mode = meta.permissions().mode() & 0o7777;
        let safe_mode = mode & 0o775;
        match kind {
            Kind::Dir => self.lower.create_dir_all(path, safe_mode, owner)?,
            Kind::Symlink => self.lower.symlink(path, &self.upper.read_link(path)?, owner)?,
            _ => self.lower.write_file(path, &self.upper.open_file(path)?, safe_mode, owner)?,
        }
        Ok((mode & 0o6000 != 0).then(|| ApplyNote::DroppedPrivilegeBits(path.clone())))
    }

    /// Drops `change` from the upper layer (the VM must be stopped).
    pub fn discard(&self, change: &Change) -> anyhow::Result<()> {
        self.upper.remove(&change.path).with_context(|| format!("cannot discard {}", printable(&change.path)))
    }
}

fn same_bytes(a: &mut impl Read, b: &mut impl Read) -> anyhow::Result<bool> {
    let (mut left, mut right) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = a.read(&mut left)?;
        if n == 0 {
            return Ok(b.read(&mut right[..1])? == 0);
        }
        let mut filled = 0;
        while filled < n {
            let m = b.read(&mut right[filled..n])?;
            if m == 0 {
                return Ok(false);
            }
            filled += m;
        }
        if left[..n] != right[..n] {
            return Ok(false);
        }
    }
}

/// Whether `path` is selected by `filters` (no filters select everything; a filter selects
/// itself and everything under it).
pub fn selected(path: &Path, filters: &[PathBuf]) -> bool {
    filters.is_empty() || filters.iter().any(|filter| path.starts_with(filter))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn layers() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (upper, lower) = (dir.path().join("upper"), dir.path().join("lower"));
        std::fs::create_dir_all(lower.join("src")).unwrap();
        std::fs::write(lower.join("README"), "one\n").unwrap();
        std::fs::write(lower.join("src/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(lower.join("same.txt"), "same\n").unwrap();
        std::fs::create_dir_all(upper.join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join("host")).unwrap();
        std::fs::write(dir.path().join("host/secret"), "HOST SECRET\n").unwrap();
        (dir, upper, lower)
    }

    fn open(upper: &Path, lower: &Path) -> Layers {
        Layers::open(upper, lower).unwrap().unwrap()
    }

    #[test]
    fn finds_added_changed_and_unchanged_copies() {
        let (_dir, upper, lower) = layers();
        std::fs::write(upper.join("README"), "two\n").unwrap();
        std::fs::write(upper.join("same.txt"), "same\n").unwrap();
        std::fs::write(upper.join("src/new.rs"), "// new\n").unwrap();
        let layers = open(&upper, &lower);
        let found = layers.changes().unwrap();
        assert_eq!(
            found,
            [
                Change { path: "README".into(), kind: ChangeKind::Changed },
                Change { path: "src/new.rs".into(), kind: ChangeKind::Added },
            ]
        );
        let patch = layers.patch(&found[0]).unwrap();
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
        let layers = open(&upper, &lower);
        let found = layers.changes().unwrap();
        let docs: Vec<&Change> = found.iter().filter(|c| selected(&c.path, &["docs".into()])).collect();
        assert_eq!(docs.len(), 2, "{found:?}");
        for change in &found {
            assert_eq!(layers.apply(change).unwrap(), None);
        }
        assert_eq!(std::fs::read_to_string(lower.join("README")).unwrap(), "two\n");
        assert_eq!(std::fs::read_to_string(lower.join("docs/guide.md")).unwrap(), "guide\n");
        assert!(layers.changes().unwrap().is_empty());
    }

    #[test]
    fn names_print_without_their_escape_sequences() {
        assert_eq!(printable(Path::new("a\x1b[2Kb\n")), "a\\u{1b}[2Kb\\n");
        assert_eq!(printable(Path::new("src/ünïcode.rs")), "src/ünïcode.rs");
        assert_eq!(printable(Path::new("evil\u{202e}txt.exe")), "evil\\u{202e}txt.exe");
        assert_eq!(escape_unprintable("line\n\tx\x1b[31m", true), "line\n\tx\\u{1b}[31m");
    }

    #[test]
    fn nothing_upper_means_no_layers() {
        let (dir, _upper, lower) = layers();
        assert!(Layers::open(&dir.path().join("none"), &lower).unwrap().is_none());
    }

    /// A guest-made symlink to a host file: the patch shows the link, not the file.
    #[test]
    fn patch_shows_a_symlink_as_its_target_text() {
        let (dir, upper, lower) = layers();
        let secret = dir.path().join("host/secret");
        symlink(&secret, upper.join("README")).unwrap();
        symlink(&secret, upper.join("leak")).unwrap();
        let layers = open(&upper, &lower);
        let found = layers.changes().unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        for change in &found {
            let patch = layers.patch(change).unwrap();
            assert!(!patch.contains("HOST SECRET"), "{patch}");
            assert!(patch.contains(&format!("+symlink -> {}", secret.display())), "{patch}");
        }
    }

    /// Apply copies a symlink as a symlink, never the file it points at.
    #[test]
    fn apply_copies_symlinks_as_symlinks() {
        let (dir, upper, lower) = layers();
        let secret = dir.path().join("host/secret");
        symlink(&secret, upper.join("leak")).unwrap();
        let layers = open(&upper, &lower);
        for change in layers.changes().unwrap() {
            layers.apply(&change).unwrap();
        }
        assert_eq!(std::fs::read_link(lower.join("leak")).unwrap(), secret);
    }

    /// The project has a symlink to a host directory; the guest made a real directory of
    /// that name in its layer. Applying a file beneath it must not write into the host.
    #[test]
    fn apply_never_writes_through_a_symlinked_project_directory() {
        let (dir, upper, lower) = layers();
        let host = dir.path().join("host");
        symlink(&host, lower.join("config")).unwrap();
        std::fs::create_dir(upper.join("config")).unwrap();
        std::fs::write(upper.join("config/secret"), "pwned\n").unwrap();
        let layers = open(&upper, &lower);
        let evil = Change { path: "config/secret".into(), kind: ChangeKind::Added };
        assert!(layers.changes().unwrap().contains(&evil));
        let error = layers.apply(&evil).unwrap_err();
        assert!(format!("{error:#}").contains("config"), "{error:#}");
        assert_eq!(std::fs::read_to_string(host.join("secret")).unwrap(), "HOST SECRET\n");
        let deleted = Change { path: "config/secret".into(), kind: ChangeKind::Deleted };
        let _ = layers.apply(&deleted);
        assert!(host.join("secret").exists(), "deleted through the symlink");
        // Applying the whole change replaces the symlink with the guest's directory.
        for change in layers.changes().unwrap() {
            layers.apply(&change).unwrap();
        }
        assert!(std::fs::symlink_metadata(lower.join("config")).unwrap().is_dir());
        assert_eq!(std::fs::read_to_string(host.join("secret")).unwrap(), "HOST SECRET\n");
    }

    /// Setuid/setgid bits are dropped, special files skipped, and what is written gets
    /// the project owner's ids, whoever owned the guest's copy.
    #[test]
    fn apply_gives_no_privilege() {
        let (_dir, upper, lower) = layers();
        std::fs::write(upper.join("tool"), "#!/bin/sh\n").unwrap();
        nix::unistd::mkfifo(&upper.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let owner = if nix::unistd::Uid::effective().is_root() {
            std::os::unix::fs::chown(&lower, Some(4321), Some(4322)).unwrap();
            std::os::unix::fs::chown(upper.join("tool"), Some(0), Some(0)).unwrap();
            (4321, 4322)
        } else {
            let meta = std::fs::metadata(&lower).unwrap();
            (meta.uid(), meta.gid())
        };
        std::fs::set_permissions(upper.join("tool"), std::fs::Permissions::from_mode(0o6755)).unwrap();
        let layers = open(&upper, &lower);
        let mut notes = Vec::new();
        for change in layers.changes().unwrap() {
            notes.extend(layers.apply(&change).unwrap());
        }
        assert_eq!(
            notes,
            [ApplyNote::SkippedSpecial("pipe".into()), ApplyNote::DroppedPrivilegeBits("tool".into())]
        );
        let meta = std::fs::metadata(lower.join("tool")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!((meta.uid(), meta.gid()), owner);
        assert!(std::fs::symlink_metadata(lower.join("pipe")).is_err());
    }
}
