//! A project watched on the host: one inotify watch per directory, added through
//! [`crate::fs::Tree`] (beneath the project, no symlink followed: in a read-write project
//! the guest makes the directories), and the kernel's events turned into
//! [`FileChange`]s with paths relative to the project.
//!
//! A rename whose two halves both fall in the project is one change; a half alone is a
//! creation (moved in) or a deletion (moved out). A directory made or moved in is watched
//! at once, and what it already holds is reported as made, since its own events came
//! before its watch. Past `limit` watches no more are added, and the log says which
//! directories go unwatched.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};

use crate::contract::changes::{Change, FileChange};
use crate::fs::Tree;

/// The most rename halves kept waiting for their second half.
const MAX_UNPAIRED: usize = 4096;

/// What each directory is watched for.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR
        // No events for a file deleted while open (a log still being written).
        | AddWatchFlags::from_bits_retain(nix::libc::IN_EXCL_UNLINK)
}

/// The watches on one project.
pub struct Watches {
    inotify: Inotify,
    root: Tree,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    limit: usize,
    /// Set once a directory went unwatched (the limit, or the user's inotify limit).
    pub incomplete: Option<String>,
    /// The first half of renames, by cookie, until their second half comes.
    moved_from: HashMap<u32, (PathBuf, bool)>,
}

