//! The per-VM supervisor (DESIGN §5): `mvm supervise NAME`, spawned detached by
//! `mvm start`. It holds the VM's run lock for as long as it lives, brings up the host
//! side (network, overlays, one virtiofsd per share, vhost-device-vsock for QEMU), runs
//! the hypervisor as its child and waits. However the hypervisor ends (stop, guest
//! power-off, crash, `kill -9`), it tears everything down and records why in
//! `status.json`. SIGTERM asks for a graceful stop (the agent powers the guest off; after
//! the timeout, the hypervisor is killed); SIGUSR1 kills at once. A VM that `mvm up`
//! started also stops itself once no shell holding a lease has been in its project for
//! the idle time (`state::lease`).

/// A line of the supervisor's log (its stderr), with the time.
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("[{}] {}", humantime::format_rfc3339_millis(std::time::SystemTime::now()), format!($($arg)*))
    };
}

pub mod disk;
pub mod launch;
pub mod pause;
pub mod ports;
pub mod processes;
pub mod sandbox;
pub mod userns;
pub mod watch;

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::boot::initramfs::{self, BaseSpec};
use crate::config::host::HostConfig;
use crate::contract::GUEST_CONFIG;
use crate::name::VmName;
use crate::output::unix_now;
use crate::runtime::request::{Request, REQUEST_FILE};
use crate::runtime::status::{Phase, RuntimeStatus};
use crate::runtime::{self, clean_run_dir, DEFAULT_STOP_TIMEOUT};
use crate::state::lease::{IdleAction, IdleClock};
use crate::state::lock::RunLock;
use crate::state::{store, Paths};
use crate::vmm::Vmm;
use launch::{Launch, RunAs};
use processes::Processes;

/// How often the supervisor looks at the VM's leases (auto-stop, `mvm up`).
const LEASE_POLL: Duration = Duration::from_secs(1);
/// The ending recorded for a stop asked for by `mvm stop`.
const STOPPED_BY_MVM_STOP: &str = "stopped by mvm stop";
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
        let ending = run(paths, name, &events, &mut status, &mut processes, &mut brought_up)
            .unwrap_or_else(|error| Ending::Ended(Phase::Crashed, format!("{error:#}")));
        status.phase = Phase::Stopping;
        let _ = status.write(&run_dir);
        let torn_down = teardown(paths, name, &mut processes, brought_up);
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

