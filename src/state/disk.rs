//! A VM's disk limit: one bound on everything its guest can write on the host.
//!
//! The limit (`disk` in `vm.toml`, `--disk`) is split between two sparse ext4 images, so
//! that every write past it ends in ENOSPC in the guest (never in an I/O error) and the
//! host's free space drops by at most the limit:
//!
//! - the **system disk** (`state::system_disk`): a quarter of the limit, a block device
//!   only the guest mounts (what guest root installs, an image's changes);
//! - the **files disk**: the rest, `.disks/NAME-UID.img` under the state root,
//!   mounted by root (mvm, or the helper for a member: `privileged::disk`) on the VM's
//!   `files/` — `nosuid`, `nodev`, `noexec`, `discard` — and holding every tree a virtiofsd
//!   writes: `etc`, `var`, the project's layers, a root tree's upper layer, volumes.
//!   The host reaches them there through `fs` as before (`diff`, `apply`, logs).
//!
//! The files disk is mounted while the VM runs (its supervisor mounts it at each boot and
//! unmounts it at the end), and for as long as a command reads a stopped VM's files
//! (`vm::files`); a stopped VM holds no mount.
//! Trees a VM kept beside its record before it had a disk (or that `create` brought back
//! from kept volumes) move onto the disk at its next start ([`TREES`]).

use std::path::{Path, PathBuf};

use crate::config::host::DEFAULT_DISK_MIB;
use crate::config::vm::VmConfig;
use crate::state::Paths;

/// Root's directory of files disks, under the state root.
pub const DISKS_DIR: &str = ".disks";
/// Where a VM's files disk is mounted, in its state dir.
pub const FILES_DIR: &str = "files";
/// The files disk's ext4 label.
pub const FILES_LABEL: &str = "mvm-files";
/// The trees a VM's guest writes through virtiofsd: on the files disk, and moved there
/// from the VM's directory when found beside its record.
pub const TREES: &[&str] = &["etc", "var", "volumes", "layer", "root", "upper", "work"];

/// The limit of `vm` in MiB (the default for a VM made before limits).
pub fn limit_mib(vm: &VmConfig) -> u64 {
    vm.disk_mib.unwrap_or(DEFAULT_DISK_MIB)
}

/// The system disk's share of `vm`'s limit: a quarter.
pub fn system_mib(vm: &VmConfig) -> u64 {
    limit_mib(vm) / 4
}

/// The files disk's share of `vm`'s limit: the rest.
pub fn files_mib(vm: &VmConfig) -> u64 {
    limit_mib(vm) - system_mib(vm)
}

/// Where the files disk of the VM whose state dir is `vm_dir` is mounted.
pub fn files_dir(vm_dir: &Path) -> PathBuf {
    vm_dir.join(FILES_DIR)
}

/// The file name of `vm`'s files disk, owned by `owner` (uid): no VM of another user has
/// it. Nothing in it comes from the owner's record but the VM's name, so an owner cannot
/// make disks the helper would not find again (`rm` deletes it).
pub fn image_name(vm: &VmConfig, owner: u32) -> String {
    format!("{}-{owner}.img", vm.name)
}

/// The lock held around any change to the image `image_name` (in [`DISKS_DIR`]).
pub fn lock_name(image_name: &str) -> String {
    format!("{}.lock", image_name.trim_end_matches(".img"))
}

/// The path of `vm`'s files disk.
pub fn image_path(paths: &Paths, vm: &VmConfig, owner: u32) -> PathBuf {
    paths.state_dir.join(DISKS_DIR).join(image_name(vm, owner))
}

/// What `vm` takes on the host now and may take at most, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub limit_bytes: u64,
}

/// The path of `vm`'s files disk, for the owner of its directory.
fn owners_image_path(paths: &Paths, vm: &VmConfig) -> PathBuf {
    image_path(paths, vm, crate::state::store::owner(paths, &vm.name).unwrap_or(u32::MAX))
}

/// What `vm` takes on the host: the blocks its two disks hold.
pub fn usage(paths: &Paths, vm: &VmConfig) -> Usage {
    let allocated = |path: &Path| crate::state::system_disk::allocated_bytes_of(path).unwrap_or(0);
    let system = allocated(&crate::state::system_disk::path(&paths.vm_dir(&vm.name)));
    Usage { used_bytes: system + allocated(&owners_image_path(paths, vm)), limit_bytes: limit_mib(vm) << 20 }
}

/// Whether `vm`'s files disk exists (it is made at the VM's first start).
pub fn image_exists(paths: &Paths, vm: &VmConfig) -> bool {
    std::fs::symlink_metadata(owners_image_path(paths, vm)).is_ok()
}

/// Whether `vm_dir`'s `files/` has a file system of its own mounted on it.
pub fn is_mounted(vm_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |path: &Path| std::fs::symlink_metadata(path).map(|meta| meta.dev());
    matches!((dev(vm_dir), dev(&files_dir(vm_dir))), (Ok(parent), Ok(files)) if parent != files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_a_quarter_to_the_system_disk() {
        let mut vm = crate::config::vm::tests::sample();
        vm.disk_mib = Some(8192);
        assert_eq!((system_mib(&vm), files_mib(&vm), limit_mib(&vm)), (2048, 6144, 8192));
        vm.disk_mib = None;
        assert_eq!(limit_mib(&vm), DEFAULT_DISK_MIB);
        assert_eq!(system_mib(&vm) + files_mib(&vm), DEFAULT_DISK_MIB);
    }

    #[test]
    fn an_image_is_named_for_its_vm_and_owner_alone() {
        let vm = crate::config::vm::tests::sample();
        assert_eq!(image_name(&vm, 1000), "web-1000.img");
        assert_eq!(lock_name(&image_name(&vm, 1000)), "web-1000.lock");
        // A record's other fields (its birth, its size) name no other disk.
        let edited = VmConfig { created_at: vm.created_at + 1, disk_mib: Some(1 << 20), ..vm.clone() };
        assert_eq!(image_name(&edited, 1000), image_name(&vm, 1000));
        assert_ne!(image_name(&vm, 1001), image_name(&vm, 1000));
    }
}
