//! Pausing and resuming a running VM (instant re-entry): the request goes to its
//! supervisor (`supervisor::pause`), which answers by taking the request file away and
//! recording the phase; the caller waits for that.

use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::UserError;
use crate::name::VmName;
use crate::runtime::request::{Request, REQUEST_FILE, REQUEST_LOCK};
use crate::runtime::status::{Phase, RuntimeStatus};
use crate::state::store::{self, RunState};
use crate::state::Paths;

/// Whether VM `name` runs with its vCPUs stopped.
pub fn is_paused(paths: &Paths, name: &VmName) -> bool {
    store::run_state(paths, name).is_ok_and(|state| state == RunState::Running)
        && RuntimeStatus::read(&paths.vm_run_dir(name)).is_some_and(|status| status.phase == Phase::Paused)
}

/// Asks VM `name`'s supervisor to pause or resume it and waits for the answer; returns
/// whether the VM is now as asked.
pub fn request(paths: &Paths, name: &VmName, request: Request) -> anyhow::Result<bool> {
    store::load(paths, name)?;
    if store::run_state(paths, name)? != RunState::Running {
        return Err(UserError::conflict(format!("VM '{name}' is not running"))
            .hint(format!("start it with `mvm start {name}`"))
            .into());
    }
    let run_dir = paths.vm_run_dir(name);
    let supervisor = crate::vm::stop::live_supervisor(&run_dir, name)?;
    // One request at a time: two at once would share one file (and their signals merge),
    // and one asker would read the other's answer.
    let _one_at_a_time = crate::state::lock::FileLock::exclusive(&run_dir.join(REQUEST_LOCK))?;
    let file = run_dir.join(REQUEST_FILE);
    crate::atomic::write_atomic(&file, request.as_str().as_bytes())?;
    kill(Pid::from_raw(supervisor as i32), Signal::SIGUSR2).context("cannot signal the supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while file.exists() {
        if Instant::now() > deadline {
            anyhow::bail!("VM '{name}''s supervisor did not answer");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(is_paused(paths, name) == (request == Request::Pause))
}

/// Resumes VM `name` if it is paused; returns whether it was.
pub fn resume_if_paused(paths: &Paths, name: &VmName) -> anyhow::Result<bool> {
    if !is_paused(paths, name) {
        return Ok(false);
    }
    if !request(paths, name, Request::Resume)? {
        anyhow::bail!("VM '{name}' did not resume; see `mvm logs {name} --source supervisor`");
    }
    Ok(true)
}