fn run(
    paths: &Paths,
    name: &VmName,
    events: &(Receiver<Event>, std::sync::mpsc::Sender<Event>),
    status: &mut RuntimeStatus,
    processes: &mut Processes,
    brought_up: &mut BroughtUp,
) -> anyhow::Result<Ending> {
    // `mvm start` watches the console for the guest's ready line: drop the last boot's first.
    let _ = std::fs::remove_file(paths.vm_dir(name).join("log/console.log"));
    let started = Instant::now();
    let host = HostConfig::load(&paths.config_file)?;
    let config = store::load(paths, name)?;
    launch::ensure_dirs(paths, &config)?;
    // Recorded first, like the network below.
    brought_up.disk = Some(config.clone());
    let moved = disk::bring_up(paths, &config, &launch::RunAs::this_process())?;
    if !moved.is_empty() {
        log!("moved {} onto the VM's disk ({} ms)", moved.join(", "), started.elapsed().as_millis());
    }
    let files = crate::state::disk::files_dir(&paths.vm_dir(name));
    launch::ensure_trees(&files, &config)?;
    let mut launch = Launch::prepare(paths, &host, &config)?;
    launch::prepare_project_layer(&launch.config, &files, launch.project_owner)?;
    log!("{}", launch.vmm_choice);
    if let Some(mkfs) = &launch.mkfs {
        let vm_dir = paths.vm_dir(name);
        let size = crate::state::disk::system_mib(&config);
        if crate::state::system_disk::ensure(&vm_dir, size, config.ephemeral_system, mkfs)? {
            let kind = if config.ephemeral_system { "an ephemeral" } else { "a" };
            log!("made {kind} system disk ({} ms)", started.elapsed().as_millis());
        }
    }
    if let Some(warning) = &launch.accel_warning {
        log!("{warning}");
    }
    let run_dir = paths.vm_run_dir(name);

    let notify_module = file_event_module(paths, &launch);
    let base = {
        let cache = paths.user_cache();
        std::fs::create_dir_all(cache.parent().expect("the cache has a parent"))?;
        crate::state::paths::own_dir(&cache, 0o700)?;
        initramfs::cached_base(&cache, &BaseSpec::for_kernel(&launch.kernel, notify_module.clone())?)?
    };
    let guest = serde_json::to_vec(&launch.guest)?;
    initramfs::write_boot_image(&base, &[(GUEST_CONFIG, &guest)], &launch.spec.initramfs)?;
    log!("boot image ready ({} ms)", started.elapsed().as_millis());

    // Recorded first: a bring-up that fails half-way is torn down like a finished one.
    brought_up.network = Some(config.clone());
    crate::privileged::client::host_network(paths).up(&config)?;
    log!("network up ({} ms)", started.elapsed().as_millis());
    // Until this boot ends: the sockets belong to this boot's bridge.
    let _dns = serve_dns(paths, &config)?;
    for pin in &launch.pins {
        crate::host::mounts::pin_directory(
            &crate::fs::Tree::open_exact(&pin.source)?,
            &pin.at,
            pin.read_only,
        )?;
    }
    // The shares were planned for the project's owner: the directory now bound must be
    // theirs still (not another directory renamed into its place meanwhile).
    if launch.config.project.is_some() && launch.run_as == RunAs::Root {
        use std::os::unix::fs::MetadataExt;
        let bound = std::fs::metadata(run_dir.join(runtime::PINNED_PROJECT))?;
        if (bound.uid(), bound.gid()) != launch.project_owner {
            bail!("the project directory changed owner while the VM was starting");
        }
    }
    if launch.run_as == RunAs::Root {
        for overlay in &launch.overlays {
            processes::mount_overlay(overlay)?;
        }
    }
    // Until this boot ends (a rebooted guest gets a watcher of its own).
    let file_events = notify_module.and_then(|_| file_events_target(paths, &launch)).map(watch::spawn);
    // Every host change is then pushed to the guest, which drops what it cached: the
    // project's entries and attributes may be cached for long (no revalidation round
    // trips), unless part of the project goes unwatched.
    if file_events.as_ref().is_some_and(|watcher| watcher.coverage == watch::Coverage::Whole) {
        for share in launch.spec.shares.iter_mut().filter(|share| share.tag == "project") {
            share.changes_pushed = true;
        }
    }
    let log_dir = paths.vm_dir(name).join("log");
    let filter = sandbox::no_privilege_filter()?;
    // This boot's: the VM's own trees' ids are the owner's subordinate ones.
    let mapped = match launch.run_as {
        RunAs::User { uid, gid, sub: Some(sub) } => Some(userns::MappedNamespace::make((uid, gid), sub)?),
        _ => None,
    };
    for share in &launch.spec.shares {
        let log = log_dir.join(format!("virtiofsd-{}.log", share.tag));
        let overlay = launch.overlays.iter().find(|overlay| overlay.merged == share.dir);
        let namespace = match (launch.run_as, &mapped) {
            (RunAs::Root, _) => None,
            (_, Some(namespace)) if share.ids == crate::vmm::GuestIds::Subordinate => {
                Some(userns::Namespace::Mapped { namespace, overlay, shared_dir: &share.dir })
            }
            (RunAs::User { uid, gid, .. }, _) => Some(userns::Namespace::Own { owner: (uid, gid), overlay }),
        };
        processes.spawn(
            &format!("virtiofsd[{}]", share.tag),
            &launch.virtiofsd,
            &crate::vmm::virtiofsd::args(share),
            &log,
            namespace,
            (!share.read_only).then(|| filter.clone()),
        )?;
    }
    if let Some(vhost_vsock) = &launch.vhost_vsock {
        let args = crate::vmm::qemu::vhost_vsock_args(&launch.vhost_vsock_socket, &launch.spec);
        processes.spawn(
            "vhost-device-vsock",
            vhost_vsock,
            &args,
            &log_dir.join("vhost-device-vsock.log"),
            None,
            None,
        )?;
    }
    let mut sockets: Vec<&Path> = launch.spec.shares.iter().map(|s| s.socket.as_path()).collect();
    if launch.vhost_vsock.is_some() {
        sockets.push(&launch.vhost_vsock_socket);
    }
    processes.wait_for_sockets(&sockets, Duration::from_secs(10))?;
    log!("{} device backends ready ({} ms)", sockets.len(), started.elapsed().as_millis());

    let program = launch.hypervisor.display().to_string();
    let mut hypervisor = processes::spawn_hypervisor(
        &launch.hypervisor,
        &launch.hypervisor_args(),
        &log_dir.join("hypervisor.log"),
    )?;
    let hypervisor_pid = hypervisor.id();
    log!("{program} running as {hypervisor_pid} ({} ms)", started.elapsed().as_millis());
    status.phase = Phase::Running;
    status.hypervisor_pid = Some(hypervisor_pid);
    status.write(&run_dir)?;
    let sender = events.1.clone();
    std::thread::spawn(move || {
        if let Ok(exit) = hypervisor.wait() {
            let _ = sender.send(Event::HypervisorExited(exit));
        }
    });

    let project = launch.config.project.as_ref().map(|project| project.path.clone());
    let mut idle = IdleClock::default();
    // Once a stop was asked for: until when the guest may take, and why it stops.
    let mut stop: Option<(Instant, String)> = None;
    // Whether the guest reached its ready line (kept: the console is rotated later).
    let mut ready = false;
    // Set when a helper (virtiofsd, vhost-device-vsock) ended under the running VM.
    let mut helper_failure: Option<String> = None;
    // Whether the vCPUs are stopped (`pause`).
    let mut paused = false;
    loop {
        let event = match &stop {
            Some((deadline, _)) => match events.0.recv_timeout(*deadline - Instant::now().min(*deadline)) {
                Ok(event) => event,
                Err(_) => {
                    log!("graceful stop timed out; killing {program}");
                    let _ = kill(Pid::from_raw(hypervisor_pid as i32), Signal::SIGKILL);
                    stop = stop.map(|(_, reason)| (Instant::now() + Duration::from_secs(3600), reason));
                    continue;
                }
            },
            None => match events.0.recv_timeout(LEASE_POLL) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    if !ready && launch::guest_ready(&launch.spec.console_log) {
                        ready = true;
                        give_back_free_memory();
                    }
                    // A share's or vsock's backend gone leaves a guest that hangs on it:
                    // end the VM, saying which one went.
                    if let Some(ended) = processes.first_ended() {
                        // A guest's power-off disconnects the backends as the hypervisor
                        // exits: give that exit a moment to arrive first.
                        let grace = Instant::now() + Duration::from_secs(2);
                        let mut signals = Vec::new();
                        while let Ok(event) =
                            events.0.recv_timeout(grace.saturating_duration_since(Instant::now()))
                        {
                            match event {
                                Event::HypervisorExited(exit) => {
                                    return Ok(classify_exit(&launch, exit, stop.map(|(_, reason)| reason)));
                                }
                                signal => signals.push(signal),
                            }
                        }
                        for signal in signals {
                            let _ = events.1.send(signal);
                        }
                        log!("{ended}: killing {program}");
                        let _ = kill(Pid::from_raw(hypervisor_pid as i32), Signal::SIGKILL);
                        helper_failure = Some(format!("{ended}, so the VM was stopped"));
                        stop = Some((Instant::now() + Duration::from_secs(3600), String::new()));
                        continue;
                    }
                    // The guest fills the console; the supervisor's own log it can fill
                    // only slowly (what a guest causes there is throttled), but it is
                    // kept to the same size.
                    let own_log = paths.supervisor_log(name);
                    for log in [&launch.spec.console_log, &own_log] {
                        if let Err(error) = crate::log_cap::cap_log(log, crate::log_cap::LOG_CAP) {
                            log!("cannot rotate {}: {error}", log.display());
                        }
                    }
                    match idle.tick(&run_dir, project.as_deref(), Instant::now()) {
                        Some(IdleAction::Pause) if !paused && ready => {
                            log!("no shell in the project: pausing");
                            set_paused(&launch, hypervisor_pid, status, &run_dir, &mut paused, true);
                        }
                        Some(IdleAction::Stop(reason)) => {
                            log!("{reason}: powering off");
                            set_paused(&launch, hypervisor_pid, status, &run_dir, &mut paused, false);
                            request_power_off(&launch);
                            stop = Some((Instant::now() + DEFAULT_STOP_TIMEOUT, reason));
                        }
                        _ => {}
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => bail!("event channel closed"),
            },
        };
        match event {
            Event::HypervisorExited(exit) => {
                if let Some(reason) = helper_failure {
                    return Ok(Ending::Ended(Phase::Crashed, reason));
                }
                return Ok(classify_exit(&launch, exit, stop.map(|(_, reason)| reason)));
            }
            Event::Signal(signal) if signal == nix::libc::SIGUSR2 => {
                let request = Request::read(&run_dir);
                ready = ready || launch::guest_ready(&launch.spec.console_log);
                match request {
                    Some(Request::Pause) if stop.is_none() && ready => {
                        set_paused(&launch, hypervisor_pid, status, &run_dir, &mut paused, true)
                    }
                    Some(Request::Resume) => {
                        set_paused(&launch, hypervisor_pid, status, &run_dir, &mut paused, false)
                    }
                    _ => {}
                }
                // The asker waits for the request to go, then reads the phase.
                let _ = status.write(&run_dir);
                let _ = std::fs::remove_file(run_dir.join(REQUEST_FILE));
            }
            Event::Signal(signal) if signal == nix::libc::SIGUSR1 => {
                log!("forced stop: killing {program}");
                let _ = kill(Pid::from_raw(hypervisor_pid as i32), Signal::SIGKILL);
                stop.get_or_insert((Instant::now() + Duration::from_secs(3600), STOPPED_BY_MVM_STOP.into()));
            }
            Event::Signal(_)
                if stop.is_none() && !(ready || launch::guest_ready(&launch.spec.console_log)) =>
            {
                // Still booting: nothing in the guest to save, so no reason to wait for it.
                log!("stop requested during boot: killing {program}");
                let _ = kill(Pid::from_raw(hypervisor_pid as i32), Signal::SIGKILL);
                stop = Some((Instant::now() + Duration::from_secs(3600), STOPPED_BY_MVM_STOP.into()));
            }
            Event::Signal(_) if stop.is_none() => {
                // A paused guest cannot power itself off: one that will not resume is killed.
                set_paused(&launch, hypervisor_pid, status, &run_dir, &mut paused, false);
                if paused {
                    log!("the paused guest did not resume: killing {program}");
                    let _ = kill(Pid::from_raw(hypervisor_pid as i32), Signal::SIGKILL);
                    stop = Some((Instant::now() + Duration::from_secs(3600), STOPPED_BY_MVM_STOP.into()));
                    continue;
                }
                let timeout = runtime::stop_timeout(&run_dir);
                log!("graceful stop requested (timeout {} s)", timeout.as_secs());
                request_power_off(&launch);
                stop = Some((Instant::now() + timeout, STOPPED_BY_MVM_STOP.into()));
            }
            Event::Signal(_) => {}
        }
    }
}

