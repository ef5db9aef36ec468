//! The per-VM supervisor (DESIGN §5): `mvm supervise NAME`, spawned detached by
//! `mvm start`. It holds the VM's run lock for as long as it lives, brings up the host
//! side (network, overlays, one virtiofsd per share, vhost-device-vsock for QEMU), runs
//! the hypervisor as its child and waits. However the hypervisor ends (stop, guest
//! power-off, crash, `kill -9`), it tears everything down and records why in
//! `status.json`. SIGTERM asks for a graceful stop (the agent powers the guest off; after
//! the timeout, the hypervisor is killed); SIGUSR1 kills at once. A VM that `mvm up`
//! started also stops itself once no shell holding a lease has been in its project for
//! the idle time (`state::lease`).
//!
//! Each boot is [`bring_up::bring_up`], then [`wait::wait`], then [`bring_up::teardown`];
//! a guest's reboot is a new boot.

/// A line of the supervisor's log (its stderr), with the time.
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("[{}] {}", humantime::format_rfc3339_millis(std::time::SystemTime::now()), format!($($arg)*))
    };
}

mod bring_up;
pub mod disk;
pub mod launch;
pub mod pause;
pub mod ports;
pub mod processes;
pub mod sandbox;
pub mod userns;
mod wait;
pub mod watch;

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::config::host::HostConfig;
use crate::name::VmName;
use crate::output::unix_now;
use crate::runtime::status::{Phase, RuntimeStatus};
use crate::runtime::{self, clean_run_dir};
use crate::state::lock::RunLock;
use crate::state::{store, Paths};
use bring_up::{teardown, BroughtUp};
use processes::Processes;

/// How one boot of the VM ended.
enum Ending {
    /// For good, in this phase, for this reason.
    Ended(Phase, String),
    /// The guest asked for a reboot: start it again.
    Reboot,
}

enum Event {
    HypervisorExited(std::process::ExitStatus),
    Signal(i32),
}

/// Runs the supervisor of VM `name` until the VM ends.
pub fn supervise(paths: &Paths, name: &VmName) -> anyhow::Result<()> {
    // Before the lock makes this VM "running": a stop signal from then on is an event,
    // never the default action that would kill the supervisor without a teardown.
    let events = listen_for_signals()?;
    // The privileged operations every boot brings up and takes down.
    let privileges = crate::privileged::client::ThisProcess::new(paths);
    let run_dir = paths.vm_run_dir(name);
    crate::state::paths::ensure_root(&paths.run_dir)?;
    crate::state::paths::own_dir(&run_dir, 0o700)?;
    let Some(_lock) = RunLock::try_acquire(&paths.run_lock(name))? else {
        bail!("VM '{name}' already has a supervisor");
    };
    let mut status = RuntimeStatus {
        phase: Phase::Starting,
        supervisor_pid: std::process::id(),
        hypervisor_pid: None,
        started_at: unix_now(),
        ended_at: None,
        reason: None,
    };
    status.write(&run_dir)?;
    clean_run_dir(&run_dir);
    log!("supervisor {} starting VM '{name}'", std::process::id());
    serve_auto_ports(paths, name, &run_dir);
    let mut reboots = RebootRate::default();
    let (phase, reason) = loop {
        let mut processes = Processes::default();
        let mut brought_up = BroughtUp::default();
        let ending = bring_up::bring_up(
            paths,
            &privileges,
            name,
            &events,
            &mut status,
            &mut processes,
            &mut brought_up,
        )
        .and_then(|booted| wait::wait(paths, name, &events, &mut status, &mut processes, &booted))
        .unwrap_or_else(|error| Ending::Ended(Phase::Crashed, format!("{error:#}")));
        status.phase = Phase::Stopping;
        let _ = status.write(&run_dir);
        let torn_down = teardown(paths, &privileges, name, &mut processes, brought_up);
        match (ending, torn_down) {
            (Ending::Reboot, Ok(())) if !reboots.allow(Instant::now()) => {
                break (Phase::Crashed, reboots.refusal());
            }
            (Ending::Reboot, Ok(())) => {
                log!("the guest rebooted: starting it again");
                status.phase = Phase::Starting;
                status.hypervisor_pid = None;
                status.write(&run_dir)?;
            }
            (Ending::Reboot, Err(error)) => {
                break (Phase::Crashed, format!("the guest rebooted, but teardown failed: {error:#}"))
            }
            (Ending::Ended(phase, reason), Ok(())) => break (phase, reason),
            (Ending::Ended(phase, reason), Err(error)) => {
                break (phase, format!("{reason}; teardown incomplete: {error:#}"))
            }
        }
    };
    log!("VM '{name}' ended: {reason}");
    status.phase = phase;
    status.ended_at = Some(unix_now());
    status.reason = Some(reason);
    status.write(&run_dir)?;
    log!("supervisor done");
    Ok(())
}

