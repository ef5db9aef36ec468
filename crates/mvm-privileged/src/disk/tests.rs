//! Real disks on real loop devices, in temp roots (root only: loop devices and mounts).

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::layout::{files_dir, image_path, is_mounted};
use super::*;

struct Setup {
    _root: tempfile::TempDir,
    paths: Roots,
    vm: VmRecord,
    mkfs: PathBuf,
}

fn setup() -> Option<Setup> {
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP privileged::disk tests: need root and loop devices");
        return None;
    }
    let Ok(mkfs) = mvm_base::binaries::Tool::MkfsExt4.find(&Default::default()) else {
        eprintln!("SKIP privileged::disk tests: no mkfs.ext4 (apt-get install e2fsprogs)");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    let paths = Roots::under(root.path());
    let mut vm = crate::record::tests::sample();
    vm.disk_mib = Some(2048);
    std::fs::create_dir_all(files_dir(&paths.vm_dir(&vm.name))).unwrap();
    Some(Setup { _root: root, paths, vm, mkfs })
}

fn mounts_on(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table.lines().filter(|line| line.split(' ').nth(4) == Some(dir.to_str().unwrap())).count()
}

#[test]
fn a_disk_is_made_mounted_once_bounds_writes_and_goes_with_down() {
    let Some(s) = setup() else { return };
    let vm_dir = s.paths.vm_dir(&s.vm.name);
    up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap();
    let files = files_dir(&vm_dir);
    assert!(is_mounted(&vm_dir));
    let image = image_path(&s.paths.state_dir, &s.vm.name, 0);
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!((meta.len(), meta.mode() & 0o777), (1536 << 20, 0o600));
    assert!(meta.blocks() * 512 < 96 << 20, "a new disk takes {} bytes", meta.blocks() * 512);
    let disks = std::fs::metadata(image.parent().unwrap()).unwrap();
    assert_eq!(disks.permissions().mode() & 0o7777, 0o711);

    // Idempotent: a second up mounts nothing more.
    up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap();
    assert_eq!(mounts_on(&files), 1);

    // Past its size, a write gets ENOSPC; the mount gives no privilege.
    let big = std::fs::File::create(files.join("big")).unwrap();
    let error = nix::fcntl::fallocate(&big, nix::fcntl::FallocateFlags::empty(), 0, 2 << 30).unwrap_err();
    assert_eq!(error, nix::errno::Errno::ENOSPC);
    drop(big);
    let options = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let canonical = files.canonicalize().unwrap();
    let line = options.lines().find(|line| line.split(' ').nth(4) == canonical.to_str()).unwrap();
    for option in ["nosuid", "nodev", "noexec"] {
        assert!(line.split(' ').nth(5).unwrap().split(',').any(|o| o == option), "{option} missing: {line}");
    }

    // A stop unmounts it and keeps it; the next start finds what it held.
    down(&s.paths, &s.vm, (0, 0), false).unwrap();
    assert!(!is_mounted(&vm_dir) && image.exists());
    up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap();
    assert!(files.join("big").exists());
    down(&s.paths, &s.vm, (0, 0), true).unwrap();
    assert!(!is_mounted(&vm_dir));
    assert!(!image.exists());
    // Again: nothing to do.
    down(&s.paths, &s.vm, (0, 0), true).unwrap();
}

/// A raised limit grows the disk at its next mount, keeping what it holds.
#[test]
fn a_raised_limit_grows_the_disk() {
    let Some(mut s) = setup() else { return };
    let files = files_dir(&s.paths.vm_dir(&s.vm.name));
    up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap();
    std::fs::write(files.join("kept"), "yes").unwrap();
    let size = || {
        let stat = nix::sys::statvfs::statvfs(&files).unwrap();
        stat.blocks() * stat.fragment_size()
    };
    let before = size();
    down(&s.paths, &s.vm, (0, 0), false).unwrap();
    s.vm.disk_mib = Some(4096);
    up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap();
    assert_eq!(std::fs::metadata(image_path(&s.paths.state_dir, &s.vm.name, 0)).unwrap().len(), 3072 << 20);
    assert!(size() > before + (1 << 30), "{before} -> {}", size());
    assert_eq!(std::fs::read_to_string(files.join("kept")).unwrap(), "yes");
    // A record's size out of bounds is refused.
    s.vm.disk_mib = Some(1024);
    assert!(up(&s.paths, &s.vm, (0, 0), &s.mkfs).is_err());
    s.vm.disk_mib = Some(4096);
    down(&s.paths, &s.vm, (0, 0), true).unwrap();
}

