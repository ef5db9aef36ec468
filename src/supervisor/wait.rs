//! Waiting on a running VM: the hypervisor's exit, the signals `mvm stop`, `pause` and
//! `resume` send, a helper that ended under the guest, and, once a second, the idle
//! clock (`mvm up`), log rotation and whether the guest is ready; then how the boot ended.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::bring_up::Booted;
use super::launch::{self, Launch};
use super::processes::Processes;
use super::{pause, Ending, Event};
use crate::name::VmName;
use crate::runtime::request::{Request, REQUEST_FILE};
use crate::runtime::status::{Phase, RuntimeStatus};
use crate::runtime::{self, DEFAULT_STOP_TIMEOUT};
use crate::state::lease::{IdleAction, IdleClock};
use crate::state::Paths;
use crate::vmm::Vmm;

/// How often the supervisor looks at the VM's leases (auto-stop, `mvm up`).
const LEASE_POLL: Duration = Duration::from_secs(1);
/// The ending recorded for a stop asked for by `mvm stop`.
const STOPPED_BY_MVM_STOP: &str = "stopped by mvm stop";
/// How long a hypervisor killed on purpose may take to be seen exiting.
const KILLED: Duration = Duration::from_secs(3600);

/// Waits until the boot `booted` ends, and says how.
pub(super) fn wait(
    paths: &Paths,
    name: &VmName,
    events: &(Receiver<Event>, Sender<Event>),
    status: &mut RuntimeStatus,
    processes: &mut Processes,
    booted: &Booted,
) -> anyhow::Result<Ending> {
    let mut waiting = Waiting {
        launch: &booted.launch,
        hypervisor_pid: booted.hypervisor_pid,
        program: &booted.program,
        run_dir: paths.vm_run_dir(name),
        own_log: paths.supervisor_log(name),
        status,
        idle: IdleClock::default(),
        stop: None,
        ready: false,
        helper_failure: None,
        paused: false,
    };
    loop {
        let timeout = match &waiting.stop {
            Some((deadline, _)) => deadline.saturating_duration_since(Instant::now()),
            None => LEASE_POLL,
        };
        let event = match events.0.recv_timeout(timeout) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) if waiting.stop.is_some() => {
                waiting.kill_now("graceful stop timed out; killing", None);
                continue;
            }
            Err(RecvTimeoutError::Timeout) => match waiting.tick(events, processes) {
                Some(ending) => return Ok(ending),
                None => continue,
            },
            Err(RecvTimeoutError::Disconnected) => bail!("event channel closed"),
        };
        match event {
            Event::HypervisorExited(exit) => return Ok(waiting.ended(exit)),
            Event::Signal(signal) => waiting.on_signal(signal),
        }
    }
}

/// What the wait knows of the running boot.
struct Waiting<'a> {
    launch: &'a Launch,
    hypervisor_pid: u32,
    program: &'a str,
    run_dir: PathBuf,
    own_log: PathBuf,
    status: &'a mut RuntimeStatus,
    idle: IdleClock,
    /// Once a stop was asked for: until when the guest may take, and why it stops.
    stop: Option<(Instant, String)>,
    /// Whether the guest reached its ready line (kept: the console is rotated later).
    ready: bool,
    /// Set when a helper (virtiofsd, vhost-device-vsock) ended under the running VM.
    helper_failure: Option<String>,
    /// Whether the vCPUs are stopped (`pause`).
    paused: bool,
}

