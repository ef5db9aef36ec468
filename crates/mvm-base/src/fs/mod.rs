//! Host-side access to trees a guest can write (DESIGN §9, docs/architecture.md "Trust").
//!
//! A VM's `etc/` and `var/`, its volumes, its overlay layers, its process logs and an
//! `rw` project are written by the guest, which may be root and hostile. mvm runs as root
//! on the host, so every touch of such a tree goes through a [`Tree`]: a directory
//! descriptor under which paths are resolved with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (or a component-by-component `O_NOFOLLOW`
//! walk where the kernel lacks `openat2`). Nothing here follows a symlink, leaves the
//! tree, opens a FIFO, socket or device, or reads more than its caller's cap; files are
//! opened as `O_PATH` first and only reopened for reading once they are known to be
//! regular, so the type checked is the type read.

mod write;

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Set once `openat2` turned out to be missing (kernels before 5.6).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The cap on small records mvm reads from guest trees (process states, caches).
pub const RECORD_CAP: u64 = 1 << 20;

/// A directory whose contents are untrusted, and every path beneath it.
#[derive(Debug)]
pub struct Tree {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a path beneath a tree is, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device node: never opened.
    Special,
}

impl Kind {
    /// The kind of `meta` (from `symlink_metadata` or [`Tree::metadata`]).
    pub fn of(meta: &Metadata) -> Kind {
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            Kind::Symlink
        } else if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_file() {
            Kind::File
        } else {
            Kind::Special
        }
    }
}

/// One entry of a directory beneath a tree.
#[derive(Debug)]
pub struct Entry {
    pub name: OsString,
    pub meta: Metadata,
}

fn errno(error: Errno) -> io::Error {
    io::Error::from_raw_os_error(error as i32)
}

/// `relative` as a path that stays beneath its root: no root, no `..`.
fn checked(relative: &Path) -> io::Result<&Path> {
    if relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        Ok(relative)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} leaves the tree", relative.display())))
    }
}

/// Opens `relative` beneath `dir` with `flags`, following no symlink on the way.
fn open_beneath(dir: BorrowedFd, relative: &Path, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
    let relative = checked(relative)?;
    let relative = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
    // openat2 refuses flags O_PATH ignores, O_NOCTTY among them.
    let flags = if flags.contains(OFlag::O_PATH) {
        flags | OFlag::O_CLOEXEC
    } else {
        flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
    };
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = OpenHow::new().flags(flags).mode(mode).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        match openat2(dir, relative, how) {
            Err(Errno::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            other => return other.map_err(errno),
        }
    }
    walk_beneath(dir, relative, flags, mode)
}

/// The fallback of [`open_beneath`]: each directory opened `O_NOFOLLOW` from the last.
fn walk_beneath(dir: BorrowedFd, relative: &Path, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
    let names: Vec<&std::ffi::OsStr> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = names.split_last() else {
        return openat(dir, ".", flags, mode).map_err(errno);
    };
    let mut current: Option<OwnedFd> = None;
    for name in parents {
        let at = current.as_ref().map_or(dir, |fd| fd.as_fd());
        let next = openat(
            at,
            *name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        current = Some(next);
    }
    let at = current.as_ref().map_or(dir, |fd| fd.as_fd());
    openat(at, *last, flags | OFlag::O_NOFOLLOW, mode).map_err(errno)
}

/// Whether `path` is a directory or regular file (not a symlink) that root alone can
/// write: what a store shared with every VM (images, the guest module) must be.
pub fn roots_alone(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.is_dir() || meta.is_file()) && meta.uid() == 0 && meta.mode() & 0o022 == 0)
}

/// Whether `path` is a directory (not a symlink to one) of this process's user.
pub fn is_own_dir(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw())
}

/// The largest runtime record [`read_record`] reads.
pub const RUNTIME_RECORD_CAP: u64 = 64 * 1024;

/// The regular file `name` in the directory `dir` (itself no symlink), refused when larger
/// than [`RUNTIME_RECORD_CAP`]: for the small records kept in a VM's runtime dir, which its
/// owner could have replaced by a symlink, a FIFO or something huge.
pub fn read_record(dir: &Path, name: &str) -> io::Result<Vec<u8>> {
    Tree::open(dir)?.read(Path::new(name), RUNTIME_RECORD_CAP)
}

