//! Tap devices, made with `/dev/net/tun` ioctls: the kernel refuses tap creation over
//! rtnetlink. The tap is persistent so it outlives this process and the VMM attaches
//! to it by name; `IFF_VNET_HDR` lets virtio-net pass offloads through.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context};
use nix::libc;

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tun_set_persist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tun_set_owner,
    nix::request_code_write!(b'T', 204, std::mem::size_of::<libc::c_int>())
);

/// Creates persistent tap `name` (or attaches to an existing one of the same kind); with
/// an `owner`, that user's hypervisor may attach to it without privileges.
pub fn create_persistent_tap(name: &str, owner: Option<u32>) -> anyhow::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} does not fit {} bytes", libc::IFNAMSIZ - 1);
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun (is the tun module available?)")?;
    // SAFETY: `ifreq` is a plain C struct (a name and a union of integers and addresses)
    // for which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: `tun` is an open /dev/net/tun descriptor and `request` a valid, initialized
    // ifreq that lives across the call; TUNSETIFF only reads and writes that struct.
    unsafe { tun_set_iff(tun.as_raw_fd(), &request) }.with_context(|| format!("cannot create tap {name}"))?;
    // SAFETY: the descriptor is now bound to the tap; TUNSETPERSIST takes a plain integer.
    unsafe { tun_set_persist(tun.as_raw_fd(), 1) }
        .with_context(|| format!("cannot make tap {name} persistent"))?;
    if let Some(uid) = owner {
        // SAFETY: as above; TUNSETOWNER takes a plain integer (the uid).
        unsafe { tun_set_owner(tun.as_raw_fd(), uid as libc::c_int) }
            .with_context(|| format!("cannot give tap {name} to uid {uid}"))?;
    }
    Ok(())
}