impl Watches {
    /// Watches every directory of `root` (at most `limit`).
    pub fn new(root: Tree, limit: usize) -> std::io::Result<Watches> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
        let mut watches = Watches {
            inotify,
            root,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            limit,
            incomplete: None,
            moved_from: HashMap::new(),
        };
        watches.watch_tree(Path::new(""), None);
        Ok(watches)
    }

    /// How many directories are watched.
    pub fn len(&self) -> usize {
        self.by_wd.len()
    }

    /// The inotify descriptor (to wait on).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Whether renames wait for their second half.
    pub fn awaiting_moves(&self) -> bool {
        !self.moved_from.is_empty()
    }

    /// Watches directory `top` and every directory beneath it; with `found`, reports what
    /// is in them as made.
    fn watch_tree(&mut self, top: &Path, mut found: Option<&mut Vec<FileChange>>) {
        let mut pending = vec![top.to_path_buf()];
        while let Some(dir) = pending.pop() {
            if !self.watch(&dir) {
                continue;
            }
            if let Some(found) = found.as_deref_mut() {
                if let Ok(entries) = self.root.entries(&dir) {
                    for entry in entries {
                        let is_dir = entry.meta.is_dir();
                        found.push(FileChange {
                            change: Change::Created,
                            path: dir.join(&entry.name),
                            dir: is_dir,
                        });
                    }
                }
            }
            if let Ok(names) = self.root.subdirs(&dir) {
                pending.extend(names.iter().map(|name| dir.join(name)));
            }
        }
    }

    /// Adds the watch on directory `dir`; false when it is not watched.
    fn watch(&mut self, dir: &Path) -> bool {
        if self.by_path.contains_key(dir) {
            return true;
        }
        if self.by_wd.len() >= self.limit {
            self.incomplete.get_or_insert_with(|| {
                format!(
                    "{} directories are watched, the most a VM may have; deeper changes raise no events",
                    self.limit
                )
            });
            return false;
        }
        let Ok(subtree) = self.root.subtree(dir) else { return false };
        let proc_path = format!("/proc/self/fd/{}", subtree.as_fd().as_raw_fd());
        match self.inotify.add_watch(proc_path.as_str(), watch_mask()) {
            Ok(wd) => {
                if let Some(old) = self.by_wd.insert(wd, dir.to_path_buf()) {
                    self.by_path.remove(&old);
                }
                self.by_path.insert(dir.to_path_buf(), wd);
                true
            }
            Err(nix::errno::Errno::ENOSPC) => {
                self.incomplete.get_or_insert_with(|| {
                    format!(
                        "the user's inotify watches ran out after {} directories (fs.inotify.max_user_watches); deeper changes raise no events",
                        self.by_wd.len()
                    )
                });
                false
            }
            Err(_) => false,
        }
    }

    /// Every path beneath `from` (itself included) now is beneath `to`.
    fn renamed(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, WatchDescriptor)> = self
            .by_path
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, wd)| (path.clone(), *wd))
            .collect();
        for (path, wd) in moved {
            let new = to.join(path.strip_prefix(from).expect("beneath from"));
            self.by_path.remove(&path);
            self.by_path.insert(new.clone(), wd);
            self.by_wd.insert(wd, new);
        }
    }

    /// Stops watching `dir` and everything beneath it (moved out of the project).
    fn unwatch(&mut self, dir: &Path) {
        let gone: Vec<PathBuf> = self.by_path.keys().filter(|path| path.starts_with(dir)).cloned().collect();
        for path in gone {
            if let Some(wd) = self.by_path.remove(&path) {
                self.by_wd.remove(&wd);
                let _ = self.inotify.rm_watch(wd);
            }
        }
    }

    /// Reads the events waiting (blocks until there is one) into `out`.
    pub fn read(&mut self, out: &mut Vec<FileChange>) -> std::io::Result<()> {
        let events = self.inotify.read_events().map_err(std::io::Error::from)?;
        for event in events {
            self.translate(event, out);
        }
        Ok(())
    }

    /// Renames whose second half did not come: they left the project.
    pub fn flush_moves(&mut self, out: &mut Vec<FileChange>) {
        for (_, (path, dir)) in std::mem::take(&mut self.moved_from) {
            if dir {
                self.unwatch(&path);
            }
            out.push(FileChange { change: Change::Deleted, path, dir });
        }
    }

    fn translate(&mut self, event: InotifyEvent, out: &mut Vec<FileChange>) {
        let mask = event.mask;
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            out.push(FileChange { change: Change::Rescan, path: PathBuf::new(), dir: true });
            self.watch_tree(Path::new(""), None);
            return;
        }
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            if let Some(path) = self.by_wd.remove(&event.wd) {
                if self.by_path.get(&path) == Some(&event.wd) {
                    self.by_path.remove(&path);
                }
            }
            return;
        }
        let Some(dir_path) = self.by_wd.get(&event.wd).cloned() else { return };
        let Some(name) = event.name.as_deref() else {
            // An event on the watched directory itself: its entry in its parent says it.
            return;
        };
        let path = dir_path.join(name);
        let dir = mask.contains(AddWatchFlags::IN_ISDIR);
        let change = |change| FileChange { change, path: path.clone(), dir };
        if mask.contains(AddWatchFlags::IN_MOVED_FROM) {
            // Halves whose pair never comes (moved into a directory past the limit) are
            // deletions: a steady stream of them holds no memory.
            if self.moved_from.len() >= MAX_UNPAIRED {
                self.flush_moves(out);
            }
            self.moved_from.insert(event.cookie, (path, dir));
        } else if mask.contains(AddWatchFlags::IN_MOVED_TO) {
            match self.moved_from.remove(&event.cookie) {
                Some((from, dir)) => {
                    if dir {
                        self.renamed(&from, &path);
                    }
                    out.push(FileChange { change: Change::Renamed(path), path: from, dir });
                }
                None => {
                    out.push(change(Change::Created));
                    if dir {
                        self.watch_tree(&path, Some(out));
                    }
                }
            }
        } else if mask.contains(AddWatchFlags::IN_CREATE) {
            out.push(change(Change::Created));
            if dir {
                self.watch_tree(&path, Some(out));
            }
        } else if mask.contains(AddWatchFlags::IN_DELETE) {
            out.push(change(Change::Deleted));
        } else if mask.contains(AddWatchFlags::IN_MODIFY) {
            out.push(change(Change::Modified));
        } else if mask.contains(AddWatchFlags::IN_CLOSE_WRITE) {
            out.push(change(Change::Closed));
        } else if mask.contains(AddWatchFlags::IN_ATTRIB) {
            out.push(change(Change::Attributes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn watched(dir: &Path, limit: usize) -> Watches {
        Watches::new(Tree::open(dir).unwrap(), limit).unwrap()
    }

    /// Everything the watches report until `settled` holds or 5 s pass.
    fn read_until(watches: &mut Watches, settled: impl Fn(&[FileChange]) -> bool) -> Vec<FileChange> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !settled(&out) && std::time::Instant::now() < deadline {
            let mut fds = [nix::poll::PollFd::new(watches.fd(), nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)) {
                Ok(0) => watches.flush_moves(&mut out),
                _ => watches.read(&mut out).unwrap(),
            }
        }
        out
    }

    fn change(change: Change, path: &str, dir: bool) -> FileChange {
        FileChange { change, path: path.into(), dir }
    }

    #[test]
    fn every_kind_of_change_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/old.txt"), "old").unwrap();
        let mut watches = watched(dir.path(), 100);
        assert_eq!(watches.len(), 3);
        std::fs::write(dir.path().join("a/b/new.txt"), "new").unwrap();
        std::fs::write(dir.path().join("a/b/old.txt"), "changed").unwrap();
        std::fs::set_permissions(
            dir.path().join("a/b/old.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::rename(dir.path().join("a/b/new.txt"), dir.path().join("a/moved.txt")).unwrap();
        std::fs::remove_file(dir.path().join("a/b/old.txt")).unwrap();
        let want = |out: &[FileChange]| out.iter().any(|c| c.change == Change::Deleted);
        let out = read_until(&mut watches, want);
        let expected = [
            change(Change::Created, "a/b/new.txt", false),
            change(Change::Modified, "a/b/new.txt", false),
            change(Change::Closed, "a/b/new.txt", false),
            change(Change::Modified, "a/b/old.txt", false),
            change(Change::Closed, "a/b/old.txt", false),
            change(Change::Attributes, "a/b/old.txt", false),
            change(Change::Renamed("a/moved.txt".into()), "a/b/new.txt", false),
            change(Change::Deleted, "a/b/old.txt", false),
        ];
        for expected in &expected {
            assert!(out.contains(expected), "{expected:?} missing from {out:?}");
        }
    }

    /// A directory made (or moved in) is watched at once, what it holds already is
    /// reported, and a directory renamed keeps reporting under its new name.
    #[test]
    fn new_and_renamed_directories_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("pkg/lib")).unwrap();
        std::fs::write(outside.path().join("pkg/lib/index.js"), "x").unwrap();
        let mut watches = watched(dir.path(), 100);
        std::fs::rename(outside.path().join("pkg"), dir.path().join("pkg")).unwrap();
        let out = read_until(&mut watches, |out| out.len() >= 3);
        assert!(out.contains(&change(Change::Created, "pkg", true)), "{out:?}");
        assert!(out.contains(&change(Change::Created, "pkg/lib", true)), "{out:?}");
        assert!(out.contains(&change(Change::Created, "pkg/lib/index.js", false)), "{out:?}");
        std::fs::rename(dir.path().join("pkg"), dir.path().join("renamed")).unwrap();
        read_until(&mut watches, |out| !out.is_empty());
        std::fs::write(dir.path().join("renamed/lib/index.js"), "y").unwrap();
        let out = read_until(&mut watches, |out| out.iter().any(|c| c.change == Change::Closed));
        assert!(out.contains(&change(Change::Modified, "renamed/lib/index.js", false)), "{out:?}");
        // Moved out of the project: a deletion, and its watches go.
        std::fs::rename(dir.path().join("renamed"), outside.path().join("gone")).unwrap();
        let out = read_until(&mut watches, |out| !out.is_empty());
        assert_eq!(out, [change(Change::Deleted, "renamed", true)]);
        assert_eq!(watches.len(), 1);
        std::fs::write(outside.path().join("gone/lib/index.js"), "z").unwrap();
        assert!(read_until(&mut watches, |_| false).is_empty(), "no events from outside the project");
    }

    /// A symlink to a directory outside is not followed: nothing outside is watched.
    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let mut watches = watched(dir.path(), 100);
        assert_eq!(watches.len(), 1);
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        assert!(read_until(&mut watches, |_| false).is_empty());
    }

    /// Past the limit no more directories are watched, and it is said.
    #[test]
    fn the_watch_limit_holds_and_is_said() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let watches = watched(dir.path(), 2);
        assert_eq!(watches.len(), 2);
        assert!(watches.incomplete.as_deref().unwrap().contains("2 directories are watched"));
    }
}
