//! The privileged half of a VM's files disk: making its image, mounting it on the VM's
//! `files/`, unmounting it, deleting it (its names and sizes are `layout`'s; `mvm` reports
//! its use in `state::disk`). Root does this in-process; a member's `mvm` asks the helper
//! (`disk-up`, `disk-down`, `disk-rm`), which has checked the VM is theirs.
//!
//! What a member could plant is never followed: the image lives in `.disks/`, root's own
//! directory (mode 0711, so an owner may look up their image's size but list nothing),
//! under a name of the VM and its owner's uid, so no one's VM gets another's image (and
//! no edit of a record makes disks `rm` would not find again); a lock of root's alone per
//! image serialises the changes to it. The mount point is opened beneath the state root
//! without following a symlink and must be a directory of the owner's, and the mount goes
//! onto that very directory (`/proc/self/fd`), never onto a path looked up again. The
//! mount is `nosuid`, `nodev` and `noexec`: nothing a guest wrote there has any privilege on the host. A
//! disk is recognised as mounted by the loop device's backing file (device and inode),
//! never by a path, and nothing else mounted there is ever taken down. An image is never
//! attached twice (two ext4 instances on one file would corrupt it under the host's
//! kernel): one still attached (a mount a process's namespace keeps) is refused, and a
//! disk is unmounted only when nothing uses it, never lazily.

pub mod layout;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode};

use mvm_base::error::UserError;
use mvm_base::lock::FileLock;

use crate::record::VmRecord;
use crate::roots::Roots;

use layout::FILES_DIR;

