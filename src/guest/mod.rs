//! The guest side of mvm: the init that runs as PID 1 inside the VM, and the agent that
//! serves `mvm shell`. The same binary is the host CLI and, as `/init`, the guest init.

pub mod agent;
mod file_events;
mod forward;
pub mod init;
pub mod listeners;
pub mod processes;
pub mod reaper;
mod sender;

/// Whether this process is the guest's init (PID 1).
pub fn is_guest_init() -> bool {
    std::process::id() == 1
}
