//! The programs a VM is made of: virtiofsd (one per share), vhost-device-vsock (QEMU
//! only), and the hypervisor. Each module builds exact argv from a [`LaunchSpec`], pure
//! data, so the command lines are tested without running anything; the API and QMP
//! clients talk to a running hypervisor.

pub mod api_client;
pub mod cloud_hypervisor;
pub mod qemu;
pub mod qmp;
pub mod virtiofsd;

use std::path::PathBuf;

/// One virtio-fs share: its tag, host directory and vhost-user socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub read_only: bool,
}

/// Everything a hypervisor needs to launch a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub shares: Vec<Share>,
    pub tap: String,
    pub mac: String,
    /// The hybrid-vsock unix socket the host talks to the guest agent through.
    pub vsock_socket: PathBuf,
    /// The hypervisor's control socket: cloud-hypervisor's API, QEMU's QMP.
    pub control_socket: PathBuf,
    /// Where the serial console goes.
    pub console_log: PathBuf,
}

/// The guest CID; hybrid vsock is per VM, so every VM may use the same one.
pub const GUEST_CID: u32 = 3;

/// The kernel command line for a VM, `extra` (the network) appended.
pub fn kernel_cmdline(extra: &str) -> String {
    format!("console=ttyS0 reboot=t panic=-1 quiet loglevel=3 rdinit=/init {extra}")
}
