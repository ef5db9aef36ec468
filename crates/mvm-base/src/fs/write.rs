//! Writes beneath a [`Tree`]: directories made one component at a time, files written
//! through descriptors mvm opened itself (a temp file renamed into place), symlinks made
//! as symlinks, removals that never cross one. Each takes the owner its caller decided,
//! never one copied from the guest.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::{errno, open_beneath, Kind, Tree};

/// The owner mvm gives what it writes: `None` keeps the writer's (root's).
pub type Owner = Option<(u32, u32)>;

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

    /// Replaces file `relative` with a copy of `source`, written to a temp file beside it
    /// (created here, never reused) and renamed over it. The parent must exist. Holes stay
    /// holes: a guest's sparse exabyte file costs no disk and no time.
    pub fn write_file(&self, relative: &Path, source: &File, mode: u32, owner: Owner) -> io::Result<()> {
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
            copy_sparse(source, &File::from(fd.try_clone()?))?;
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
    /// Directories are emptied by descriptor, one level open at a time, so no depth a
    /// guest builds (past `PATH_MAX`, past the limit on open files) stops a removal.
    pub fn remove(&self, relative: &Path) -> io::Result<()> {
        let Some(meta) = self.metadata(relative)? else { return Ok(()) };
        let (parent, name) = split(relative)?;
        let dir = self.parent_fd(parent)?;
        let flag = if Kind::of(&meta) == Kind::Dir {
            empty_tree(&dir, name).map_err(|error| self.context(relative, error))?;
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        match unlinkat(dir.as_fd(), name, flag) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(error) => Err(self.context(relative, errno(error))),
        }
    }

    /// Sets extended attribute `name` of directory `relative` to `value`.
    pub fn set_dir_xattr(&self, relative: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.open_raw(relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let name = std::ffi::CString::new(name)?;
        // SAFETY: the descriptor is open, the name NUL-terminated, and the value's length
        // is passed with it.
        let set = unsafe {
            nix::libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        };
        if set < 0 {
            return Err(self.context(relative, io::Error::last_os_error()));
        }
        Ok(())
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

/// Copies `source` into the empty `target`, data segment by data segment.
fn copy_sparse(source: &File, target: &File) -> io::Result<()> {
    use nix::unistd::{lseek, Whence};
    let len = source.metadata()?.len();
    let mut offset = 0u64;
    while offset < len {
        let data = match lseek(source.as_fd(), offset as i64, Whence::SeekData) {
            Ok(data) => data as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(error) => return Err(errno(error)),
        };
        let hole = lseek(source.as_fd(), data as i64, Whence::SeekHole).map_or(len, |hole| hole as u64);
        let (mut from, mut to) = (source, target);
        from.seek(SeekFrom::Start(data))?;
        to.seek(SeekFrom::Start(data))?;
        io::copy(&mut from.take(hole - data), &mut to)?;
        offset = hole;
    }
    target.set_len(len)
}

/// Opens directory `name` of `dir` for listing, never through a symlink. A directory of
/// this user's that even they may not read (overlayfs leaves its work dir mode 000) is
/// made readable first, by descriptor.
fn open_dir(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Err(nix::errno::Errno::EACCES) => {
            let path_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let held = openat(dir.as_fd(), name, path_flags, Mode::empty()).map_err(errno)?;
            let stat = nix::sys::stat::fstat(held.as_fd()).map_err(errno)?;
            if stat.st_uid != nix::unistd::geteuid().as_raw() {
                return Err(errno(nix::errno::Errno::EACCES));
            }
            let by_descriptor = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&held));
            std::fs::set_permissions(by_descriptor, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            // Through the descriptor held, not the name: the same directory, whatever
            // was renamed meanwhile.
            openat(held.as_fd(), ".", flags & !OFlag::O_NOFOLLOW, Mode::empty()).map_err(errno)
        }
        opened => opened.map_err(errno),
    }
}

/// The (device, inode) of what `fd` is open on.
fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let stat = nix::sys::stat::fstat(fd.as_fd()).map_err(errno)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Removes everything inside directory `name` of `parent`. Goes down into the first
/// subdirectory left, back up through `..` once it is empty (checking `..` is the
/// directory it came from), so only one level is open and only names are kept.
fn empty_tree(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    // The directories above the current one: their names and identities.
    let mut above: Vec<(std::ffi::OsString, (u64, u64))> = Vec::new();
    let mut current = open_dir(parent, name)?;
    let mut current_name = name.to_os_string();
    // Never into another file system or mount: what is mounted there is not the tree's.
    let (top_device, top_mount) = (identity(&current)?.0, super::mount_id(current.as_fd()));
    loop {
        let mut subdirectory = None;
        // A fresh open each time: a listing's position must start at the beginning.
        let mut listing = nix::dir::Dir::from_fd(open_dir(&current, OsStr::new("."))?).map_err(errno)?;
        for entry in listing.iter() {
            let entry = entry.map_err(errno)?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let child = OsStr::from_bytes(bytes).to_os_string();
            match unlinkat(current.as_fd(), child.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(nix::errno::Errno::EISDIR) => {
                    subdirectory = Some(child);
                    break;
                }
                Err(error) => return Err(errno(error)),
            }
        }
        drop(listing);
        if let Some(child) = subdirectory {
            let next = open_dir(&current, &child)?;
            if identity(&next)?.0 != top_device || super::mount_id(next.as_fd()) != top_mount {
                return Err(io::Error::other(format!("{} is a mount point", child.to_string_lossy())));
            }
            above.push((std::mem::replace(&mut current_name, child), identity(&current)?));
            current = next;
            continue;
        }
        // Empty: go back up, and remove it there.
        let Some((parent_name, parent_identity)) = above.pop() else { return Ok(()) };
        let up = open_dir(&current, OsStr::new(".."))?;
        if identity(&up)? != parent_identity {
            return Err(io::Error::other("a directory moved while it was being removed"));
        }
        unlinkat(up.as_fd(), current_name.as_os_str(), UnlinkatFlags::RemoveDir).map_err(errno)?;
        current = up;
        current_name = parent_name;
    }
}
