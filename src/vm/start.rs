//! Starting a VM: spawn its supervisor (as the VM's owner is this process) and wait
//! until the guest agent answers.

use crate::config::host::HostConfig;
use crate::config::vm::VmConfig;
use crate::error::UserError;
use crate::name::VmName;
use crate::project_env;
use crate::runtime::status::RuntimeStatus;
use crate::state::lock::{FileLock, RunLock};
use crate::state::store::{self, RunState};
use crate::state::Paths;
use crate::supervisor::launch;
use anyhow::Context;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Gives a VM made before disk limits the host's default, in its record, and says so
/// (its files then move onto a disk of that size at this start: `state::disk`).
fn give_a_disk_limit(paths: &Paths, config: &VmConfig, host: &HostConfig) -> anyhow::Result<()> {
    if config.disk_mib.is_some() {
        return Ok(());
    }
    // Large enough for what it kept (its files disk is three quarters of the limit), with
    // a GiB to spare, in whole GiB.
    let kept = crate::supervisor::disk::kept_trees_mib(&paths.vm_dir(&config.name));
    let needed = (kept + 1024) * 4 / 3;
    let limit = crate::spec::DiskSize::from_mib(host.defaults.disk.mib().max(needed.div_ceil(1024) * 1024));
    let updated = VmConfig { disk_mib: Some(limit.mib()), ..config.clone() };
    updated.save(&paths.vm_config(&config.name))?;
    eprintln!(
        "VM '{}' was made before disk limits: it now has a limit of {limit} (the default, or what its files need); they move onto its disk at this start",
        config.name
    );
    if crate::state::system_disk::allocated_bytes(&paths.vm_dir(&config.name)).is_some() {
        eprintln!("  its system disk, made before, keeps its size (`mvm inspect` shows it)");
    }
    Ok(())
}

/// What `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    AlreadyRunning,
    /// It was paused, and now runs again.
    Resumed,
    Spawned,
    Ready,
}