impl Waiting<'_> {
    /// Once a second with no event: readiness, a helper gone, logs, the idle clock.
    fn tick(
        &mut self,
        events: &(Receiver<Event>, Sender<Event>),
        processes: &mut Processes,
    ) -> Option<Ending> {
        if !self.ready && launch::guest_ready(&self.launch.spec.console_log) {
            self.ready = true;
            give_back_free_memory();
        }
        // A share's or vsock's backend gone leaves a guest that hangs on it: end the VM,
        // saying which one went.
        if let Some(ended) = processes.first_ended() {
            // A guest's power-off disconnects the backends as the hypervisor exits: give
            // that exit a moment to arrive first.
            let grace = Instant::now() + Duration::from_secs(2);
            let mut signals = Vec::new();
            while let Ok(event) = events.0.recv_timeout(grace.saturating_duration_since(Instant::now())) {
                match event {
                    Event::HypervisorExited(exit) => return Some(self.classify(exit)),
                    signal => signals.push(signal),
                }
            }
            for signal in signals {
                let _ = events.1.send(signal);
            }
            self.kill_now(&format!("{ended}: killing"), Some(String::new()));
            self.helper_failure = Some(format!("{ended}, so the VM was stopped"));
            return None;
        }
        // The guest fills the console; the supervisor's own log it can fill only slowly
        // (what a guest causes there is throttled), but it is kept to the same size.
        for log in [&self.launch.spec.console_log, &self.own_log] {
            if let Err(error) = crate::log_cap::cap_log(log, crate::log_cap::LOG_CAP) {
                log!("cannot rotate {}: {error}", log.display());
            }
        }
        let project = self.launch.config.project.as_ref().map(|project| project.path.as_path());
        match self.idle.tick(&self.run_dir, project, Instant::now()) {
            Some(IdleAction::Pause) if !self.paused && self.ready => {
                log!("no shell in the project: pausing");
                self.set_paused(true);
            }
            Some(IdleAction::Stop(reason)) => {
                log!("{reason}: powering off");
                self.set_paused(false);
                request_power_off(self.launch);
                self.stop = Some((Instant::now() + DEFAULT_STOP_TIMEOUT, reason));
            }
            _ => {}
        }
        None
    }

    /// `SIGUSR2`: a pause or resume request; `SIGUSR1`: kill now; any other: stop.
    fn on_signal(&mut self, signal: i32) {
        if signal == nix::libc::SIGUSR2 {
            let request = Request::read(&self.run_dir);
            self.ready = self.ready || launch::guest_ready(&self.launch.spec.console_log);
            match request {
                Some(Request::Pause) if self.stop.is_none() && self.ready => self.set_paused(true),
                Some(Request::Resume) => self.set_paused(false),
                _ => {}
            }
            // The asker waits for the request to go, then reads the phase.
            let _ = self.status.write(&self.run_dir);
            let _ = std::fs::remove_file(self.run_dir.join(REQUEST_FILE));
        } else if signal == nix::libc::SIGUSR1 {
            log!("forced stop: killing {}", self.program);
            let _ = kill(Pid::from_raw(self.hypervisor_pid as i32), Signal::SIGKILL);
            self.stop.get_or_insert((Instant::now() + KILLED, STOPPED_BY_MVM_STOP.into()));
        } else if self.stop.is_some() {
            // Already stopping.
        } else if !(self.ready || launch::guest_ready(&self.launch.spec.console_log)) {
            // Still booting: nothing in the guest to save, so no reason to wait for it.
            self.kill_now("stop requested during boot: killing", Some(STOPPED_BY_MVM_STOP.into()));
        } else {
            // A paused guest cannot power itself off: one that will not resume is killed.
            self.set_paused(false);
            if self.paused {
                self.kill_now("the paused guest did not resume: killing", Some(STOPPED_BY_MVM_STOP.into()));
                return;
            }
            let timeout = runtime::stop_timeout(&self.run_dir);
            log!("graceful stop requested (timeout {} s)", timeout.as_secs());
            request_power_off(self.launch);
            self.stop = Some((Instant::now() + timeout, STOPPED_BY_MVM_STOP.into()));
        }
    }

    /// Kills the hypervisor, saying `why` in the log; the stop's reason becomes `reason`
    /// (kept when `None`).
    fn kill_now(&mut self, why: &str, reason: Option<String>) {
        log!("{why} {}", self.program);
        let _ = kill(Pid::from_raw(self.hypervisor_pid as i32), Signal::SIGKILL);
        let reason = reason.or_else(|| self.stop.take().map(|(_, reason)| reason)).unwrap_or_default();
        self.stop = Some((Instant::now() + KILLED, reason));
    }

    /// How the boot ended, the hypervisor having exited with `exit`.
    fn ended(mut self, exit: std::process::ExitStatus) -> Ending {
        if let Some(reason) = self.helper_failure.take() {
            return Ending::Ended(Phase::Crashed, reason);
        }
        self.classify(exit)
    }

    fn classify(&self, exit: std::process::ExitStatus) -> Ending {
        classify_exit(self.launch, exit, self.stop.as_ref().map(|(_, reason)| reason.clone()))
    }

    /// Pauses (`pause`) or resumes the VM if it is not so already, recording it in the
    /// status.
    fn set_paused(&mut self, pause: bool) {
        if self.paused == pause {
            return;
        }
        let started = Instant::now();
        let result = if pause {
            pause::pause(self.launch, self.hypervisor_pid)
        } else {
            pause::resume(self.launch, self.hypervisor_pid)
        };
        let word = if pause { "pause" } else { "resume" };
        match result {
            Ok(()) => {
                self.paused = pause;
                if !pause {
                    if let Err(error) = pause::set_clock(self.launch) {
                        log!("{error:#}");
                    }
                }
                log!("{word}d in {} ms", started.elapsed().as_millis());
            }
            Err(error) => log!("cannot {word}: {error:#}"),
        }
        self.status.phase = if self.paused { Phase::Paused } else { Phase::Running };
        let _ = self.status.write(&self.run_dir);
    }
}

