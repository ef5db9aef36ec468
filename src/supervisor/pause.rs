//! Pausing and resuming a running VM: its vCPUs stop (QEMU `stop`, cloud-hypervisor
//! `vm.pause`) and run again (`cont`, `vm.resume`) with memory, devices, processes and
//! connections as they were; the guest's wall clock, which stood still meanwhile, is set
//! to the host's through the agent. `mvm pause`/`resume` (and `up`, `shell`) ask by
//! writing [`REQUEST_FILE`] in the runtime dir and sending the supervisor `SIGUSR2`.

use std::path::Path;

use crate::supervisor::launch::Launch;
use crate::vmm::Vmm;

/// The runtime file that says what a `SIGUSR2` asks for: `pause` or `resume`.
pub const REQUEST_FILE: &str = "request";

/// What a `SIGUSR2` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
}

impl Request {
    /// The word written to [`REQUEST_FILE`].
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Pause => "pause",
            Request::Resume => "resume",
        }
    }

    /// The request waiting in `run_dir`, if any.
    pub fn read(run_dir: &Path) -> Option<Request> {
        match std::fs::read_to_string(run_dir.join(REQUEST_FILE)).ok()?.trim() {
            "pause" => Some(Request::Pause),
            "resume" => Some(Request::Resume),
            _ => None,
        }
    }
}

/// Stops the VM's vCPUs.
pub fn pause(launch: &Launch) -> anyhow::Result<()> {
    match launch.vmm {
        Vmm::Qemu => crate::vmm::qmp::execute(&launch.spec.control_socket, "stop"),
        Vmm::CloudHypervisor => crate::vmm::api_client::pause(&launch.spec.control_socket),
    }
}

/// Runs the VM's vCPUs again (asking up to three times: a control socket busy with an
/// earlier client answers a moment later).
pub fn resume(launch: &Launch) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        let result = match launch.vmm {
            Vmm::Qemu => crate::vmm::qmp::execute(&launch.spec.control_socket, "cont"),
            Vmm::CloudHypervisor => crate::vmm::api_client::resume(&launch.spec.control_socket),
        };
        attempt += 1;
        if result.is_ok() || attempt == 3 {
            return result;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sets the guest's wall clock to the host's (it stood still while paused).
pub fn set_clock(launch: &Launch) -> anyhow::Result<()> {
    crate::agent::client::set_clock(&launch.spec.vsock_socket)
        .map_err(|error| anyhow::anyhow!("the guest clock was not set: {error}"))
}
