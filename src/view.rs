//! What `list` and `inspect` show about a VM: one summary type, so the table, the JSON
//! and `inspect` cannot disagree. The JSON field names are a stable interface.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fs::{Tree, RECORD_CAP};
use crate::name::VmName;
use crate::runtime::status::{Phase, RuntimeStatus};
use crate::spec::PortForward;
use crate::state::store::{self, RunState, VmEntry};
use crate::state::Paths;

/// The state column: running, stopped, or broken (unreadable `vm.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    /// Running with its vCPUs stopped (`mvm pause`, or idle): `up` and `shell` resume it.
    Paused,
    Stopped,
    /// Its last run ended on its own (the reason is in `reason`).
    Crashed,
    Broken,
}

impl VmState {
    /// The word shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
            VmState::Crashed => "crashed",
            VmState::Broken => "broken",
        }
    }
}

impl From<RunState> for VmState {
    fn from(state: RunState) -> Self {
        match state {
            RunState::Running => VmState::Running,
            RunState::Stopped => VmState::Stopped,
        }
    }
}

/// One row of `mvm list` (and `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct VmSummary {
    pub name: String,
    pub state: VmState,
    pub ip: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// The host memory the running VM's hypervisor holds (its resident set, the guest's
    /// memory in it): what free page reporting gives back shows here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_mib: Option<u64>,
    /// What the VM's disks take on the host, beside its disk limit (`state::disk`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<crate::state::disk::Usage>,
    pub hypervisor: Option<String>,
    pub ports: Vec<PortForward>,
    pub project: Option<PathBuf>,
    pub uptime_seconds: Option<u64>,
    /// How the last run ended, for a VM that is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the VM is broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VmSummary {
    /// The summary of one catalogue entry, with its run state from the run lock.
    pub fn of(paths: &Paths, entry: &VmEntry) -> VmSummary {
        let config = match &entry.config {
            Ok(config) => config,
            Err(error) => return Self::broken(&entry.name, error.clone()),
        };
        let state = match store::run_state(paths, &config.name) {
            Ok(state) => VmState::from(state),
            Err(error) => return Self::broken(&entry.name, format!("{error:#}")),
        };
        let status = RuntimeStatus::read(&paths.vm_run_dir(&config.name));
        let memory_used_mib = match (&state, &status) {
            (VmState::Running, Some(status)) => status.hypervisor_pid.and_then(resident_mib),
            _ => None,
        };
        let (state, uptime_seconds, reason) = match (state, status) {
            (VmState::Running, Some(status)) => {
                let state = if status.phase == Phase::Paused { VmState::Paused } else { state };
                (state, Some(crate::output::unix_now().saturating_sub(status.started_at)), None)
            }
            (VmState::Stopped, Some(status)) if status.phase == Phase::Crashed => {
                (VmState::Crashed, None, status.reason)
            }
            // No supervisor holds the lock, yet none recorded an end: it was killed.
            (VmState::Stopped, Some(status)) if status.ended_at.is_none() => {
                let owner = crate::state::store::owner(paths, &config.name).unwrap_or(0);
                let left = crate::runtime::orphans::find(&paths.vm_run_dir(&config.name), owner);
                let fate = match left.len() {
                    0 => "its processes died with it".to_string(),
                    n => format!("{n} of its processes still run: `mvm stop {}` ends them", config.name),
                };
                let supervisor = status.supervisor_pid;
                let reason =
                    format!("its supervisor (pid {supervisor}) ended without stopping it (killed?); {fate}");
                (VmState::Crashed, None, Some(reason))
            }
            (VmState::Stopped, Some(status)) => (state, None, status.reason),
            (state, _) => (state, None, None),
        };
        VmSummary {
            name: entry.name.clone(),
            state,
            ip: Some(config.network.address.to_string()),
            cpus: Some(config.cpus),
            memory_mib: Some(config.memory_mib),
            memory_used_mib,
            disk: Some(crate::state::disk::usage(paths, config)),
            hypervisor: Some(config.hypervisor.to_string()),
            ports: config.ports.clone(),
            project: config.project.as_ref().map(|project| project.path.clone()),
            uptime_seconds,
            reason,
            error: None,
        }
    }

    fn broken(name: &str, error: String) -> VmSummary {
        VmSummary {
            name: name.to_string(),
            state: VmState::Broken,
            ip: None,
            cpus: None,
            memory_mib: None,
            memory_used_mib: None,
            disk: None,
            hypervisor: None,
            ports: Vec::new(),
            project: None,
            uptime_seconds: None,
            reason: None,
            error: Some(error),
        }
    }
}

/// Process `pid`'s resident memory in MiB (`VmRSS`: a hypervisor's shared guest memory
/// included).
pub fn resident_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The summary of VM `name` alone.
pub fn summary_of(paths: &Paths, name: &VmName) -> anyhow::Result<VmSummary> {
    let config = store::load(paths, name)?;
    Ok(VmSummary::of(paths, &VmEntry { name: name.to_string(), config: Ok(config) }))
}

/// The VM's `var/`, written by the guest: read only through [`Tree`].
pub fn guest_var(paths: &Paths, name: &VmName) -> std::io::Result<Tree> {
    Tree::open(&crate::state::disk::files_dir(&paths.vm_dir(name)).join("var"))
}

/// Where the guest's process logs and states are, beneath its `var/`.
pub fn process_file(process: &str, extension: &str) -> PathBuf {
    Path::new("log/mvm").join(format!("{process}.{extension}"))
}

/// A declared process and, while the VM runs, its state.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub name: String,
    pub command: String,
    pub restart: crate::config::vm::RestartPolicy,
    pub state: Option<crate::contract::ProcessState>,
}

/// The processes of `config`, with states read from the guest when `running`.
pub fn processes_of(paths: &Paths, config: &crate::config::vm::VmConfig, running: bool) -> Vec<ProcessView> {
    let var = running.then(|| guest_var(paths, &config.name).ok()).flatten();
    config
        .processes
        .iter()
        .map(|process| ProcessView {
            name: process.name.clone(),
            command: process.command.clone(),
            restart: process.restart,
            state: var
                .as_ref()
                .and_then(|var| var.read(&process_file(&process.name, "state"), RECORD_CAP).ok())
                .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
        })
        .collect()
}