/// Asks the guest to power off: through the agent, else through the hypervisor.
fn request_power_off(launch: &Launch) {
    if crate::agent::client::power_off(&launch.spec.vsock_socket).is_ok() {
        return;
    }
    let result = match launch.checked.vmm {
        Vmm::CloudHypervisor => crate::vmm::api_client::power_button(&launch.spec.control_socket),
        Vmm::Qemu => crate::vmm::qmp::execute(&launch.spec.control_socket, "system_powerdown"),
    };
    if let Err(error) = result {
        log!("cannot ask the guest to power off: {error:#}");
    }
}

/// Tells how the run ended from the hypervisor's exit and the console.
fn classify_exit(launch: &Launch, exit: std::process::ExitStatus, stop_reason: Option<String>) -> Ending {
    let console = launch::log_tail(&launch.spec.console_log, 40);
    if exit.success() && stop_reason.is_none() && console.contains(crate::contract::REBOOT_MARKER) {
        return Ending::Reboot;
    }
    let (phase, reason) = classify_end(launch, exit, stop_reason, &console);
    Ending::Ended(phase, reason)
}

fn classify_end(
    launch: &Launch,
    exit: std::process::ExitStatus,
    stop_reason: Option<String>,
    console: &str,
) -> (Phase, String) {
    use std::os::unix::process::ExitStatusExt;
    let program =
        launch.checked.hypervisor.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(signal) = exit.signal() {
        let phase = if stop_reason.is_some() { Phase::Stopped } else { Phase::Crashed };
        return (phase, format!("{program} was killed by signal {signal}"));
    }
    if let Some(line) =
        console.lines().find(|line| line.contains("Kernel panic") || line.contains("boot failed"))
    {
        return (Phase::Crashed, format!("the guest failed: {}", line.trim()));
    }
    match (exit.code(), stop_reason) {
        (Some(0), Some(reason)) => (Phase::Stopped, reason),
        (Some(0), None) => (Phase::Stopped, "the guest powered off".to_string()),
        (code, _) => (
            Phase::Crashed,
            format!(
                "{program} exited with status {}; its log ends with:\n{}",
                code.unwrap_or(-1),
                launch::log_tail(&launch.spec.console_log.with_file_name("hypervisor.log"), 5)
            ),
        ),
    }
}

/// Returns the heap the bring-up used and freed (the boot image, rule sets, netlink) to
/// the host: the supervisor then idles for the VM's whole life.
fn give_back_free_memory() {
    // SAFETY: malloc_trim only releases free memory of glibc's own heap; no pointer of
    // ours is touched.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
