//! The VM's system layer: what guest root installs (apt, dpkg, `npm -g`, `/usr/local`,
//! `/opt`) lives on a disk of the VM's own, `system.img` in its state dir, above the
//! shared read-only base.
//!
//! The disk is a sparse raw file formatted ext4 by the host's `mkfs.ext4` (as whoever
//! runs the VM, with a root-owned file system root), handed to the guest as a virtio-blk
//! device with the serial [`SERIAL`]. The guest mounts it and stacks overlays on it
//! (`guest::init`). Host-side mvm never mounts it nor reads a byte of it: what the guest
//! writes there (setuid files, devices, any owner) exists only inside the image, so it
//! carries no host privilege, and the image's size on the host is bounded by its size.
//! A disk is made beside its final name and renamed into place, so a start that dies
//! half-way leaves either no disk or a whole one.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::contract::config::SYSTEM_DISK_SERIAL;
use mvm_privileged::disk::layout::format_args_for;

/// The system disk's file in a VM's state dir.
pub const FILE: &str = "system.img";
/// The system disk of the VM whose state dir is `vm_dir`.
pub fn path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(FILE)
}

/// Makes the VM's system disk with `mkfs` when it has none, or anew when `fresh` (an
/// ephemeral system layer); says whether it made one.
pub fn ensure(vm_dir: &Path, size_mib: u64, fresh: bool, mkfs: &Path) -> anyhow::Result<bool> {
    let disk = path(vm_dir);
    if !fresh && std::fs::symlink_metadata(&disk).is_ok_and(|meta| meta.is_file()) {
        return Ok(false);
    }
    let staging = vm_dir.join(format!("{FILE}.new"));
    let _ = std::fs::remove_file(&staging);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    file.set_len(size_mib << 20).with_context(|| format!("cannot size {}", staging.display()))?;
    drop(file);
    let output = Command::new(mkfs)
        .args(format_args_for(SYSTEM_DISK_SERIAL, "0:0"))
        .arg(&staging)
        .output()
        .with_context(|| format!("cannot run {}", mkfs.display()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&staging);
        bail!(
            "{} could not format the system disk: {}",
            mkfs.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    std::fs::rename(&staging, &disk)
        .with_context(|| format!("cannot move the new disk to {}", disk.display()))?;
    Ok(true)
}

/// What the system disk takes on the host (its allocated blocks), when it exists; a
/// disk replaced by anything but a regular file counts as none.
pub fn allocated_bytes(vm_dir: &Path) -> Option<u64> {
    allocated_bytes_of(&path(vm_dir))
}

/// What the regular file `file` takes on disk (not following a symlink).
pub fn allocated_bytes_of(file: &Path) -> Option<u64> {
    std::fs::symlink_metadata(file).ok().filter(|meta| meta.is_file()).map(|meta| meta.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfs() -> Option<PathBuf> {
        let found = crate::host::binaries::Tool::MkfsExt4.find(&Default::default()).ok();
        if found.is_none() {
            eprintln!("SKIP system disk tests: no mkfs.ext4 (apt-get install e2fsprogs)");
        }
        found
    }

    #[test]
    fn a_new_disk_is_sparse_private_ext4_and_kept_unless_fresh() {
        let Some(mkfs) = mkfs() else { return };
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(allocated_bytes(dir.path()), None);
        assert!(ensure(dir.path(), 1024, false, &mkfs).unwrap());
        let meta = std::fs::metadata(path(dir.path())).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert_eq!(meta.mode() & 0o777, 0o600);
        let used = allocated_bytes(dir.path()).unwrap();
        assert!(used < 16 << 20, "a new 1 GiB disk takes {used} bytes");
        // ext4's superblock magic, 0xEF53 at byte 1080.
        let bytes = std::fs::read(path(dir.path())).unwrap();
        assert_eq!(&bytes[1080..1082], &[0x53, 0xEF]);
        assert!(!dir.path().join(format!("{FILE}.new")).exists());

        // Kept as it is on the next start; made anew when fresh.
        std::fs::write(dir.path().join("marker"), "").unwrap();
        let inode = meta.ino();
        assert!(!ensure(dir.path(), 1024, false, &mkfs).unwrap());
        assert_eq!(std::fs::metadata(path(dir.path())).unwrap().ino(), inode);
        assert!(ensure(dir.path(), 1024, true, &mkfs).unwrap());
        assert_ne!(std::fs::metadata(path(dir.path())).unwrap().ino(), inode);
    }

    #[test]
    fn a_failed_format_leaves_no_disk_behind() {
        let dir = tempfile::tempdir().unwrap();
        let error = ensure(dir.path(), 1024, false, Path::new("/bin/false")).unwrap_err();
        assert!(format!("{error:#}").contains("could not format the system disk"), "{error:#}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "something was left");
    }

    #[test]
    fn a_disk_replaced_by_a_symlink_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![1u8; 1 << 16]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("big"), path(dir.path())).unwrap();
        assert_eq!(allocated_bytes(dir.path()), None);
    }
}