/// A disk still attached elsewhere (a mount some namespace kept) is never attached again.
#[test]
fn a_disk_in_use_elsewhere_is_not_mounted_twice() {
    let Some(s) = setup() else { return };
    let vm_dir = s.paths.vm_dir(&s.vm.name);
    up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap();
    // A second mount of the same device elsewhere, as a namespace's copy would be.
    let elsewhere = s.paths.state_dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let bind = nix::mount::MsFlags::MS_BIND;
    nix::mount::mount(Some(&files_dir(&vm_dir)), &elsewhere, None::<&str>, bind, None::<&str>).unwrap();
    down(&s.paths, &s.vm, (0, 0), false).unwrap();
    assert!(!is_mounted(&vm_dir));
    let refused = up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap_err();
    assert!(format!("{refused:#}").contains("still in use"), "{refused:#}");
    assert!(!is_mounted(&vm_dir));
    assert!(down(&s.paths, &s.vm, (0, 0), true).is_err(), "deleted while in use");
    nix::mount::umount(&elsewhere).unwrap();
    down(&s.paths, &s.vm, (0, 0), true).unwrap();
    assert!(!image_path(&s.paths.state_dir, &s.vm.name, 0).exists());
}

/// A disk something has files open on stays mounted (and is reused), never lazily
/// detached.
#[test]
fn a_busy_disk_stays_mounted() {
    let Some(s) = setup() else { return };
    let vm_dir = s.paths.vm_dir(&s.vm.name);
    up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap();
    let open = std::fs::File::create(files_dir(&vm_dir).join("open")).unwrap();
    let busy = down(&s.paths, &s.vm, (0, 0), false).unwrap_err();
    assert!(format!("{busy:#}").contains("busy"), "{busy:#}");
    assert!(is_mounted(&vm_dir));
    up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap();
    drop(open);
    down(&s.paths, &s.vm, (0, 0), true).unwrap();
}

#[test]
fn a_files_dir_replaced_by_a_symlink_gets_no_mount() {
    let Some(s) = setup() else { return };
    let vm_dir = s.paths.vm_dir(&s.vm.name);
    let elsewhere = s.paths.state_dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir(files_dir(&vm_dir)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, files_dir(&vm_dir)).unwrap();
    assert!(up(&s.paths, &s.vm, (0, 0), &s.mkfs).is_err());
    assert_eq!(mounts_on(&elsewhere), 0);
}

#[test]
fn a_files_dir_of_someone_else_gets_no_mount() {
    let Some(s) = setup() else { return };
    let files = files_dir(&s.paths.vm_dir(&s.vm.name));
    std::os::unix::fs::chown(&files, Some(4242), Some(4242)).unwrap();
    let error = up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap_err();
    assert!(format!("{error:#}").contains("uid 4242"), "{error:#}");
    assert_eq!(mounts_on(&files), 0);
}

#[test]
fn something_else_mounted_on_files_is_neither_used_nor_taken_down() {
    let Some(s) = setup() else { return };
    let files = files_dir(&s.paths.vm_dir(&s.vm.name));
    nix::mount::mount(Some("tmpfs"), &files, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m"))
        .unwrap();
    let refused = up(&s.paths, &s.vm, (0, 0), &s.mkfs).unwrap_err();
    assert!(format!("{refused:#}").contains("something else is mounted"), "{refused:#}");
    assert!(down(&s.paths, &s.vm, (0, 0), true).is_err());
    assert_eq!(mounts_on(&files), 1, "the tmpfs was taken down");
    nix::mount::umount(&files).unwrap();
    down(&s.paths, &s.vm, (0, 0), true).unwrap();
}
