//! Host mounts mvm makes in a VM's runtime dir: a directory pinned by descriptor (the
//! project, a root tree), and whether a path is a mount, unmounted by path.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The id of the mount `path` (not followed if a symlink) is on.
fn mount_id(path: &Path) -> Option<u64> {
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).ok()?;
    crate::fs::mount_id(std::os::fd::AsFd::as_fd(&fd))
}

/// Whether `path` is the root of a mount: its mount differs from its parent's (a bind
/// mount of the same file system included), or, where the kernel has no mount ids, its
/// device does.
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(meta), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else { return false };
    match (mount_id(path), mount_id(parent)) {
        (Some(own), Some(above)) => own != above,
        _ => std::fs::metadata(parent).is_ok_and(|parent| parent.dev() != meta.dev()),
    }
}

/// Bind-mounts the directory `source` is open on at `at` (with what is mounted inside
/// it; nosuid, nodev, private; read-only when `read_only` or when the source is): what
/// the shares and the overlays use from then on is that directory, whatever becomes of
/// its path.
pub fn pin_directory(source: &crate::fs::Tree, at: &Path, read_only: bool) -> anyhow::Result<()> {
    use nix::sys::statvfs::{fstatvfs, FsFlags};
    use std::os::fd::{AsFd, AsRawFd};
    std::fs::create_dir_all(at).with_context(|| format!("cannot create {}", at.display()))?;
    let by_descriptor = format!("/proc/self/fd/{}", source.as_fd().as_raw_fd());
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(by_descriptor.as_str()), at, None::<&str>, bind, None::<&str>)
        .with_context(|| format!("cannot bind {} at {}", source.path().display(), at.display()))?;
    let settle = || -> anyhow::Result<()> {
        mount(None::<&str>, at, None::<&str>, MsFlags::MS_PRIVATE | MsFlags::MS_REC, None::<&str>)?;
        // A remount replaces the mount's flags: keep the source's read-only and noexec.
        let source_flags = fstatvfs(source.as_fd())?.flags();
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if read_only || source_flags.contains(FsFlags::ST_RDONLY) {
            flags |= MsFlags::MS_RDONLY;
        }
        if source_flags.contains(FsFlags::ST_NOEXEC) {
            flags |= MsFlags::MS_NOEXEC;
        }
        mount(None::<&str>, at, None::<&str>, flags, None::<&str>)?;
        Ok(())
    };
    settle().map_err(|error| {
        let _ = umount2(at, MntFlags::MNT_DETACH);
        error.context(format!("cannot set up the bind mount at {}", at.display()))
    })
}

/// Detaches the mount at `path`, if there is one.
pub fn unmount_if_mounted(path: &Path) -> anyhow::Result<()> {
    if is_mount_point(path) {
        umount2(path, MntFlags::MNT_DETACH).with_context(|| format!("cannot unmount {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project bound in the runtime dir: a mount point on the same file system is seen
    /// as one (so nothing deletes through it), and turning the project's path into a
    /// symlink afterwards changes nothing the VM sees.
    #[test]
    fn a_pinned_directory_stays_the_one_that_was_opened() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_pinned_directory_stays_the_one_that_was_opened: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (project, elsewhere, at) =
            (dir.path().join("project"), dir.path().join("elsewhere"), dir.path().join("lower"));
        std::fs::create_dir(&project).unwrap();
        std::fs::write(project.join("mine"), "project").unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("secret"), "elsewhere").unwrap();
        let tree = crate::fs::Tree::open_exact(&project).unwrap();
        std::fs::rename(&project, dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &project).unwrap();
        assert!(crate::fs::Tree::open_exact(&project).is_err(), "a symlinked path was opened");
        pin_directory(&tree, &at, true).unwrap();
        assert!(is_mount_point(&at), "a same-file-system bind mount is not seen");
        assert_eq!(std::fs::read_to_string(at.join("mine")).unwrap(), "project");
        assert!(!at.join("secret").exists());
        assert!(std::fs::write(at.join("new"), "x").is_err(), "a read-only pin is writable");
        unmount_if_mounted(&at).unwrap();
        assert!(!is_mount_point(&at));
        assert!(dir.path().join("moved/mine").exists());
    }
}
