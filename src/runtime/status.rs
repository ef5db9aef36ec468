//! `status.json` in a VM's runtime dir: what the supervisor is doing, and after it ends,
//! how the last run ended. Whether the VM runs is never read from here: the run lock says
//! that; this file says when it started and, for a VM that is down, why.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;

/// The supervisor's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Running,
    /// Running, with its vCPUs stopped (idle, or `mvm pause`): resumed in milliseconds.
    Paused,
    Stopping,
    /// Ended as asked (stop, guest power-off).
    Stopped,
    /// Ended on its own: the hypervisor died, crashed, or never booted.
    Crashed,
}

/// The contents of `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    pub phase: Phase,
    pub supervisor_pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor_pid: Option<u32>,
    /// When the supervisor started (seconds since the epoch).
    pub started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// How the run ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RuntimeStatus {
    /// Reads `status.json` from `run_dir`; `None` if absent or unreadable — or no regular
    /// file, or too large (root lists every user's VMs, whose runtime dirs are theirs).
    pub fn read(run_dir: &Path) -> Option<RuntimeStatus> {
        serde_json::from_slice(&crate::fs::read_record(run_dir, STATUS_FILE).ok()?).ok()
    }

    /// Writes it atomically into `run_dir`.
    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        write_atomic(&run_dir.join(STATUS_FILE), &serde_json::to_vec_pretty(self)?)
    }
}

/// The file's name.
pub const STATUS_FILE: &str = "status.json";

#[cfg(test)]
mod tests {
    use super::*;

    /// A status file its owner replaced by a FIFO, a symlink to a file they cannot read or
    /// something endless is no status, at once (root's `mvm list` reads every user's).
    #[test]
    fn planted_status_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join(STATUS_FILE);
        nix::unistd::mkfifo(&status, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = std::time::Instant::now();
        assert!(RuntimeStatus::read(dir.path()).is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        std::fs::remove_file(&status).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, br#"{"phase":"running"}"#).unwrap();
        std::os::unix::fs::symlink(&secret, &status).unwrap();
        assert!(RuntimeStatus::read(dir.path()).is_none());
        std::fs::remove_file(&status).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &status).unwrap();
        assert!(RuntimeStatus::read(dir.path()).is_none());
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RuntimeStatus::read(dir.path()), None);
        let status = RuntimeStatus {
            phase: Phase::Crashed,
            supervisor_pid: 42,
            hypervisor_pid: Some(43),
            started_at: 1,
            ended_at: Some(2),
            reason: Some("qemu-system-x86_64 was killed by signal 9".into()),
        };
        status.write(dir.path()).unwrap();
        assert_eq!(RuntimeStatus::read(dir.path()), Some(status));
    }
}