/// Makes VM `vm`'s files disk when it has none (a sparse ext4 image of
/// `layout::files_mib`, its root the VM owner's, `owner`: uid, gid) and mounts it
/// on the VM's `files/` unless it is mounted there already. `mkfs` formats it.
pub fn up(paths: &Roots, vm: &VmRecord, owner: (u32, u32), mkfs: &Path) -> anyhow::Result<()> {
    // The record is the owner's to write: its size is checked again here.
    let limit = layout::limit_mib(vm.disk_mib);
    layout::check_limit(limit, &format!("{limit}M"))
        .with_context(|| format!("VM '{}''s vm.toml names a disk limit out of bounds", vm.name))?;
    let state = open_dir(None, &paths.state_dir)?;
    let disks = disks_dir(&state, &paths.state_dir)?;
    let disks_path = paths.state_dir.join(layout::DISKS_DIR);
    let name = layout::image_name(&vm.name, owner.0);
    let _lock = lock(paths, &name)?;
    let (vm_dir, files) = mount_point(&state, vm, owner.0)?;
    let image = match open_image(&disks, &name)? {
        Some(image) => image,
        None => make_image(&disks, &disks_path, &name, vm, owner, mkfs)?,
    };
    if mounted_disk(&vm_dir, &files, &image)? {
        return Ok(());
    }
    // Never a second file system instance on the same image (two would corrupt it, under
    // the host's kernel): one a mount elsewhere still holds (a process's namespace, a
    // moved directory) is waited for a moment, then refused.
    if let Some(device) = still_attached(&image)? {
        return Err(UserError::conflict(format!(
            "VM '{}''s disk is still in use ({} holds it)",
            vm.name,
            device.display()
        ))
        .hint("end the processes that keep it (`findmnt`, `fuser -m`), then try again")
        .into());
    }
    grow(&disks_path.join(&name), &image, vm, mkfs)?;
    let loop_device = crate::loopdev::attach(image.as_fd())?;
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

/// Grows the unmounted, unattached disk `image` (at `path`, in root's directory) to the
/// VM's share of its limit when the limit was raised; a lowered limit leaves it as it is.
/// Offline, since growing a mounted ext4 needs `CAP_SYS_RESOURCE`, which not every root
/// has (containers): checked by `e2fsck`, then grown by `resize2fs`, both e2fsprogs'.
fn grow(path: &Path, image: &std::fs::File, vm: &VmRecord, mkfs: &Path) -> anyhow::Result<()> {
    let wanted = layout::files_mib(vm.disk_mib) << 20;
    if image.metadata()?.len() >= wanted {
        return Ok(());
    }
    let run = |program: &str, args: &[&str]| -> anyhow::Result<std::process::Output> {
        let program = mkfs.with_file_name(program);
        std::process::Command::new(&program)
            .args(args)
            .arg(path)
            .output()
            .with_context(|| format!("cannot run {}", program.display()))
    };
    // e2fsck: 0 clean, 1 errors fixed.
    let checked = run("e2fsck", &["-f", "-p"])?;
    if !matches!(checked.status.code(), Some(0 | 1)) {
        bail!("VM '{}''s disk needs repair: {}", vm.name, String::from_utf8_lossy(&checked.stdout).trim());
    }
    image.set_len(wanted)?;
    let grown = run("resize2fs", &[])?;
    if !grown.status.success() {
        bail!("cannot grow VM '{}''s disk: {}", vm.name, String::from_utf8_lossy(&grown.stderr).trim());
    }
    Ok(())
}

/// Unmounts VM `vm`'s files disk when it is mounted (at every stop) and, with `delete`,
/// deletes its image (`rm`). Whatever else is mounted on `files/` is refused, not taken
/// down.
pub fn down(paths: &Roots, vm: &VmRecord, owner: (u32, u32), delete: bool) -> anyhow::Result<()> {
    let state = open_dir(None, &paths.state_dir)?;
    let Ok(disks) = disks_dir_existing(&state) else { return Ok(()) };
    let name = layout::image_name(&vm.name, owner.0);
    let _lock = lock(paths, &name)?;
    let image = open_image(&disks, &name)?;
    // Only the VM directory is kept open: a descriptor on the disk would keep it busy.
    let vm_dir = mount_point(&state, vm, owner.0).map(|(vm_dir, _files)| vm_dir);
    if let (Some(image), Ok(vm_dir)) = (&image, vm_dir) {
        // A disk mounted twice (never by mvm, but) comes down whole.
        for _ in 0..8 {
            let files = reopen(&vm_dir)?;
            if !mounted_disk(&vm_dir, &files, image)? {
                break;
            }
            // Not lazily: a disk something still uses stays mounted (and is reused), never
            // detached to live on beside a new mount of it. So no descriptor of ours may be
            // on it: `files` is named beneath the VM directory opened above (a magic link to
            // that very directory), its last component never followed. Swapped meanwhile,
            // it could only name another mount in the owner's own directory.
            drop(files);
            let at = fd_path(&vm_dir).join(FILES_DIR);
            match nix::mount::umount2(&at, nix::mount::MntFlags::UMOUNT_NOFOLLOW) {
                Err(nix::errno::Errno::EBUSY) => {
                    return Err(UserError::conflict(format!(
                        "VM '{}''s disk is busy: a process has files open on it",
                        vm.name
                    ))
                    .hint("end it (`fuser -vm` names it), then try again")
                    .into())
                }
                result => result.with_context(|| format!("cannot unmount VM '{}''s disk", vm.name))?,
            }
        }
    }
    if let (Some(image), true) = (&image, delete) {
        if let Some(device) = still_attached(image)? {
            return Err(UserError::conflict(format!(
                "VM '{}''s disk is still in use ({} holds it): not deleted",
                vm.name,
                device.display()
            ))
            .into());
        }
        nix::unistd::unlinkat(&disks, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
            .with_context(|| format!("cannot delete VM '{}''s disk", vm.name))?;
    }
    Ok(())
}

/// The lock of image `name`: root's alone (no member can open it and hold it), one per
/// image (a VM whose directories hang holds up no other).
fn lock(paths: &Roots, name: &str) -> anyhow::Result<FileLock> {
    FileLock::exclusive_private(&paths.state_dir.join(layout::DISKS_DIR).join(layout::lock_name(name)))
}

/// The loop device `image` is still attached to, waited for a few seconds (a loop device
/// whose last mount went is detached by the kernel a moment later).
fn still_attached(image: &std::fs::File) -> anyhow::Result<Option<PathBuf>> {
    let meta = image.metadata()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let device = crate::loopdev::attached_to((meta.dev(), meta.ino()))?;
        if device.is_none() || std::time::Instant::now() > deadline {
            return Ok(device);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
    match nix::sys::stat::mkdirat(state, layout::DISKS_DIR, Mode::from_bits_truncate(0o711)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot create {}", state_dir.join(layout::DISKS_DIR).display()))
        }
    }
    disks_dir_existing(state)
}

fn disks_dir_existing(state: &OwnedFd) -> anyhow::Result<OwnedFd> {
    let disks = open_dir(Some(state), Path::new(layout::DISKS_DIR))?;
    let meta = fstat(&disks)?;
    if meta.st_uid != nix::unistd::geteuid().as_raw() {
        bail!("{} is not root's: refusing to keep disks in it", layout::DISKS_DIR);
    }
    // Searchable (an owner reads their image's size), never listable or writable.
    nix::sys::stat::fchmod(&disks, Mode::from_bits_truncate(0o711))?;
    Ok(disks)
}

/// The VM's directory and its `files/`, both opened without following a symlink and both
/// the owner's.
fn mount_point(state: &OwnedFd, vm: &VmRecord, owner: u32) -> anyhow::Result<(OwnedFd, OwnedFd)> {
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
                bail!("{name} in {} is not a disk of mvm's", layout::DISKS_DIR);
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
    vm: &VmRecord,
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
    file.set_len(layout::files_mib(vm.disk_mib) << 20)?;
    let made = (|| -> anyhow::Result<()> {
        let owner = format!("{uid}:{gid}");
        let output = std::process::Command::new(mkfs)
            .args(layout::format_args_for(layout::FILES_LABEL, &owner))
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
        && crate::loopdev::backing_file(here.st_dev)?.is_some_and(|file| file == (image.dev(), image.ino()));
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
