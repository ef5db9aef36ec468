//! Loop devices, by descriptor: a file attached to a free loop device that frees itself
//! when its last user (the mount) lets go, and the file a mounted loop device reads.
//!
//! Hand-written over three ioctls rather than `losetup`, which takes paths: the caller
//! opens and checks the backing file once and attaches exactly that file.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{bail, Context};

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The device is detached when its last opener closes it.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// The block major of loop devices.
pub const LOOP_MAJOR: u64 = 7;

nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);

/// A loop device attached to a file; closing it leaves the device to whoever else holds
/// it (a mount), and frees it when no one does.
pub struct Attached {
    pub device: File,
    pub path: PathBuf,
}

/// Attaches `file` (opened read-write) to a free loop device, detached again by itself
/// once nothing holds it.
pub fn attach(file: BorrowedFd) -> anyhow::Result<Attached> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context("cannot open /dev/loop-control (is the loop module loaded? `modprobe loop`)")?;
    // Another process may take the free device between asking and configuring it.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }.context("no free loop device")?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(device) => device,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).with_context(|| format!("cannot open {}", path.display())),
        };
        // SAFETY: all-zero is a valid `loop_info64` (plain integers and byte arrays).
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        info.lo_flags = LO_FLAGS_AUTOCLEAR;
        let config = LoopConfig { fd: file.as_raw_fd() as u32, block_size: 0, info, reserved: [0; 8] };
        // SAFETY: `config` is a valid `loop_config` that outlives the call; the kernel
        // takes its own reference to the file.
        match unsafe { loop_configure(device.as_raw_fd(), &config) } {
            Ok(_) => return Ok(Attached { device, path }),
            Err(nix::errno::Errno::EBUSY) => continue,
            Err(error) => return Err(error).with_context(|| format!("cannot attach {}", path.display())),
        }
    }
    bail!("no loop device stayed free long enough to attach the disk")
}

/// The loop device of block device number `rdev`, opened, or `None` when it is no loop
/// device.
fn open_loop(rdev: u64) -> anyhow::Result<Option<(PathBuf, File)>> {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    if major != LOOP_MAJOR {
        return Ok(None);
    }
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .with_context(|| format!("cannot read the block device {major}:{minor}"))?;
    let Some(name) = uevent.lines().find_map(|line| line.strip_prefix("DEVNAME=")) else {
        return Ok(None);
    };
    let path = PathBuf::from("/dev").join(name);
    let device = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    if device.metadata()?.rdev() != rdev {
        bail!("{} is not the block device {major}:{minor}", path.display());
    }
    Ok(Some((path, device)))
}

/// The loop device `file` ((device, inode)) is attached to, if any: every loop device is
/// asked (`LOOP_GET_STATUS64`), never a path compared.
pub fn attached_to(file: (u64, u64)) -> anyhow::Result<Option<PathBuf>> {
    let Ok(devices) = std::fs::read_dir("/sys/block") else { return Ok(None) };
    for entry in devices.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only attached ones have a backing file.
        if !name.starts_with("loop") || !entry.path().join("loop/backing_file").exists() {
            continue;
        }
        let Ok(dev) = std::fs::read_to_string(entry.path().join("dev")) else { continue };
        let Some((major, minor)) = dev.trim().split_once(':') else { continue };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else { continue };
        if backing_file(nix::sys::stat::makedev(major, minor))? == Some(file) {
            return Ok(Some(PathBuf::from("/dev").join(name)));
        }
    }
    Ok(None)
}

/// The (device, inode) of the file the loop device of block device number `rdev` reads,
/// or `None` when `rdev` is no loop device (or an unattached one).
pub fn backing_file(rdev: u64) -> anyhow::Result<Option<(u64, u64)>> {
    let Some((path, device)) = open_loop(rdev)? else { return Ok(None) };
    // SAFETY: all-zero is a valid `loop_info64`; the kernel fills it.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable `loop_info64` for the call.
    match unsafe { loop_get_status64(device.as_raw_fd(), &mut info) } {
        Ok(_) => Ok(Some((info.lo_device, info.lo_inode))),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}
