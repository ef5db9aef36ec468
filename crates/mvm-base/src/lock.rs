//! Locks.
//!
//! - [`FileLock`]: a blocking exclusive `flock(2)`, held around short critical sections
//!   (index allocation in `create`, lifecycle changes of one VM).
//! - [`RunLock`]: an open-file-description (OFD) write lock that a VM's supervisor holds
//!   for as long as it lives. It is the single source of truth for "running": the kernel
//!   drops it when the holder dies, however it dies, and [`RunLock::is_held`] queries it
//!   with `F_OFD_GETLK` without ever taking it, so `mvm list` cannot race a starting VM.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg};
use nix::libc;

/// An exclusive `flock` on a file, released on drop.
#[derive(Debug)]
pub struct FileLock {
    _lock: Flock<File>,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` (created if missing) is ours.
    pub fn exclusive(path: &Path) -> anyhow::Result<FileLock> {
        Self::lock(open_lock_file(path, 0o644)?, path)
    }

    /// Like [`FileLock::exclusive`] on a lock file no one else may open (a shared root's
    /// readers could otherwise hold it forever).
    pub fn exclusive_private(path: &Path) -> anyhow::Result<FileLock> {
        let file = open_lock_file(path, 0o600)?;
        if file.metadata()?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Self::lock(file, path)
    }

    fn lock(file: File, path: &Path) -> anyhow::Result<FileLock> {
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| errno)
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(FileLock { _lock: lock })
    }
}

/// Opens (or makes) the lock file `path`: never through a symlink, never a FIFO or device
/// (the roots are shared with a group, whose members can make entries there), and, for
/// root, never a file another user made.
fn open_lock_file(path: &Path, mode: u32) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    check_lock_file(&file, path)?;
    Ok(file)
}

fn check_lock_file(file: &File, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    if nix::unistd::geteuid().is_root() && meta.uid() != 0 {
        return Err(crate::error::UserError::conflict(format!(
            "{} belongs to uid {}, not root",
            path.display(),
            meta.uid()
        ))
        .hint("a user made it where root keeps a lock; remove it")
        .into());
    }
    Ok(())
}

fn whole_file_lock(lock_type: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = lock_type;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 0;
    lock
}

/// The supervisor's lifetime lock on `/run/mvm/NAME/lock`.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl RunLock {
    /// Takes the lock without waiting; `None` if another process holds it.
    pub fn try_acquire(path: &Path) -> anyhow::Result<Option<RunLock>> {
        let file = open_lock_file(path, 0o644)?;
        let lock = whole_file_lock(libc::F_WRLCK as libc::c_short);
        match fcntl(&file, FcntlArg::F_OFD_SETLK(&lock)) {
            Ok(_) => Ok(Some(RunLock { file })),
            Err(Errno::EAGAIN | Errno::EACCES) => Ok(None),
            Err(errno) => Err(errno).with_context(|| format!("cannot lock {}", path.display())),
        }
    }

    /// Whether some process holds the lock at `path` (a missing file means no).
    pub fn is_held(path: &Path) -> anyhow::Result<bool> {
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let file = match opened {
            Ok(file) if file.metadata().is_ok_and(|meta| meta.is_file()) => file,
            Ok(_) => anyhow::bail!("{} is not a regular file", path.display()),
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error).with_context(|| format!("cannot open {}", path.display())),
        };
        let mut lock = whole_file_lock(libc::F_WRLCK as libc::c_short);
        fcntl(&file, FcntlArg::F_OFD_GETLK(&mut lock))
            .with_context(|| format!("cannot query lock {}", path.display()))?;
        Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
    }

    /// The open lock file (the supervisor keeps it open; children must not inherit it).
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lock_is_seen_while_held_and_gone_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        assert!(!RunLock::is_held(&path).unwrap());
        let held = RunLock::try_acquire(&path).unwrap().expect("free lock");
        assert!(RunLock::is_held(&path).unwrap());
        assert!(RunLock::try_acquire(&path).unwrap().is_none(), "OFD locks conflict within a process too");
        drop(held);
        assert!(!RunLock::is_held(&path).unwrap());
        assert!(RunLock::try_acquire(&path).unwrap().is_some());
    }

    /// The roots are shared with a group: a lock planted as a symlink or a FIFO is never
    /// followed, opened for writing through, or waited on.
    #[test]
    fn planted_locks_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(FileLock::exclusive(&link).is_err());
        assert!(RunLock::is_held(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let fifo = dir.path().join("fifo.lock");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(FileLock::exclusive(&fifo).is_err());
        assert!(RunLock::is_held(&fifo).is_err());
        assert!(RunLock::try_acquire(&fifo).is_err());
        let private = dir.path().join("private.lock");
        std::fs::write(&private, "").unwrap();
        drop(FileLock::exclusive_private(&private).unwrap());
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn file_lock_serializes_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("create.lock");
        let counter = std::sync::Arc::new(std::sync::Mutex::new((0, 0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (path, counter) = (path.clone(), counter.clone());
                std::thread::spawn(move || {
                    let _lock = FileLock::exclusive(&path).unwrap();
                    let inside = {
                        let mut c = counter.lock().unwrap();
                        c.0 += 1;
                        c.1 = c.1.max(c.0);
                        c.0
                    };
                    assert_eq!(inside, 1);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    counter.lock().unwrap().0 -= 1;
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.lock().unwrap().1, 1);
    }
}
