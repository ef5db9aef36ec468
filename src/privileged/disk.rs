//! The privileged half of a VM's files disk (`state::disk`): making its image, mounting
//! it on the VM's `files/`, unmounting it, deleting it. Root does this in-process; a
//! member's `mvm` asks the helper (`disk-up`, `disk-down`, `disk-rm`), which has checked
//! the VM is theirs.
//!
//! What a member could plant is never followed: the image lives in `.disks/`, root's own
//! directory (mode 0711, so an owner may look up their image's size but list nothing),
//! under a name of the VM, its owner's uid and its creation time, so no one's VM gets
//! another's image. The mount point is opened beneath the state root without following
//! a symlink and must be a directory of the owner's, and the mount goes onto that very
//! directory (`/proc/self/fd`), never onto a path looked up again. The mount is `nosuid`,
//! `nodev` and `noexec`: nothing a guest wrote there has any privilege on the host. A
//! disk is recognised as mounted by the loop device's backing file (device and inode),
//! never by a path, and nothing else mounted there is ever taken down.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode};

use crate::config::vm::VmConfig;
use crate::error::UserError;
use crate::state::disk::{self, FILES_DIR};
use crate::state::lock::FileLock;
use crate::state::Paths;

/// Makes VM `vm`'s files disk when it has none (a sparse ext4 image of
/// `state::disk::files_mib`, its root the VM owner's, `owner`: uid, gid) and mounts it
/// on the VM's `files/` unless it is mounted there already. `mkfs` formats it.
pub fn up(paths: &Paths, vm: &VmConfig, owner: (u32, u32), mkfs: &Path) -> anyhow::Result<()> {
    let state = open_dir(None, &paths.state_dir)?;
    let disks = disks_dir(&state, &paths.state_dir)?;
    let _lock = FileLock::exclusive(&paths.state_dir.join(disk::DISKS_DIR).join(".lock"))?;
    let (vm_dir, files) = mount_point(&state, vm, owner.0)?;
    let name = disk::image_name(vm, owner.0);
    let image = match open_image(&disks, &name)? {
        Some(image) => image,
        None => make_image(&disks, &paths.state_dir.join(disk::DISKS_DIR), &name, vm, owner, mkfs)?,
    };
    if mounted_disk(&vm_dir, &files, &image)? {
        return Ok(());
    }
    let loop_device = crate::host::loopdev::attach(image.as_fd())?;
    use nix::mount::MsFlags;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some(&loop_device.path),
        &fd_path(&files),
        Some("ext4"),
        flags,
        Some("discard,errors=remount-ro"),
    )
    .with_context(|| format!("cannot mount VM '{}''s disk ({})", vm.name, loop_device.path.display()))?;
    Ok(())
}

/// Unmounts VM `vm`'s files disk when it is mounted (at every stop) and, with `delete`,
/// deletes its image (`rm`). Whatever else is mounted on `files/` is refused, not taken
/// down.
pub fn down(paths: &Paths, vm: &VmConfig, owner: (u32, u32), delete: bool) -> anyhow::Result<()> {
    let state = open_dir(None, &paths.state_dir)?;
    let Ok(disks) = disks_dir_existing(&state) else { return Ok(()) };
    let _lock = FileLock::exclusive(&paths.state_dir.join(disk::DISKS_DIR).join(".lock"))?;
    let name = disk::image_name(vm, owner.0);
    let image = open_image(&disks, &name)?;
    if let (Some(image), Ok((vm_dir, _))) = (&image, mount_point(&state, vm, owner.0)) {
        // A disk mounted twice (never by mvm, but) comes down whole.
        for _ in 0..8 {
            let files = reopen(&vm_dir)?;
            if !mounted_disk(&vm_dir, &files, image)? {
                break;
            }
            nix::mount::umount2(&fd_path(&files), nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("cannot unmount VM '{}''s disk", vm.name))?;
        }
    }
    if image.is_some() && delete {
        nix::unistd::unlinkat(&disks, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
            .with_context(|| format!("cannot delete VM '{}''s disk", vm.name))?;
    }
    Ok(())
}

/// `dir` opened as a directory without following a symlink at its last component
/// (beneath `parent` when given).
fn open_dir(parent: Option<&OwnedFd>, dir: &Path) -> anyhow::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let fd = match parent {
        Some(parent) => openat(parent, dir, flags, Mode::empty()),
        None => openat(nix::fcntl::AT_FDCWD, dir, flags, Mode::empty()),
    };
    fd.with_context(|| format!("cannot open {}", dir.display()))
}