/// Forwards the guest's listeners by themselves (`ports`) for as long as the supervisor
/// lives — across reboots and lost agent connections — as the VM's config and the host's
/// let it, read again every second.
fn serve_auto_ports(paths: &Paths, name: &VmName, run_dir: &Path) {
    let console = paths.vm_dir(name).join("log/console.log");
    let (paths, name) = (paths.clone(), name.clone());
    let reload = move || -> anyhow::Result<Option<ports::Policy>> {
        let config = store::load(&paths, &name)?;
        Ok(ports::Policy::of(&config, &HostConfig::load(&paths.config_file)?))
    };
    let policy = reload().unwrap_or_else(|error| {
        log!("automatic port forwarding waits for a readable config: {error:#}");
        None
    });
    // Root's VMs' forwards are open like their DNAT'ed ports; a user's are theirs.
    let uid = nix::unistd::geteuid().as_raw();
    let owner = (uid != 0).then_some(uid);
    let target = ports::AgentTarget {
        vsock: run_dir.join(runtime::AGENT_SOCKET),
        run_dir: run_dir.to_path_buf(),
        console,
    };
    ports::spawn(target, owner, policy, Box::new(reload));
}

fn listen_for_signals() -> anyhow::Result<(Receiver<Event>, Sender<Event>)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let (sender, receiver) = channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])?;
    let forward = sender.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if forward.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    });
    Ok((receiver, sender))
}

/// How often a guest may reboot: each reboot is a whole new boot on the host (boot image,
/// network, disk, every helper), so a guest rebooting in a loop is stopped rather than
/// followed.
#[derive(Default)]
struct RebootRate {
    recent: std::collections::VecDeque<Instant>,
}

impl RebootRate {
    /// At most this many reboots…
    const MOST: usize = 5;
    /// …within this window.
    const WINDOW: Duration = Duration::from_secs(60);

    /// Records a reboot at `now`; whether it may go on.
    fn allow(&mut self, now: Instant) -> bool {
        while self.recent.front().is_some_and(|at| now.duration_since(*at) > Self::WINDOW) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() <= Self::MOST
    }

    fn refusal(&self) -> String {
        format!(
            "the guest rebooted more than {} times within {} s: stopped rather than booted again (`mvm start` boots it)",
            Self::MOST,
            Self::WINDOW.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_rebooting_in_a_loop_is_stopped() {
        let mut rate = RebootRate::default();
        let start = Instant::now();
        for i in 0..RebootRate::MOST {
            assert!(rate.allow(start + Duration::from_secs(i as u64)), "reboot {i}");
        }
        assert!(!rate.allow(start + Duration::from_secs(10)), "a sixth reboot within a minute");
        // Spread out, reboots go on for ever.
        let mut rate = RebootRate::default();
        for i in 0..20 {
            assert!(rate.allow(start + Duration::from_secs(15 * i)), "reboot {i}");
        }
    }
}
