//! Leases: which shells use a VM that `mvm up` started, so the VM can stop by itself once
//! none of them is left in its project (direnv has no unload hook to tell us).
//!
//! A lease is `RUN_DIR/leases/PID` holding the process's start time (so a recycled PID is
//! not mistaken for the shell) and, for an `mvm shell` session, the word `anywhere`: a
//! session keeps the VM in use wherever its caller's directory is. `mvm up` writes `RUN_DIR/auto-stop` with the idle time
//! when it starts the VM; the supervisor then asks [`IdleClock::tick`] every second.
//! Both live in the runtime dir, so they vanish with the VM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::atomic::write_atomic;

/// The directory of lease files inside a VM's runtime dir.
pub const LEASE_DIR: &str = "leases";
/// The file whose presence (holding the idle time in seconds) turns auto-stop on.
pub const AUTO_STOP_FILE: &str = "auto-stop";
/// The runtime file that turns auto-pause on: the idle time after which the VM pauses.
pub const AUTO_PAUSE_FILE: &str = "auto-pause";

/// A process's identity: its PID and its start time in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessId {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(ProcessId { pid, start_time: stat_field(&stat, 22)?.parse().ok()? })
    }

    /// Whether this very process still runs (same PID and start time).
    pub fn is_alive(&self) -> bool {
        ProcessId::of(self.pid) == Some(*self)
    }

    /// The process's working directory.
    pub fn cwd(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/cwd", self.pid)).ok()
    }
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line; the command name in
/// field 2 may contain spaces and parentheses, so fields after it are counted from its end.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(n.checked_sub(3)?)
}

/// The parent PID of `pid` and its command name.
fn parent_and_comm(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
    Some((stat_field(&stat, 4)?.parse().ok()?, comm))
}

/// The shell a lease is for: the parent of the nearest `direnv` among our ancestors (the
/// interactive shell whose prompt hook ran direnv); without one, our parent, looking
/// through `sudo`.
pub fn calling_shell() -> Option<ProcessId> {
    let parent = nix::unistd::getppid().as_raw() as u32;
    let mut pid = parent;
    for _ in 0..16 {
        let Some((ppid, comm)) = parent_and_comm(pid) else { break };
        if comm == "direnv" {
            return ProcessId::of(ppid);
        }
        if ppid <= 1 {
            break;
        }
        pid = ppid;
    }
    match parent_and_comm(parent) {
        Some((ppid, comm)) if comm == "sudo" => ProcessId::of(ppid),
        _ => ProcessId::of(parent),
    }
}

/// Where a lease holder must be to keep the VM in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// With its working directory inside the project (a shell that entered it).
    Project,
    /// Anywhere, for as long as it lives (an `mvm shell` session).
    Anywhere,
}

/// Records a lease for `holder` in `run_dir`.
pub fn take(run_dir: &Path, holder: ProcessId, scope: Scope) -> anyhow::Result<()> {
    let dir = run_dir.join(LEASE_DIR);
    // Never through a link planted in the runtime dir, nor into another user's directory.
    if !crate::fs::is_own_dir(run_dir) {
        anyhow::bail!("{} is not a directory of yours", run_dir.display());
    }
    crate::state::paths::own_dir(&dir, 0o755)?;
    let text = match scope {
        Scope::Project => holder.start_time.to_string(),
        Scope::Anywhere => format!("{} anywhere", holder.start_time),
    };
    write_atomic(&dir.join(holder.pid.to_string()), text.as_bytes())
}

/// Drops `holder`'s lease, if it has one.
pub fn release(run_dir: &Path, holder: ProcessId) {
    let _ = std::fs::remove_file(run_dir.join(LEASE_DIR).join(holder.pid.to_string()));
}

/// Turns auto-stop on: the VM stops once no lease holder has been in the project for `idle`.
pub fn enable_auto_stop(run_dir: &Path, idle: Duration) -> anyhow::Result<()> {
    write_atomic(&run_dir.join(AUTO_STOP_FILE), idle.as_secs().to_string().as_bytes())
}

/// The idle time after which the VM stops, when auto-stop is on.
pub fn auto_stop(run_dir: &Path) -> Option<Duration> {
    seconds_in(&run_dir.join(AUTO_STOP_FILE))
}

/// Turns auto-pause on: the VM pauses once no lease holder has been in the project for
/// `idle` (and stops later, at the auto-stop time).
pub fn enable_auto_pause(run_dir: &Path, idle: Duration) -> anyhow::Result<()> {
    write_atomic(&run_dir.join(AUTO_PAUSE_FILE), idle.as_secs().to_string().as_bytes())
}

/// The idle time after which the VM pauses, when auto-pause is on.
pub fn auto_pause(run_dir: &Path) -> Option<Duration> {
    seconds_in(&run_dir.join(AUTO_PAUSE_FILE))
}

fn seconds_in(file: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(file).ok()?;
    text.trim().parse().ok().map(Duration::from_secs)
}

/// What an idle VM's supervisor does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleAction {
    /// Pause it (instant re-entry when a shell comes back).
    Pause,
    /// Stop it, for this reason.
    Stop(String),
}