/// Root's `.disks/` under the state root, made when missing; anything but a directory of
/// this process's user (root) there is refused.
fn disks_dir(state: &OwnedFd, state_dir: &Path) -> anyhow::Result<OwnedFd> {
    match nix::sys::stat::mkdirat(state, disk::DISKS_DIR, Mode::from_bits_truncate(0o711)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot create {}", state_dir.join(disk::DISKS_DIR).display()))
        }
    }
    disks_dir_existing(state)
}

fn disks_dir_existing(state: &OwnedFd) -> anyhow::Result<OwnedFd> {
    let disks = open_dir(Some(state), Path::new(disk::DISKS_DIR))?;
    let meta = fstat(&disks)?;
    if meta.st_uid != nix::unistd::geteuid().as_raw() {
        bail!("{} is not root's: refusing to keep disks in it", disk::DISKS_DIR);
    }
    // Searchable (an owner reads their image's size), never listable or writable.
    nix::sys::stat::fchmod(&disks, Mode::from_bits_truncate(0o711))?;
    Ok(disks)
}

/// The VM's directory and its `files/`, both opened without following a symlink and both
/// the owner's.
fn mount_point(state: &OwnedFd, vm: &VmConfig, owner: u32) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let vm_dir = open_dir(Some(state), Path::new(vm.name.as_str()))?;
    let files = reopen(&vm_dir)?;
    for (what, fd) in [("directory", &vm_dir), ("files/", &files)] {
        let uid = fstat(fd)?.st_uid;
        if uid != owner {
            return Err(UserError::conflict(format!(
                "VM '{}''s {what} belongs to uid {uid}, not its owner (uid {owner})",
                vm.name
            ))
            .into());
        }
    }
    Ok((vm_dir, files))
}

fn reopen(vm_dir: &OwnedFd) -> anyhow::Result<OwnedFd> {
    open_dir(Some(vm_dir), Path::new(FILES_DIR))
}

/// The image `name` in `disks`, when there is one: a regular file of root's (a directory
/// only root writes).
fn open_image(disks: &OwnedFd, name: &str) -> anyhow::Result<Option<std::fs::File>> {
    let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(disks, name, flags, Mode::empty()) {
        Ok(fd) => {
            let file = std::fs::File::from(fd);
            let meta = file.metadata()?;
            if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
                bail!("{name} in {} is not a disk of mvm's", disk::DISKS_DIR);
            }
            Ok(Some(file))
        }
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot open disk {name}")),
    }
}

/// Makes the image: sparse, formatted beside its name, renamed into place when whole.
fn make_image(
    disks: &OwnedFd,
    disks_path: &Path,
    name: &str,
    vm: &VmConfig,
    (uid, gid): (u32, u32),
    mkfs: &Path,
) -> anyhow::Result<std::fs::File> {
    let staging = format!("{name}.new");
    let _ = nix::unistd::unlinkat(disks, staging.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let fd = openat(
        disks,
        staging.as_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .with_context(|| format!("cannot create a disk in {}", disks_path.display()))?;
    let file = std::fs::File::from(fd);
    file.set_len(disk::files_mib(vm) << 20)?;
    let made = (|| -> anyhow::Result<()> {
        let owner = format!("{uid}:{gid}");
        let output = std::process::Command::new(mkfs)
            .args(crate::state::system_disk::format_args_for(disk::FILES_LABEL, &owner))
            .arg(disks_path.join(&staging))
            .output()
            .with_context(|| format!("cannot run {}", mkfs.display()))?;
        if !output.status.success() {
            bail!(
                "cannot format VM '{}''s disk: {}",
                vm.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        nix::fcntl::renameat(disks, staging.as_str(), disks, name)?;
        Ok(())
    })();
    if let Err(error) = made {
        let _ = nix::unistd::unlinkat(disks, staging.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(error);
    }
    Ok(file)
}

/// Whether `files` is the root of a mount of `image` (through a loop device); a mount of
/// anything else there is refused.
fn mounted_disk(vm_dir: &OwnedFd, files: &OwnedFd, image: &std::fs::File) -> anyhow::Result<bool> {
    let (here, parent) = (fstat(files)?, fstat(vm_dir)?);
    if here.st_dev == parent.st_dev {
        return Ok(false);
    }
    let image = image.metadata()?;
    // ext4's root directory is inode 2.
    let ours = here.st_ino == 2
        && crate::host::loopdev::backing_file(here.st_dev)?
            .is_some_and(|file| file == (image.dev(), image.ino()));
    if !ours {
        return Err(UserError::conflict(format!("something else is mounted on the VM's {FILES_DIR}/"))
            .hint("unmount it (`findmnt` names it), then try again")
            .into());
    }
    Ok(true)
}

/// The path that names exactly the directory `fd` is open on.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests;