/// The guest's file-event module, when the VM has a project to raise events for and the
/// module is built and root's alone; otherwise the log says why there are none.
fn file_event_module(paths: &Paths, launch: &Launch) -> Option<std::path::PathBuf> {
    use crate::boot::notify::{self, Availability};
    launch.config.project.as_ref()?;
    let release = launch.kernel.release.as_deref()?;
    match notify::find(paths, release) {
        Availability::Ready(module) => Some(module),
        other => {
            if let Some(why) = notify::why_off(&other, release) {
                log!("{why}");
                runtime::note_file_events(&paths.vm_run_dir(&launch.config.name), &format!("off: {why}"));
            }
            None
        }
    }
}

/// What the project's file events need (the guest having the module).
fn file_events_target(paths: &Paths, launch: &Launch) -> Option<watch::WatchTarget> {
    let project = launch.config.project.as_ref()?;
    let name = &launch.config.name;
    let (vm_dir, run_dir) = (paths.vm_dir(name), paths.vm_run_dir(name));
    let upper = launch::project_overlay(&launch.config, &vm_dir, &run_dir, launch.run_as).map(|o| o.upper);
    let guest_lower =
        launch.guest.mounts.iter().find(|mount| mount.tag == "project" && mount.layer.is_some());
    Some(watch::WatchTarget {
        project: launch::project_source(&launch.config, &run_dir, launch.run_as)?,
        upper,
        guest_root: project.path.display().to_string(),
        guest_lower: guest_lower.map(|mount| mount.share_path()),
        vsock: launch.spec.vsock_socket.clone(),
        console: launch.spec.console_log.clone(),
        run_dir,
    })
}

