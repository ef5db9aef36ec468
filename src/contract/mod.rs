//! The contract between the host and the guest init, which both sides import: what the
//! guest finds in its initramfs ([`GUEST_CONFIG`], [`MODULE_LIST`], [`config`]), the
//! lines it prints on the console ([`READY_MARKER`], [`REBOOT_MARKER`]), the files its
//! processes keep in `/var/log/mvm` ([`ProcessState`]), the device it reports file
//! changes through, and the agent's wire protocol ([`protocol`]).

pub mod changes;
pub mod config;
pub mod protocol;

use serde::{Deserialize, Serialize};

use protocol::ExitStatus;

/// Where the guest init finds its config, in the per-boot archive.
pub const GUEST_CONFIG: &str = "mvm/guest.json";
/// Where the guest init finds the modules to load, in order (one path per line).
pub const MODULE_LIST: &str = "mvm/modules";
/// Where the initramfs carries the file-event module.
pub const NOTIFY_MODULE: &str = "mvm/mvm_notify.ko";
/// The device the guest agent writes changes to (the file-event module's).
pub const NOTIFY_DEVICE: &str = "/dev/mvm-notify";

/// What the init prints on the console once the guest is up and the agent is starting.
pub const READY_MARKER: &str = "mvm-init: ready";
/// What the init prints on the console before powering off for a reboot.
pub const REBOOT_MARKER: &str = "mvm-init: reboot requested";

/// The guest's `PATH` for sessions and processes (a project environment's comes first).
pub const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where process logs and states live in the guest (`var/log/mvm` on the host): each
/// declared process writes `NAME.log` and keeps `NAME.state` current.
pub const PROCESS_LOG_DIR: &str = "/var/log/mvm";

/// A process's state, as its `.state` file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
}
