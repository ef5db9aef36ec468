//! Where a VM's files disk lives and how its limit is shared out: names and sizes alone,
//! the same for the helper that makes the disk and for `mvm` (`state::disk`), which
//! reports it.

use std::path::{Path, PathBuf};

use mvm_base::error::UserError;
use mvm_base::name::VmName;

/// Root's directory of files disks, under the state root.
pub const DISKS_DIR: &str = ".disks";
/// Where a VM's files disk is mounted, in its state dir.
pub const FILES_DIR: &str = "files";
/// The files disk's ext4 label.
pub const FILES_LABEL: &str = "mvm-files";
/// A new VM's disk limit, unless the host config's `defaults.disk` says otherwise.
pub const DEFAULT_DISK_MIB: u64 = 20 * 1024;
/// The smallest disk limit: room for a system layer and the VM's files.
pub const MIN_DISK_MIB: u64 = 2048;
/// The largest: a bound a host could ever honour (16 TiB, ext4's file size limit).
pub const MAX_DISK_MIB: u64 = 16 * 1024 * 1024;
/// How a disk size is written.
pub const DISK_HINT: &str = "write a size such as 8G, 20G or 1T, at least 2G";

/// Refuses a limit of `mib` MiB outside [`MIN_DISK_MIB`]..=[`MAX_DISK_MIB`]; `spec`
/// says how it was written.
pub fn check_limit(mib: u64, spec: &str) -> Result<(), UserError> {
    if mib < MIN_DISK_MIB {
        return Err(UserError::usage(format!(
            "disk size {spec:?} is below the minimum of {MIN_DISK_MIB} MiB"
        ))
        .hint(DISK_HINT));
    }
    if mib > MAX_DISK_MIB {
        return Err(
            UserError::usage(format!("disk size {spec:?} is above the maximum of 16T")).hint(DISK_HINT)
        );
    }
    Ok(())
}

/// The limit in MiB of a VM whose record says `disk_mib` (the default for a VM made
/// before limits).
pub fn limit_mib(disk_mib: Option<u64>) -> u64 {
    disk_mib.unwrap_or(DEFAULT_DISK_MIB)
}

/// The system disk's share of the limit: a quarter.
pub fn system_mib(disk_mib: Option<u64>) -> u64 {
    limit_mib(disk_mib) / 4
}

/// The files disk's share of the limit: the rest.
pub fn files_mib(disk_mib: Option<u64>) -> u64 {
    limit_mib(disk_mib) - system_mib(disk_mib)
}

/// Where the files disk of the VM whose state dir is `vm_dir` is mounted.
pub fn files_dir(vm_dir: &Path) -> PathBuf {
    vm_dir.join(FILES_DIR)
}

/// The file name of VM `name`'s files disk, owned by `owner` (uid): no VM of another
/// user has it. Nothing in it comes from the owner's record but the VM's name, so an
/// owner cannot make disks the helper would not find again (`rm` deletes it).
pub fn image_name(name: &VmName, owner: u32) -> String {
    format!("{name}-{owner}.img")
}

/// The lock held around any change to the image `image_name` (in [`DISKS_DIR`]).
pub fn lock_name(image_name: &str) -> String {
    format!("{}.lock", image_name.trim_end_matches(".img"))
}

/// The path of VM `name`'s files disk under the state root `state_dir`.
pub fn image_path(state_dir: &Path, name: &VmName, owner: u32) -> PathBuf {
    state_dir.join(DISKS_DIR).join(image_name(name, owner))
}

/// Whether `vm_dir`'s `files/` has a file system of its own mounted on it.
pub fn is_mounted(vm_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |path: &Path| std::fs::symlink_metadata(path).map(|meta| meta.dev());
    matches!((dev(vm_dir), dev(&files_dir(vm_dir))), (Ok(parent), Ok(files)) if parent != files)
}

/// `mkfs.ext4`'s arguments (but the image) for a new disk labelled `label` whose root is
/// `owner`'s (`UID:GID`). The file is new and sparse, so it already reads as zeros: the
/// inode tables and the journal need no zeroing (lazy), nothing needs discarding, and
/// nothing is reserved for root (root's virtiofsd would write past the limit into it).
pub fn format_args_for(label: &str, owner: &str) -> Vec<String> {
    let extended = format!("root_owner={owner},lazy_itable_init=1,lazy_journal_init=1,nodiscard");
    ["-q", "-F", "-L", label, "-m", "0", "-E", &extended].iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_a_quarter_to_the_system_disk() {
        let mib = Some(8192);
        assert_eq!((system_mib(mib), files_mib(mib), limit_mib(mib)), (2048, 6144, 8192));
        assert_eq!(limit_mib(None), DEFAULT_DISK_MIB);
        assert_eq!(system_mib(None) + files_mib(None), DEFAULT_DISK_MIB);
    }

    #[test]
    fn an_image_is_named_for_its_vm_and_owner_alone() {
        let web: VmName = "web".parse().unwrap();
        assert_eq!(image_name(&web, 1000), "web-1000.img");
        assert_eq!(lock_name(&image_name(&web, 1000)), "web-1000.lock");
        assert_ne!(image_name(&web, 1001), image_name(&web, 1000));
    }

    #[test]
    fn a_limit_is_bounded_both_ways() {
        assert!(check_limit(MIN_DISK_MIB, "2G").is_ok() && check_limit(MAX_DISK_MIB, "16T").is_ok());
        assert!(check_limit(MIN_DISK_MIB - 1, "x").unwrap_err().to_string().contains("below the minimum"));
        assert!(check_limit(MAX_DISK_MIB + 1, "x").unwrap_err().to_string().contains("above the maximum"));
    }
}
