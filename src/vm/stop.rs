//! Stopping a VM: a graceful stop (or a kill) through its supervisor, and the end of
//! whatever outlived a supervisor that died.

use crate::error::UserError;
use crate::name::VmName;
use crate::privileged::client::Privileges;
use crate::runtime::status::RuntimeStatus;
use crate::state::lock::{FileLock, RunLock};
use crate::state::store::{self, RunState};
use crate::state::Paths;
use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Stops VM `name`; returns false if it was not running.
pub fn stop(
    paths: &Paths,
    privileges: &dyn Privileges,
    name: &VmName,
    force: bool,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let config = store::load(paths, name)?;
    let run_dir = paths.vm_run_dir(name);
    let owner = store::owner(paths, name).unwrap_or(0);
    if store::run_state(paths, name)? != RunState::Running {
        // A supervisor that died left no record of an end: whatever survived it, and its
        // mounts, links and rules, are this stop's to remove.
        let died = RuntimeStatus::read(&run_dir).is_some_and(|status| status.ended_at.is_none());
        if !died && crate::runtime::orphans::find(&run_dir, owner).is_empty() {
            return Ok(false);
        }
        // No start may begin meanwhile (its helpers would look like survivors).
        let _lifecycle = FileLock::exclusive(&paths.vm_dir(name).join(".lifecycle.lock"))?;
        if store::run_state(paths, name)? != RunState::Running {
            return end_orphans(paths, privileges, &config, &crate::runtime::orphans::find(&run_dir, owner))
                .map(|()| true);
        }
    }
    // No lifecycle lock: a start holds it until the guest answers, and a stop must not
    // wait for the boot it is stopping (the supervisor takes the signal at any phase).
    let supervisor = live_supervisor(&run_dir, name)?;
    crate::runtime::write_stop_timeout(&run_dir, timeout)?;
    let signal = if force { Signal::SIGUSR1 } else { Signal::SIGTERM };
    kill(Pid::from_raw(supervisor as i32), signal).context("cannot signal the supervisor")?;
    let deadline = Instant::now() + timeout + Duration::from_secs(10);
    while RunLock::is_held(&paths.run_lock(name))? {
        if Instant::now() > deadline {
            return Err(UserError::conflict(format!(
                "VM '{name}' did not stop within {} s",
                timeout.as_secs()
            ))
            .hint(format!("try `mvm stop --force {name}`"))
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}

/// The pid of VM `name`'s live supervisor: the one `status.json` names once the new run
/// has written it (a start may still be on its way there) and whose command line is
/// `mvm supervise NAME`, so no stale pid ever gets the signal.
pub(crate) fn live_supervisor(run_dir: &std::path::Path, name: &VmName) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = RuntimeStatus::read(run_dir).filter(|status| status.ended_at.is_none()) {
            let cmdline =
                std::fs::read(format!("/proc/{}/cmdline", status.supervisor_pid)).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
            if args.windows(2).any(|pair| pair[0] == b"supervise" && pair[1] == name.as_str().as_bytes()) {
                return Ok(status.supervisor_pid);
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("VM '{name}' runs, but its supervisor cannot be found from {}", run_dir.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends the processes of VM `config` that outlived its supervisor, then removes what the
/// supervisor would have: its mounts, runtime files, links and rules.
fn end_orphans(
    paths: &Paths,
    privileges: &dyn Privileges,
    config: &crate::config::vm::VmConfig,
    left: &[crate::runtime::orphans::Orphan],
) -> anyhow::Result<()> {
    if !left.is_empty() {
        eprintln!("ending {} process(es) that outlived VM '{}''s supervisor", left.len(), config.name);
    }
    if !crate::runtime::orphans::kill_all(left) {
        anyhow::bail!("some processes of VM '{}' would not die", config.name);
    }
    let run_dir = paths.vm_run_dir(&config.name);
    if std::fs::symlink_metadata(&run_dir).is_ok() && !crate::fs::is_own_dir(&run_dir) {
        anyhow::bail!("{} is not a directory of this user's; remove it", run_dir.display());
    }
    crate::runtime::clean_run_dir(&run_dir);
    crate::supervisor::launch::remove_scratch_layers(&crate::state::disk::files_dir(
        &paths.vm_dir(&config.name),
    ))?;
    privileges.network().down(config)?;
    privileges.disk().down(config)?;
    if let Some(mut status) = RuntimeStatus::read(&run_dir) {
        status.phase = crate::runtime::status::Phase::Crashed;
        status.ended_at = Some(crate::output::unix_now());
        status.reason = Some("its supervisor died; `mvm stop` ended the processes it left".into());
        status.write(&run_dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privileged::client::recording::Recorder;
    use crate::vm::fixtures::web;

    /// A supervisor that died without a teardown: `stop` takes the VM's network and disk
    /// down in its place, and records the crash.
    #[test]
    fn a_stop_after_the_supervisor_died_takes_down_what_it_left() {
        let (_dir, paths, name) = web();
        let run_dir = paths.vm_run_dir(&name);
        std::fs::create_dir_all(&run_dir).unwrap();
        let died = RuntimeStatus {
            phase: crate::runtime::status::Phase::Running,
            supervisor_pid: u32::MAX,
            hypervisor_pid: None,
            started_at: 1,
            ended_at: None,
            reason: None,
        };
        died.write(&run_dir).unwrap();
        let recorder = Recorder::default();
        assert!(stop(&paths, &recorder, &name, false, Duration::from_secs(1)).unwrap());
        assert_eq!(recorder.calls(), ["network-down web", "disk-down web"]);
        let status = RuntimeStatus::read(&run_dir).unwrap();
        assert_eq!(status.phase, crate::runtime::status::Phase::Crashed);

        // Once recorded, there is nothing left to stop.
        let again = Recorder::default();
        assert!(!stop(&paths, &again, &name, false, Duration::from_secs(1)).unwrap());
        assert!(again.calls().is_empty());
    }
}
