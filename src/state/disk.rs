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

use std::path::Path;

pub use mvm_privileged::disk::layout::{
    files_dir, files_mib, image_name, image_path, is_mounted, limit_mib, lock_name, system_mib, DISKS_DIR,
    FILES_DIR, FILES_LABEL,
};

use crate::config::vm::VmConfig;
use crate::state::Paths;

/// The trees a VM's guest writes through virtiofsd: on the files disk, and moved there
/// from the VM's directory when found beside its record.
pub const TREES: &[&str] = &["etc", "var", "volumes", "layer", "root", "upper", "work"];

/// What `vm` takes on the host now and may take at most, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub limit_bytes: u64,
}

/// The path of `vm`'s files disk, for the owner of its directory.
fn owners_image_path(paths: &Paths, vm: &VmConfig) -> std::path::PathBuf {
    image_path(&paths.state_dir, &vm.name, crate::state::store::owner(paths, &vm.name).unwrap_or(u32::MAX))
}

/// What `vm` takes on the host: the blocks its two disks hold.
pub fn usage(paths: &Paths, vm: &VmConfig) -> Usage {
    let allocated = |path: &Path| crate::state::system_disk::allocated_bytes_of(path).unwrap_or(0);
    let system = allocated(&crate::state::system_disk::path(&paths.vm_dir(&vm.name)));
    Usage {
        used_bytes: system + allocated(&owners_image_path(paths, vm)),
        limit_bytes: limit_mib(vm.disk_mib) << 20,
    }
}

/// Whether `vm`'s files disk exists (it is made at the VM's first start).
pub fn image_exists(paths: &Paths, vm: &VmConfig) -> bool {
    std::fs::symlink_metadata(owners_image_path(paths, vm)).is_ok()
}
