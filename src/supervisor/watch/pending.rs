//! The changes waiting for the guest, coalesced: while the guest applies one batch the
//! next gathers here, and a path changed again before it was sent is sent once. Order is
//! kept (a deletion and a creation of one path arrive as they happened); past a cap (of
//! changes, and of their paths' bytes) the batch becomes one rescan of the whole project,
//! so a flood costs bounded memory and the guest still ends with the final state.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::contract::changes::{Change, FileChange};

/// The most changes kept for one batch before they become a rescan.
pub const MAX_PENDING: usize = 50_000;
/// The most bytes of paths kept for one batch (long paths a guest makes in a read-write
/// project count by their length) before they become a rescan.
pub const MAX_PENDING_BYTES: usize = 8 << 20;

/// The batch being gathered.
#[derive(Debug, Default)]
pub struct Pending {
    changes: Vec<FileChange>,
    /// Each path's latest change in `changes`.
    latest: HashMap<PathBuf, usize>,
    /// The bytes of the paths in `changes`.
    bytes: usize,
    rescan: bool,
}

impl Pending {
    /// Adds `change`, unless the batch already says as much for its path.
    pub fn push(&mut self, change: FileChange) {
        if self.rescan {
            return;
        }
        if let Some(&at) = self.latest.get(&change.path) {
            let earlier = &self.changes[at].change;
            let repeated = match change.change {
                Change::Modified => matches!(earlier, Change::Modified | Change::Created),
                Change::Closed | Change::Attributes => *earlier == change.change,
                _ => false,
            };
            if repeated {
                return;
            }
        }
        let bytes = change.path.as_os_str().len()
            + match &change.change {
                Change::Renamed(to) => to.as_os_str().len(),
                _ => 0,
            };
        if self.changes.len() >= MAX_PENDING || self.bytes + bytes > MAX_PENDING_BYTES {
            self.changes = Vec::new();
            self.latest = HashMap::new();
            self.bytes = 0;
            self.rescan = true;
            self.changes.push(FileChange { change: Change::Rescan, path: PathBuf::new(), dir: true });
            return;
        }
        self.bytes += bytes;
        self.latest.insert(change.path.clone(), self.changes.len());
        self.changes.push(change);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Takes the batch, leaving an empty one.
    pub fn take(&mut self) -> Vec<FileChange> {
        // A new map, not a cleared one: a burst's capacity is given back.
        self.latest = HashMap::new();
        self.bytes = 0;
        self.rescan = false;
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(change: Change, path: &str) -> FileChange {
        FileChange { change, path: path.into(), dir: false }
    }

    #[test]
    fn repeats_are_sent_once_and_order_is_kept() {
        let mut pending = Pending::default();
        for c in [
            change(Change::Created, "a"),
            change(Change::Modified, "a"),
            change(Change::Modified, "a"),
            change(Change::Closed, "a"),
            change(Change::Modified, "b"),
            change(Change::Modified, "b"),
            change(Change::Deleted, "b"),
            change(Change::Created, "b"),
            change(Change::Modified, "b"),
        ] {
            pending.push(c);
        }
        assert_eq!(
            pending.take(),
            [
                change(Change::Created, "a"),
                change(Change::Closed, "a"),
                change(Change::Modified, "b"),
                change(Change::Deleted, "b"),
                change(Change::Created, "b"),
            ]
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn a_flood_becomes_one_rescan() {
        let mut pending = Pending::default();
        for i in 0..MAX_PENDING + 10 {
            pending.push(change(Change::Created, &format!("f{i}")));
        }
        assert_eq!(pending.take(), [FileChange { change: Change::Rescan, path: "".into(), dir: true }]);
        pending.push(change(Change::Created, "after"));
        assert_eq!(pending.take(), [change(Change::Created, "after")]);
    }

    /// Long paths count by their length: a guest's deep tree cannot hold much memory.
    #[test]
    fn long_paths_become_a_rescan_sooner() {
        let mut pending = Pending::default();
        let long = "d/".repeat(2000);
        for i in 0..MAX_PENDING_BYTES / long.len() + 1 {
            pending.push(change(Change::Created, &format!("{long}{i}")));
        }
        assert_eq!(pending.take(), [FileChange { change: Change::Rescan, path: "".into(), dir: true }]);
    }
}