/// Starts VM `name` (a no-op if it runs); with `wait`, until its agent answers.
pub fn start(paths: &Paths, name: &VmName, wait: bool, timeout: Duration) -> anyhow::Result<Started> {
    let config = store::load(paths, name)?;
    // A VM's processes run as the user it belongs to: root starts (and resumes) only
    // root's VMs, never reaching into a runtime dir of a user's.
    let owner = store::owner(paths, name).unwrap_or(0);
    if owner != nix::unistd::geteuid().as_raw() {
        let user = crate::host::user::name_of(owner);
        return Err(UserError::usage(format!(
            "VM '{name}' belongs to {user}, whose user runs its processes"
        ))
        .hint(format!("start it as them: `sudo -u {user} mvm start {name}`"))
        .into());
    }
    if store::run_state(paths, name)? == RunState::Running {
        let resumed = crate::vm::pause::resume_if_paused(paths, name)?;
        return Ok(if resumed { Started::Resumed } else { Started::AlreadyRunning });
    }
    // The forwards are DNAT rules, not sockets: a host listener on one would be shadowed.
    for forward in &config.ports {
        crate::vm::ports::check_host_port(forward, true).map_err(|error| {
            error.hint(format!(
                "stop that process, or drop the forward with `mvm port {name} --rm {}`",
                forward.host
            ))
        })?;
    }
    let host = HostConfig::load(&paths.config_file)?;
    let tools = || Ok(crate::image::build::BuildTools::find(&host)?);
    crate::image::packages::ensure(paths, &config, tools)?;
    // Checked here, to fail on the caller's terminal; the supervisor plans each boot.
    let (_, checked) = launch::check(paths, &host, &config)?;
    if config.project.is_some() {
        file_event_module(paths, &checked.kernel);
    }
    // Through sudo, as at create: only the invoking user's own project (a directory of
    // root's renamed into its place since would otherwise be shared with root's rights).
    let user = crate::host::user::invoking_user();
    if user.uid != 0 && config.project.is_some() && checked.project_owner.0 != user.uid {
        return Err(UserError::usage(format!(
            "VM '{name}''s project belongs to uid {}, not to you ({}, uid {})",
            checked.project_owner.0, user.name, user.uid
        ))
        .hint(format!("its owner starts it, or root: `mvm start {name}` as root"))
        .into());
    }
    if config.hypervisor == crate::config::vm::Hypervisor::Auto {
        eprintln!("{}", checked.vmm_choice);
    }
    if let Some(warning) = &checked.accel_warning {
        eprintln!("{warning}");
    }
    // Made here, as the invoking user and before the supervisor, which only reads the cache.
    let environment = project_env::resolve(&paths.vm_dir(name), &config, &project_env::HostTools);
    if let Some(warning) = environment.warning() {
        eprintln!("warning: {warning}");
    }
    let _lifecycle = FileLock::exclusive(&paths.vm_dir(name).join(".lifecycle.lock"))?;
    if store::run_state(paths, name)? == RunState::Running {
        return Ok(Started::AlreadyRunning);
    }
    // Never a second hypervisor beside one that outlived its supervisor.
    let left = crate::runtime::orphans::find(&paths.vm_run_dir(name), owner);
    if let Some(first) = left.first() {
        return Err(UserError::conflict(format!(
            "{} process(es) of VM '{name}' outlived its supervisor (pid {}: {})",
            left.len(),
            first.pid,
            first.cmdline
        ))
        .hint(format!("`mvm stop {name}` ends them; then start it again"))
        .into());
    }
    launch::ensure_dirs(paths, &config)?;
    give_a_disk_limit(paths, &config, &host)?;
    let log = paths.supervisor_log(name);
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let mut command = Command::new(std::env::current_exe().context("cannot find the mvm binary")?);
    command.args(["supervise", name.as_str()]).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // SAFETY: setsid and close_range/fcntl are async-signal-safe; the supervisor leaves our
    // terminal's session and holds none of our caller's descriptors.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            close_inherited_fds_on_exec();
            Ok(())
        });
    }
    let mut supervisor = command.spawn().context("cannot spawn the supervisor")?;
    let run_lock = paths.run_lock(name);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !RunLock::is_held(&run_lock)? {
        if supervisor.try_wait()?.is_some() || Instant::now() > deadline {
            return Err(failure(paths, name));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if !wait {
        return Ok(Started::Spawned);
    }
    let spinner = crate::output::spinner(&format!("booting {name}"));
    let console = paths.vm_dir(name).join("log/console.log");
    let ready = crate::agent::client::wait_ready(
        &paths.agent_socket(name),
        Instant::now() + timeout,
        || RunLock::is_held(&run_lock).unwrap_or(false),
        || launch::guest_ready(&console),
    );
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    // Reap the supervisor if it already ended, so no zombie lingers.
    let _ = supervisor.try_wait();
    match ready {
        Ok(_) => Ok(Started::Ready),
        Err(_) if RunLock::is_held(&run_lock)? => Err(UserError::new(
            crate::error::ExitCode::Failure,
            with_console_tail(
                format!("the guest agent did not answer within {} s", timeout.as_secs()),
                &console,
            ),
        )
        .hint(format!(
            "the VM is still booting or stuck; see `mvm logs {name}`, or stop it with `mvm stop {name}`"
        ))
        .into()),
        Err(_) => Err(failure(paths, name)),
    }
}

/// Builds the guest's file-event module if root runs this and it is missing; says once
/// when the guest will have no file events.
fn file_event_module(paths: &Paths, kernel: &crate::boot::kernel::Kernel) {
    use crate::boot::notify;
    let (Some(release), Some(modules_dir)) = (&kernel.release, &kernel.modules_dir) else { return };
    if nix::unistd::geteuid().is_root() {
        match notify::ensure_built(paths, release, modules_dir) {
            Ok(Some(built)) => eprintln!("{built}"),
            Ok(None) => {}
            Err(error) => eprintln!("warning: cannot build the guest's file-event module: {error:#}"),
        }
    }
    if let Some(why) = notify::why_off(&notify::find(paths, release), release) {
        eprintln!("warning: {why}");
    }
}

/// Marks every descriptor above stderr close-on-exec. The supervisor outlives `mvm start`;
/// holding a pipe it inherited (the write end of a shell's `$(…)`, or of direnv's) would
/// keep its reader waiting for as long as the VM runs. Called between fork and exec.
fn close_inherited_fds_on_exec() {
    use nix::libc;
    // SAFETY: close_range only changes descriptor flags of this (forked) process.
    let marked = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if marked != 0 {
        // Kernels before 5.11: mark them one by one.
        for fd in 3..4096 {
            // SAFETY: fcntl on a descriptor that may not exist fails harmlessly with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// `message` followed by the console's last lines, when it has any.
fn with_console_tail(mut message: String, console: &std::path::Path) -> String {
    let tail = launch::log_tail(console, 10);
    if !tail.trim().is_empty() {
        message.push_str(&format!("\nlast console lines:\n{tail}"));
    }
    message
}

/// The error for a VM whose supervisor ended during start, with its reason and logs.
fn failure(paths: &Paths, name: &VmName) -> anyhow::Error {
    let reason = RuntimeStatus::read(&paths.vm_run_dir(name))
        .and_then(|status| status.reason)
        .unwrap_or_else(|| launch::log_tail(&paths.supervisor_log(name), 5));
    let message = with_console_tail(
        format!("the VM stopped during start: {reason}"),
        &paths.vm_dir(name).join("log/console.log"),
    );
    UserError::new(crate::error::ExitCode::Failure, message)
        .hint(format!("see `mvm logs {name}` and {}", paths.vm_dir(name).join("log").display()))
        .into()
}