/// Answers the guest's DNS on its gateway until the returned server is dropped (`dns`).
/// Sockets that cannot be had end the start: a guest that resolves nothing, or only
/// over one transport, fails later in ways far harder to tell.
fn serve_dns(paths: &Paths, config: &crate::config::vm::VmConfig) -> anyhow::Result<crate::dns::Server> {
    let sockets = crate::privileged::client::host_network(paths).dns_sockets(config).context(
        "no DNS for the guest (a host service holding port 53 on every address must allow others, \
         with SO_REUSEADDR as dnsmasq does, or listen on its own addresses only)",
    )?;
    let resolver = crate::dns::HostResolver::from_env();
    Ok(crate::dns::serve(sockets, config.network.address, resolver, config.offline)?)
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

/// Pauses (`pause`) or resumes the VM if it is not so already, recording it in the status.
fn set_paused(
    launch: &Launch,
    hypervisor: u32,
    status: &mut RuntimeStatus,
    run_dir: &Path,
    paused: &mut bool,
    pause: bool,
) {
    if *paused == pause {
        return;
    }
    let started = Instant::now();
    let result = if pause { pause::pause(launch, hypervisor) } else { pause::resume(launch, hypervisor) };
    let word = if pause { "pause" } else { "resume" };
    match result {
        Ok(()) => {
            *paused = pause;
            if !pause {
                if let Err(error) = pause::set_clock(launch) {
                    log!("{error:#}");
                }
            }
            log!("{word}d in {} ms", started.elapsed().as_millis());
        }
        Err(error) => log!("cannot {word}: {error:#}"),
    }
    status.phase = if *paused { Phase::Paused } else { Phase::Running };
    let _ = status.write(run_dir);
}

/// Asks the guest to power off: through the agent, else through the hypervisor.
fn request_power_off(launch: &Launch) {
    if crate::agent::client::power_off(&launch.spec.vsock_socket).is_ok() {
        return;
    }
    let result = match launch.vmm {
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
    let program = launch.hypervisor.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
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

fn listen_for_signals() -> anyhow::Result<(Receiver<Event>, std::sync::mpsc::Sender<Event>)> {
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

/// Returns the heap the bring-up used and freed (the boot image, rule sets, netlink) to
/// the host: the supervisor then idles for the VM's whole life.
fn give_back_free_memory() {
    // SAFETY: malloc_trim only releases free memory of glibc's own heap; no pointer of
    // ours is touched.
    unsafe {
        nix::libc::malloc_trim(0);
    }
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

/// What a boot brought up on the host that its teardown takes down: the VM's files disk
/// and its network (each recorded before it is brought up, so a half-way bring-up is
/// taken down too).
#[derive(Default)]
struct BroughtUp {
    disk: Option<crate::config::vm::VmConfig>,
    network: Option<crate::config::vm::VmConfig>,
}

/// Undoes everything `run` did, whatever state it got to; the first error is returned
/// after every step was tried.
fn teardown(
    paths: &Paths,
    name: &VmName,
    processes: &mut Processes,
    brought_up: BroughtUp,
) -> anyhow::Result<()> {
    let mut first_error: Option<anyhow::Error> = None;
    let mut note = |result: anyhow::Result<()>| {
        if let Err(error) = result {
            log!("teardown: {error:#}");
            first_error.get_or_insert(error);
        }
    };
    processes.stop_all(Duration::from_secs(3));
    let run_dir = paths.vm_run_dir(name);
    for mounted in runtime::MOUNT_POINTS {
        note(crate::host::mounts::unmount_if_mounted(&run_dir.join(mounted)));
    }
    if !crate::host::mounts::is_mount_point(&run_dir.join(runtime::PROJECT_MERGED)) {
        note(launch::remove_scratch_layers(&crate::state::disk::files_dir(&paths.vm_dir(name))));
    }
    if let Some(config) = brought_up.network {
        note(crate::privileged::client::host_network(paths).down(&config));
    }
    // Last: the processes that wrote there have ended (a stopped VM holds no mount).
    if let Some(config) = brought_up.disk {
        note(crate::privileged::client::host_disk(paths).down(&config));
    }
    clean_run_dir(&run_dir);
    first_error.map_or(Ok(()), Err)
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