/// The live lease holders with their scopes; the leases of processes that ended are removed.
pub fn holders(run_dir: &Path) -> Vec<(ProcessId, Scope)> {
    let dir = run_dir.join(LEASE_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut alive = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let holder = entry.file_name().to_str().and_then(|pid| pid.parse().ok()).and_then(|pid| {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let mut words = text.split_whitespace();
            let start_time = words.next()?.parse().ok()?;
            let scope = if words.next() == Some("anywhere") { Scope::Anywhere } else { Scope::Project };
            Some((ProcessId { pid, start_time }, scope))
        });
        match holder {
            Some((holder, scope)) if holder.is_alive() => alive.push((holder, scope)),
            _ => {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    alive
}

/// Whether some lease holder is alive where it counts: a session anywhere, a shell with
/// its working directory inside `project` (or anywhere, for a VM without a project).
pub fn in_use(run_dir: &Path, project: Option<&Path>) -> bool {
    holders(run_dir).iter().any(|(holder, scope)| match (scope, project) {
        (Scope::Project, Some(project)) => holder.cwd().is_some_and(|cwd| cwd.starts_with(project)),
        _ => true,
    })
}

/// Measures how long a VM has gone unused, for the supervisor.
#[derive(Debug, Default)]
pub struct IdleClock {
    idle_since: Option<Instant>,
}

impl IdleClock {
    /// Called periodically: whether the VM should pause or stop now.
    pub fn tick(&mut self, run_dir: &Path, project: Option<&Path>, now: Instant) -> Option<IdleAction> {
        let (pause_after, stop_after) = (auto_pause(run_dir), auto_stop(run_dir));
        if pause_after.is_none() && stop_after.is_none() {
            return None;
        }
        if in_use(run_dir, project) {
            self.idle_since = None;
            return None;
        }
        let idle = now.duration_since(*self.idle_since.get_or_insert(now));
        if let Some(stop_after) = stop_after.filter(|stop_after| idle >= *stop_after) {
            let place = project.map_or(String::new(), |p| format!(" in {}", p.display()));
            let after = humantime::format_duration(stop_after);
            return Some(IdleAction::Stop(format!("stopped after {after} with no shell{place}")));
        }
        pause_after.filter(|pause_after| idle >= *pause_after).map(|_| IdleAction::Pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leases directory planted as a link is never written through.
    #[test]
    fn a_lease_is_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (run_dir, elsewhere) = (dir.path().join("run"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, run_dir.join(LEASE_DIR)).unwrap();
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(take(&run_dir, me, Scope::Project).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "a lease was written through the link");
        let linked_run = dir.path().join("linked-run");
        std::os::unix::fs::symlink(&elsewhere, &linked_run).unwrap();
        assert!(take(&linked_run, me, Scope::Project).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "a lease was written through the link");
        std::fs::remove_file(run_dir.join(LEASE_DIR)).unwrap();
        take(&run_dir, me, Scope::Project).unwrap();
        assert_eq!(holders(&run_dir).len(), 1);
    }

    #[test]
    fn reads_stat_fields_past_a_command_with_spaces() {
        let stat = "42 (my (odd) cmd) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000";
        assert_eq!(stat_field(stat, 4), Some("7"));
        assert_eq!(stat_field(stat, 22), Some("987654"));
    }

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert!(!ProcessId { start_time: me.start_time + 1, ..me }.is_alive());
        assert_eq!(me.cwd().unwrap(), std::env::current_dir().unwrap());
    }

    #[test]
    fn the_clock_runs_only_while_no_holder_is_inside_the_project() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path();
        let inside = std::env::current_dir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        let start = Instant::now();
        let mut clock = IdleClock::default();
        assert_eq!(
            clock.tick(run_dir, Some(&elsewhere), start + Duration::from_secs(99)),
            None,
            "auto-stop is off"
        );

        enable_auto_stop(run_dir, Duration::from_secs(10)).unwrap();
        let me = ProcessId::of(std::process::id()).unwrap();
        take(run_dir, me, Scope::Project).unwrap();
        std::fs::write(run_dir.join(LEASE_DIR).join("999999999"), "5").unwrap();
        assert_eq!(clock.tick(run_dir, Some(&inside), start), None);
        assert!(!run_dir.join(LEASE_DIR).join("999999999").exists(), "a dead holder's lease is dropped");

        // The holder's cwd is outside `elsewhere`: the clock starts, and stops the VM at 10 s.
        assert_eq!(clock.tick(run_dir, Some(&elsewhere), start), None);
        assert_eq!(clock.tick(run_dir, Some(&elsewhere), start + Duration::from_secs(9)), None);
        // Back inside, the clock resets.
        assert_eq!(clock.tick(run_dir, Some(&inside), start + Duration::from_secs(9)), None);
        assert_eq!(clock.tick(run_dir, Some(&elsewhere), start + Duration::from_secs(10)), None);
        // A session keeps it in use wherever it is.
        take(run_dir, me, Scope::Anywhere).unwrap();
        assert_eq!(clock.tick(run_dir, Some(&elsewhere), start + Duration::from_secs(30)), None);
        release(run_dir, me);
        assert!(holders(run_dir).is_empty());
        assert_eq!(clock.tick(run_dir, Some(&elsewhere), start + Duration::from_secs(30)), None);
        let Some(IdleAction::Stop(reason)) =
            clock.tick(run_dir, Some(&elsewhere), start + Duration::from_secs(40))
        else {
            panic!("no stop after the idle time")
        };
        assert!(reason.contains("stopped after 10s with no shell in"), "{reason}");
        // With auto-pause, an idle VM pauses first, and stops at the longer time.
        enable_auto_pause(run_dir, Duration::from_secs(5)).unwrap();
        enable_auto_stop(run_dir, Duration::from_secs(60)).unwrap();
        let mut clock = IdleClock::default();
        assert_eq!(clock.tick(run_dir, Some(&elsewhere), start), None);
        assert_eq!(
            clock.tick(run_dir, Some(&elsewhere), start + Duration::from_secs(5)),
            Some(IdleAction::Pause)
        );
        assert!(matches!(
            clock.tick(run_dir, Some(&elsewhere), start + Duration::from_secs(60)),
            Some(IdleAction::Stop(_))
        ));
    }
}
