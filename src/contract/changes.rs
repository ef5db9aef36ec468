//! Host file changes as the guest's file-event module takes them (`kmod/mvm_notify.c`):
//! the payload of a `FileChanges` frame, which the agent writes to `/dev/mvm-notify` as
//! it is. Paths are relative to the project's root.
//!
//! A record is `KIND TYPE PATH NUL`, and a rename's `'R' TYPE FROM NUL TO NUL`; TYPE is
//! `d` for a directory and `f` for anything else.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What happened to a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    Created,
    Deleted,
    /// Its content changed.
    Modified,
    /// A file open for writing was closed.
    Closed,
    /// Its mode, owner or times changed.
    Attributes,
    /// Moved to this path (relative to the root, like the source).
    Renamed(PathBuf),
    /// Anything beneath it may have changed (events were lost): the guest drops what it
    /// cached there.
    Rescan,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub change: Change,
    pub path: PathBuf,
    pub dir: bool,
}

impl FileChange {
    fn kind(&self) -> u8 {
        match self.change {
            Change::Created => b'N',
            Change::Deleted => b'D',
            Change::Modified => b'M',
            Change::Closed => b'W',
            Change::Attributes => b'A',
            Change::Renamed(_) => b'R',
            Change::Rescan => b'X',
        }
    }

    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind());
        out.push(if self.dir { b'd' } else { b'f' });
        out.extend_from_slice(self.path.as_os_str().as_bytes());
        out.push(0);
        if let Change::Renamed(to) = &self.change {
            out.extend_from_slice(to.as_os_str().as_bytes());
            out.push(0);
        }
    }
}

/// The records that name the project's root in the guest and, in overlay mode, the
/// overlay's lower layer (sent first).
pub fn root_records(root: &Path, lower: Option<&Path>) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, path) in [(b'P', Some(root)), (b'L', lower)] {
        if let Some(path) = path {
            out.extend_from_slice(&[kind, b'd']);
            out.extend_from_slice(path.as_os_str().as_bytes());
            out.push(0);
        }
    }
    out
}

/// The records in `bytes` (what a test reads back).
pub fn decode(bytes: &[u8]) -> Option<Vec<FileChange>> {
    let mut changes = Vec::new();
    let mut rest = bytes;
    let take_path = |rest: &mut &[u8]| -> Option<PathBuf> {
        let end = rest.iter().position(|&b| b == 0)?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&rest[..end]));
        *rest = &rest[end + 1..];
        Some(path)
    };
    while !rest.is_empty() {
        let (&kind, &kind_of) = (rest.first()?, rest.get(1)?);
        rest = &rest[2..];
        let path = take_path(&mut rest)?;
        let change = match kind {
            b'N' => Change::Created,
            b'D' => Change::Deleted,
            b'M' => Change::Modified,
            b'W' => Change::Closed,
            b'A' => Change::Attributes,
            b'R' => Change::Renamed(take_path(&mut rest)?),
            b'X' => Change::Rescan,
            _ => return None,
        };
        changes.push(FileChange { change, path, dir: kind_of == b'd' });
    }
    Some(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_what_the_module_parses() {
        let changes = vec![
            FileChange { change: Change::Created, path: "src/new.js".into(), dir: false },
            FileChange { change: Change::Renamed("b/c".into()), path: "a".into(), dir: true },
            FileChange { change: Change::Rescan, path: "".into(), dir: true },
        ];
        let mut bytes = Vec::new();
        for change in &changes {
            change.encode(&mut bytes);
        }
        assert_eq!(bytes, b"Nfsrc/new.js\0Rda\0b/c\0Xd\0");
        assert_eq!(decode(&bytes).unwrap(), changes);
        assert_eq!(root_records(Path::new("/home/u/web"), None), b"Pd/home/u/web\0");
        assert_eq!(root_records(Path::new("/w"), Some(Path::new("/l"))), b"Pd/w\0Ld/l\0");
        assert!(decode(b"Nfno-end").is_none());
    }
}