/// Reopens an `O_PATH` descriptor of a regular file for reading. The descriptor pins
/// the inode, so the reopened file is the one that was checked.
fn reopen_for_reading(fd: &OwnedFd) -> io::Result<File> {
    File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Tree {
    /// Opens the directory at `path` as a tree root. `path` itself is mvm's own (a
    /// VM's state dir and the names mvm gave beneath it), but its last component must
    /// not be a symlink.
    pub fn open(path: &Path) -> io::Result<Tree> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|error| {
            io::Error::new(errno(error).kind(), format!("cannot open {}: {error}", path.display()))
        })?;
        Ok(Tree { fd, path: path.to_path_buf() })
    }

    /// Opens the directory at the absolute `path` with no symlink anywhere on the way:
    /// for paths that were canonical when mvm recorded them (a project, a root tree), so
    /// that swapping a component for a symlink later cannot redirect mvm.
    pub fn open_exact(path: &Path) -> io::Result<Tree> {
        let relative = path.strip_prefix("/").map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not absolute", path.display()))
        })?;
        let mut tree = Tree::open(Path::new("/"))?.subtree(relative)?;
        tree.path = path.to_path_buf();
        Ok(tree)
    }

    /// The directory `relative` beneath this tree, as a tree of its own.
    pub fn subtree(&self, relative: &Path) -> io::Result<Tree> {
        let fd = self.open_raw(relative, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        Ok(Tree { fd, path: self.path.join(relative) })
    }

    /// The tree's path (for messages only; never opened again).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_raw(&self, relative: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        open_beneath(self.fd.as_fd(), relative, flags, Mode::empty())
            .map_err(|error| self.context(relative, error))
    }

    fn context(&self, relative: &Path, error: io::Error) -> io::Error {
        let shown = self.path.join(relative);
        match error.raw_os_error() {
            Some(code) if code == Errno::ELOOP as i32 || code == Errno::EXDEV as i32 => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} passes through a symlink, which mvm does not follow here", shown.display()),
            ),
            _ => io::Error::new(error.kind(), format!("{}: {error}", shown.display())),
        }
    }

    /// The error for `relative` being of `kind` where `wanted` was expected.
    fn wrong_kind(&self, relative: &Path, kind: Kind, wanted: &str) -> io::Error {
        let shown = self.path.join(relative);
        let what = match kind {
            Kind::Symlink => "a symlink, which mvm does not follow here".to_string(),
            Kind::Special => "a FIFO, socket or device, which mvm does not open".to_string(),
            _ => format!("not {wanted}"),
        };
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} is {what}", shown.display()))
    }

    /// `lstat` of `relative`: a symlink is reported as one, never followed. `None` when
    /// nothing is there (or a symlink stands on the way to it).
    pub fn metadata(&self, relative: &Path) -> io::Result<Option<Metadata>> {
        match self.open_raw(relative, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(fd) => File::from(fd).metadata().map(Some),
            Err(error) if is_absent(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Opens the regular file `relative` for reading; anything else is refused.
    pub fn open_file(&self, relative: &Path) -> io::Result<File> {
        let fd = self.open_raw(relative, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        let meta = File::from(fd.try_clone()?).metadata()?;
        match Kind::of(&meta) {
            Kind::File => reopen_for_reading(&fd),
            kind => Err(self.wrong_kind(relative, kind, "a regular file")),
        }
    }

    /// The whole regular file `relative`, refused when larger than `cap` bytes.
    pub fn read(&self, relative: &Path, cap: u64) -> io::Result<Vec<u8>> {
        let file = self.open_file(relative)?;
        let mut bytes = Vec::new();
        file.take(cap + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {cap} bytes", self.path.join(relative).display()),
            ));
        }
        Ok(bytes)
    }

    /// The target text of the symlink `relative` (never resolved).
    pub fn read_link(&self, relative: &Path) -> io::Result<PathBuf> {
        let fd = self.open_raw(relative, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        nix::fcntl::readlinkat(fd.as_fd(), "").map(PathBuf::from).map_err(errno)
    }

    /// The entries of directory `relative`, sorted by name, with their `lstat`s.
    pub fn entries(&self, relative: &Path) -> io::Result<Vec<Entry>> {
        let fd = self.open_raw(relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(errno)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let name = entry.map_err(errno)?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from(std::ffi::OsStr::from_bytes(&name)));
            }
        }
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            // An entry that vanished since the listing is left out.
            if let Some(meta) = self.metadata(&relative.join(&name))? {
                entries.push(Entry { name, meta });
            }
        }
        Ok(entries)
    }

    /// The names of the directories in directory `relative` (a symlink to one is not one),
    /// read from the directory's own listing: no `lstat` per entry where the file system
    /// gives each entry's type.
    pub fn subdirs(&self, relative: &Path) -> io::Result<Vec<OsString>> {
        let fd = self.open_raw(relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(errno)?;
        let (mut dirs, mut untyped) = (Vec::new(), Vec::new());
        for entry in dir.iter() {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from(std::ffi::OsStr::from_bytes(name));
            match entry.file_type() {
                Some(nix::dir::Type::Directory) => dirs.push(name),
                None => untyped.push(name),
                Some(_) => {}
            }
        }
        for name in untyped {
            if self.metadata(&relative.join(&name))?.is_some_and(|meta| meta.is_dir()) {
                dirs.push(name);
            }
        }
        Ok(dirs)
    }

    /// The value of extended attribute `name` on directory `relative` (`None` when unset).
    pub fn dir_xattr(&self, relative: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
        let fd = self.open_raw(relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let name = std::ffi::CString::new(name)?;
        let mut value = vec![0u8; 256];
        // SAFETY: the descriptor is open, the name NUL-terminated, and the buffer's
        // length is passed with it.
        let size = unsafe {
            nix::libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_mut_ptr().cast(), value.len())
        };
        if size < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(code) if code == nix::libc::ENODATA || code == nix::libc::EOPNOTSUPP => Ok(None),
                _ => Err(error),
            };
        }
        value.truncate(size as usize);
        Ok(Some(value))
    }
}

