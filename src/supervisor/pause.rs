//! Pausing and resuming a running VM: it stops (cloud-hypervisor `vm.pause`; QEMU is
//! stopped whole, `SIGSTOP`) and runs again (`vm.resume`; `SIGCONT`) with memory, devices,
//! processes and connections as they were; the guest's wall clock is then set to the
//! host's through the agent.
//!
//! Why not QEMU's `stop`/`cont`: they quiesce the vhost-user backends, and across that
//! vhost-device-vsock sometimes loses a ring notification, after which the guest's vsock
//! (the agent, every shell) no longer answers — the same class of bug as Firecracker's
//! vsock hang after pause/resume with events in flight. A stopped process leaves the
//! devices alone; its vCPU threads use no CPU, and the kernel still delivers the
//! supervisor's SIGKILL to it. `mvm pause`/`resume` (and `up`, `shell`) ask by
//! writing a request into the runtime dir (`runtime::request`) and sending the supervisor `SIGUSR2`.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::supervisor::launch::Launch;
use crate::vmm::Vmm;

/// Stops the VM (its hypervisor is `hypervisor`).
pub fn pause(launch: &Launch, hypervisor: u32) -> anyhow::Result<()> {
    match launch.checked.vmm {
        Vmm::Qemu => signal(hypervisor, Signal::SIGSTOP),
        Vmm::CloudHypervisor => crate::vmm::api_client::pause(&launch.spec.control_socket),
    }
}

fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    kill(Pid::from_raw(pid as i32), signal)
        .map_err(|errno| anyhow::anyhow!("cannot send {signal} to {pid}: {errno}"))
}

/// Runs the VM again (asking up to three times: a control socket busy with an earlier
/// client answers a moment later).
pub fn resume(launch: &Launch, hypervisor: u32) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        let result = match launch.checked.vmm {
            Vmm::Qemu => signal(hypervisor, Signal::SIGCONT),
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
