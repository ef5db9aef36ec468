//! Writes beneath a [`Tree`]: directories made one component at a time, files written
//! through descriptors mvm opened itself (a temp file renamed into place), symlinks made
//! as symlinks, removals that never cross one. Each takes the owner its caller decided,
//! never one copied from the guest.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::{errno, open_beneath, Kind, Tree};

/// The owner mvm gives what it writes: `None` keeps the writer's (root's).
pub type Owner = Option<(u32, u32)>;

/// What happened to one entry a copy was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOutcome {
    Copied,
    /// A FIFO, socket or device node: not copied.
    SkippedSpecial,
}

fn split(relative: &Path) -> io::Result<(&Path, &OsStr)> {
    match (relative.parent(), relative.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => {
            Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no entry", relative.display())))
        }
    }
}

fn chown_fd(fd: &OwnedFd, owner: Owner) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => {
            fchown(fd.as_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(errno)
        }
        None => Ok(()),
    }
}

impl Tree {
    fn parent_fd(&self, parent: &Path) -> io::Result<OwnedFd> {
        open_beneath(self.fd.as_fd(), parent, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|error| self.context(parent, error))
    }

    /// Makes directory `relative` and any missing parents, each with `mode` and `owner`;
    /// directories already there are left as they are. A symlink or file on the way is
    /// an error, never followed.
    pub fn create_dir_all(&self, relative: &Path, mode: u32, owner: Owner) -> io::Result<()> {
        let mut done = std::path::PathBuf::new();
        for name in super::checked(relative)?.iter() {
            let parent = self.parent_fd(&done)?;
            done.push(name);
            match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                Ok(()) => {
                    let made = openat(
                        parent.as_fd(),
                        name,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(errno)?;
                    chown_fd(&made, owner)?;
                    fchmod(made.as_fd(), Mode::from_bits_truncate(mode)).map_err(errno)?;
                }
                Err(nix::errno::Errno::EEXIST) => match self.metadata(&done)?.map(|meta| Kind::of(&meta)) {
                    Some(Kind::Dir) => {}
                    kind => return Err(self.wrong_kind(&done, kind.unwrap_or(Kind::Special), "a directory")),
                },
                Err(error) => return Err(self.context(&done, errno(error))),
            }
        }
        Ok(())
    }

    /// Replaces file `relative` with the bytes of `content`, written to a temp file
    /// beside it (created here, never reused) and renamed over it. The parent must exist.
    pub fn write_file(
        &self,
        relative: &Path,
        content: &mut dyn Read,
        mode: u32,
        owner: Owner,
    ) -> io::Result<()> {
        let (parent, name) = split(relative)?;
        let dir = self.parent_fd(parent)?;
        let temp = format!(".{}.mvm-{}", name.to_string_lossy(), std::process::id());
        let fd = openat(
            dir.as_fd(),
            temp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|error| self.context(&parent.join(&temp), errno(error)))?;
        let written = (|| {
            let mut file = std::fs::File::from(fd.try_clone()?);
            io::copy(content, &mut file)?;
            chown_fd(&fd, owner)?;
            fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(errno)?;
            renameat(dir.as_fd(), temp.as_str(), dir.as_fd(), name).map_err(errno)
        })();
        if written.is_err() {
            let _ = unlinkat(dir.as_fd(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written.map_err(|error| self.context(relative, error))
    }

    /// Makes `relative` a symlink to `target` (text, never resolved here).
    pub fn symlink(&self, relative: &Path, target: &Path, owner: Owner) -> io::Result<()> {
        let (parent, name) = split(relative)?;
        let dir = self.parent_fd(parent)?;
        symlinkat(target, dir.as_fd(), name).map_err(|error| self.context(relative, errno(error)))?;
        if let Some((uid, gid)) = owner {
            fchownat(
                dir.as_fd(),
                name,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(errno)?;
        }
        Ok(())
    }

    /// Removes `relative` (a directory with everything in it); nothing there is no error.
    pub fn remove(&self, relative: &Path) -> io::Result<()> {
        let Some(meta) = self.metadata(relative)? else { return Ok(()) };
        let (parent, name) = split(relative)?;
        if Kind::of(&meta) == Kind::Dir {
            for entry in self.entries(relative)? {
                self.remove(&relative.join(&entry.name))?;
            }
        }
        let dir = self.parent_fd(parent)?;
        let flag =
            if Kind::of(&meta) == Kind::Dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
        match unlinkat(dir.as_fd(), name, flag) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(error) => Err(self.context(relative, errno(error))),
        }
    }

    /// Gives `relative` (never what a symlink there points at) the owner `uid`:`gid`.
    pub fn set_owner(&self, relative: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let fd = self.open_raw(relative, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        fchownat(
            fd.as_fd(),
            "",
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|error| self.context(relative, errno(error)))
    }
}