impl AsFd for Tree {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The id of the mount `fd` is on (`None` where the kernel has no mount ids).
pub fn mount_id(fd: BorrowedFd) -> Option<u64> {
    let mut buffer = std::mem::MaybeUninit::<nix::libc::statx>::zeroed();
    // SAFETY: the descriptor is open, the empty path is NUL-terminated, and the buffer
    // is a statx the kernel fills.
    let done = unsafe {
        nix::libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            nix::libc::STATX_MNT_ID,
            buffer.as_mut_ptr(),
        )
    };
    // SAFETY: zeroed before, and filled by statx when it succeeded.
    let stat = unsafe { buffer.assume_init() };
    (done == 0 && stat.stx_mask & nix::libc::STATX_MNT_ID != 0).then_some(stat.stx_mnt_id)
}

/// Whether `error` means "nothing there" (including a symlink or a non-directory on the way).
fn is_absent(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
        || error.raw_os_error() == Some(Errno::ENOTDIR as i32)
        || error.kind() == io::ErrorKind::InvalidInput
}

/// The last `cap` bytes of `file` (all of it when smaller), skipping leading holes.
pub fn read_tail(file: &mut File, cap: u64) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    let start = data_start(file, len.saturating_sub(cap))?;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The first offset at or after `from` that holds data (a log truncated under a writer
/// that does not append grows a hole before its new data).
pub fn data_start(file: &File, from: u64) -> io::Result<u64> {
    match nix::unistd::lseek(file.as_fd(), from as i64, nix::unistd::Whence::SeekData) {
        Ok(offset) => Ok(offset as u64),
        // ENXIO: no data after `from` (all hole, or at the end).
        Err(Errno::ENXIO) => Ok(file.metadata()?.len()),
        Err(_) => Ok(from),
    }
}

#[cfg(test)]
mod tests;
