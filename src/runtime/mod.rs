//! A VM's runtime directory (`/run/mvm/NAME`): the supervisor's contract with every other
//! command. Only this module names what is in it (launch names the sockets and mount
//! points it makes through the constants here):
//!
//! | entry | who writes it | who reads it |
//! |---|---|---|
//! | `lock` | the supervisor holds it for as long as it lives | `state::store::run_state` |
//! | `status.json` ([`status`]) | the supervisor, at each phase | `list`, `inspect`, `start`, `stop` |
//! | `request` ([`request`]) | `pause`, `resume`, `up`, `shell`, then `SIGUSR2` | the supervisor, which removes it |
//! | `stop-timeout` | `mvm stop`, then `SIGTERM` | the supervisor |
//! | `auto-ports.json` ([`AutoForward`]) | the supervisor's automatic forwards | `mvm port` |
//! | `file-events` | the supervisor's project watcher | `inspect` |
//! | sockets, `boot.cpio`, mount points | the supervisor's launch | the VM's programs; [`orphans`] finds them |
//!
//! The lock and the status outlive the supervisor; [`clean_run_dir`] removes the rest,
//! [`remove_run_dir`] everything.

pub mod orphans;
pub mod request;
pub mod status;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::mounts::{is_mount_point, unmount_if_mounted};
use crate::spec::Protocol;

/// The lock the supervisor holds for as long as it lives.
pub const LOCK_FILE: &str = "lock";
/// The guest agent's hybrid vsock socket.
pub const AGENT_SOCKET: &str = "vsock.sock";
/// vhost-device-vsock's vhost-user socket (QEMU).
pub const VHOST_VSOCK_SOCKET: &str = "vhost-vsock.sock";
/// cloud-hypervisor's API socket.
pub const API_SOCKET: &str = "api.sock";
/// QEMU's QMP socket.
pub const QMP_SOCKET: &str = "qmp.sock";
/// This boot's initramfs.
pub const BOOT_IMAGE: &str = "boot.cpio";
/// Where the project's overlay is mounted (root's VMs).
pub const PROJECT_MERGED: &str = "project";
/// Where a root tree's overlay is mounted (root's VMs).
pub const ROOT_MERGED: &str = "root";
/// Where a project is pinned (`host::mounts::pin_directory`), or its merged overlay's
/// lower layer.
pub const PINNED_PROJECT: &str = "lower";
/// Where a VM's root tree (`--root DIR`) is pinned.
pub const PINNED_ROOT: &str = "rootdir";

/// The vhost-user socket of the virtiofsd that serves share `tag`.
pub fn share_socket(run_dir: &Path, tag: &str) -> PathBuf {
    run_dir.join(format!("fs-{tag}.sock"))
}

/// The file `mvm stop` writes the graceful-stop timeout (seconds) into before SIGTERM.
pub const STOP_TIMEOUT_FILE: &str = "stop-timeout";
/// The default graceful-stop timeout.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Asks the supervisor in `run_dir` to give the guest `timeout` to stop (before `SIGTERM`).
pub fn write_stop_timeout(run_dir: &Path, timeout: Duration) -> std::io::Result<()> {
    std::fs::write(run_dir.join(STOP_TIMEOUT_FILE), timeout.as_secs().to_string())
}

/// The graceful-stop timeout `mvm stop` asked for, else the default.
pub fn stop_timeout(run_dir: &Path) -> Duration {
    std::fs::read_to_string(run_dir.join(STOP_TIMEOUT_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .map_or(DEFAULT_STOP_TIMEOUT, Duration::from_secs)
}

/// The runtime file listing the automatic forwards.
pub const AUTO_PORTS_FILE: &str = "auto-ports.json";

/// One automatic forward: host `127.0.0.1:host` to the guest's port `guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AutoForward {
    pub host: u16,
    pub guest: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// The automatic forwards of the VM whose runtime dir is `run_dir`.
pub fn auto_forwards(run_dir: &Path) -> Vec<AutoForward> {
    crate::fs::read_record(run_dir, AUTO_PORTS_FILE)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Lists the automatic forwards in `run_dir` for `mvm port`.
pub fn write_auto_forwards(run_dir: &Path, forwards: &[AutoForward]) -> anyhow::Result<()> {
    crate::atomic::write_atomic(&run_dir.join(AUTO_PORTS_FILE), &serde_json::to_vec(forwards)?)
}

/// The record in the VM's run directory that says whether its guest gets file events
/// (`mvm inspect` shows it).
pub const FILE_EVENTS_FILE: &str = "file-events";

/// Says in the run directory `run_dir` how file events stand (`on, …` or `off: …`).
pub fn note_file_events(run_dir: &Path, state: &str) {
    let _ = crate::atomic::write_atomic(&run_dir.join(FILE_EVENTS_FILE), format!("{state}\n").as_bytes());
}

/// How file events stand for the VM with run directory `run_dir`, if it said.
pub fn file_events(run_dir: &Path) -> Option<String> {
    let text = crate::fs::read_record(run_dir, FILE_EVENTS_FILE).ok()?;
    Some(String::from_utf8_lossy(&text).trim().to_string())
}

/// Where mvm mounts in a runtime dir: the overlays first, then the directories they were
/// made of (the order they are unmounted in).
pub const MOUNT_POINTS: [&str; 4] = [PROJECT_MERGED, ROOT_MERGED, PINNED_PROJECT, PINNED_ROOT];
/// Files of the runtime dir that outlive the supervisor.
pub const KEPT_RUNTIME_FILES: [&str; 2] = [LOCK_FILE, status::STATUS_FILE];

/// Removes a runtime dir that no supervisor holds: unmounts what mvm mounted there and
/// deletes files and empty mount points one by one, never recursing into a directory
/// that might be a mount (a project bound there). Nothing there is no error.
pub fn remove_run_dir(run_dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(run_dir) {
        Err(_) => return Ok(()),
        // Planted where the runtime dir belongs: the link goes, never what it points at.
        Ok(meta) if meta.file_type().is_symlink() => return std::fs::remove_file(run_dir),
        // Someone else's: not ours to empty.
        Ok(_) if !crate::fs::is_own_dir(run_dir) => return Ok(()),
        Ok(_) => {}
    }
    clean_run_dir(run_dir);
    for kept in KEPT_RUNTIME_FILES {
        match std::fs::remove_file(run_dir.join(kept)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    std::fs::remove_dir(run_dir)
}

/// Removes everything from a runtime dir but the lock and status (stale sockets included).
pub fn clean_run_dir(run_dir: &Path) {
    if !crate::fs::is_own_dir(run_dir) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(run_dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if KEPT_RUNTIME_FILES.iter().any(|kept| name == *kept) {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // Never delete through a mount that would not go away; where mvm mounts
            // (a project bound here, above all), remove only the empty mount point.
            if unmount_if_mounted(&path).is_ok() && !is_mount_point(&path) {
                let _ = if MOUNT_POINTS.iter().any(|mount| name == *mount) {
                    std::fs::remove_dir(&path)
                } else {
                    std::fs::remove_dir_all(&path)
                };
            }
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}
