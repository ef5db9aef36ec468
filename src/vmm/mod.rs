//! The programs a VM is made of: virtiofsd (one per share), vhost-device-vsock (QEMU
//! only), and the hypervisor. Each module builds exact argv from a [`LaunchSpec`], pure
//! data, so the command lines are tested without running anything; the API and QMP
//! clients talk to a running hypervisor.

pub mod api_client;
pub mod choice;
pub mod cloud_hypervisor;
pub mod qemu;
pub mod qmp;
pub mod virtiofsd;

use std::path::PathBuf;

/// The virtual machine monitor a launch runs: what `Hypervisor::Auto` resolves to on
/// this host (`choice::choose_hypervisor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    CloudHypervisor,
    Qemu,
}

impl std::fmt::Display for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vmm::CloudHypervisor => "cloud-hypervisor",
            Vmm::Qemu => "qemu",
        })
    }
}

/// One virtio-fs share: its tag, host directory and vhost-user socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub read_only: bool,
    /// What the guest's user and group ids become on the host.
    pub ids: GuestIds,
    /// The guest's own overlay keeps a layer here: its `user.overlay.*` extended
    /// attributes are stored, and no other (no file capability, no ACL, no label).
    pub overlay_layer: bool,
    /// Every change the host makes here is pushed to the guest (file events), which
    /// drops what it cached: entries and attributes are cached for long.
    pub changes_pushed: bool,
}

/// A virtio-blk disk: a raw image file the guest sees as a block device, found by its
/// serial (`/sys/block/vdX/serial`) rather than by the order devices appear in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub serial: String,
    pub read_only: bool,
}

/// How the ids of what a guest writes become host ids (virtiofsd's `--translate-uid`
/// and `--translate-gid`, done by virtiofsd itself, with no user namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestIds {
    /// Unchanged: read-only shares, and the VM's own `etc/` and `var/`, which live in a
    /// state dir only root can enter.
    AsIs,
    /// Every guest id becomes this host user and group: the project, whose files stay
    /// its owner's whoever wrote them in the guest (guest root included).
    Squash { uid: u32, gid: u32 },
    /// Guest ids `0..65536` are host ids `base..base + 65536`, both ways, so an owner
    /// round-trips (PostgreSQL's data directory stays `postgres`'s); any other guest id
    /// is refused. Volumes: nothing in them is owned by a real host user.
    Shift { base: u32 },
    /// A user's VM (no root anywhere): virtiofsd runs in a user namespace of its own in
    /// which that user is id 0 and no other host id exists. Whatever the guest writes
    /// belongs to the user; what the user owns looks owned by `shown_as` (uid, gid) to
    /// the guest (root for the VM's own trees, the user themself for the project), and
    /// what no id of the namespace owns (root's `/usr`) looks root's.
    Owner { shown_as: (u32, u32) },
    /// A user's VM's own trees, when the user has subordinate ids: virtiofsd runs in the
    /// VM's `MappedNamespace` (the user id 0, their subordinate range ids
    /// `1..=GUEST_IDS`), and guest ids `0..GUEST_IDS` are those ids, both ways, so
    /// owners round-trip as under root (PostgreSQL's data stays `postgres`'s); any other
    /// guest id is refused. What the user owns (written before the VM had ranges) looks
    /// root's.
    Subordinate,
}

/// The id the kernel shows a user namespace for a host id it does not map
/// (`/proc/sys/kernel/overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// The host ids volumes' guest ids are shifted to: 0x7000_0000, past systemd's
/// container range (0x80000–0x6FFFFFFF) and below its foreign range (0x7FFE0000).
pub const VOLUME_ID_BASE: u32 = 0x7000_0000;
/// How many guest ids a shifted share maps.
pub const SHIFTED_IDS: u32 = 65_536;

/// Everything a hypervisor needs to launch a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub shares: Vec<Share>,
    pub disks: Vec<Disk>,
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
