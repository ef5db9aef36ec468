//! The supervisor's helper processes and host mounts: spawning with logs, waiting for
//! sockets, stopping, and the overlays shared with the guest.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::supervisor::launch::{log_tail, Overlay};
use crate::supervisor::userns::Namespace;

/// The supervisor's long-lived helpers (virtiofsd, vhost-device-vsock).
#[derive(Default)]
pub struct Processes {
    children: Vec<(String, Child, std::path::PathBuf)>,
}

fn log_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log {}", path.display()))
}

/// A command for one of the VM's processes. It dies with the supervisor: the kernel
/// sends it SIGKILL when the thread that forked it ends, and every spawn happens on the
/// supervisor's main thread, which lives as long as the supervisor (an OOM kill or a
/// `kill -9` of it leaves no hypervisor or virtiofsd running unseen).
fn command(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Command> {
    use std::os::unix::process::CommandExt;
    let out = log_file(log)?;
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let supervisor = nix::unistd::getpid();
    // SAFETY: between fork and exec only prctl and getppid, both async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The supervisor may have died before the signal was asked for.
            if nix::unistd::getppid() != supervisor {
                return Err(std::io::Error::other("the supervisor is gone"));
            }
            Ok(())
        });
    }
    Ok(command)
}

impl Processes {
    /// Starts `program` with output to `log`, remembered as `label`: in a user namespace
    /// of its own where `namespace` says so (see `userns`), and under `filter` when one
    /// is given (see `sandbox`).
    pub fn spawn(
        &mut self,
        label: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        namespace: Option<Namespace>,
        filter: Option<seccompiler::BpfProgram>,
    ) -> anyhow::Result<()> {
        let mut command = command(program, args, log)?;
        if let Some(namespace) = namespace {
            namespace.apply(&mut command)?;
        }
        if let Some(filter) = filter {
            crate::supervisor::sandbox::confine(&mut command, filter);
        }
        let child =
            command.spawn().with_context(|| format!("cannot start {label} ({})", program.display()))?;
        self.children.push((label.to_string(), child, log.to_path_buf()));
        Ok(())
    }

    /// Waits until every socket exists; fails early naming a helper that died.
    pub fn wait_for_sockets(&mut self, sockets: &[&Path], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if sockets.iter().all(|socket| socket.exists()) {
                return Ok(());
            }
            for (label, child, log) in &mut self.children {
                if let Some(exit) = child.try_wait()? {
                    bail!(
                        "{label} exited ({exit}) before it was ready; its log ends with:\n{}",
                        log_tail(log, 5)
                    );
                }
            }
            if Instant::now() > deadline {
                let missing: Vec<String> =
                    sockets.iter().filter(|s| !s.exists()).map(|s| s.display().to_string()).collect();
                bail!("timed out waiting for {}", missing.join(", "));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The first helper that has ended, said as "LABEL exited (STATUS)".
    pub fn first_ended(&mut self) -> Option<String> {
        self.children.iter_mut().find_map(|(label, child, _)| {
            child.try_wait().ok().flatten().map(|status| format!("{label} exited ({status})"))
        })
    }

    /// SIGTERM to every helper, SIGKILL to those still alive after `grace`; all reaped.
    pub fn stop_all(&mut self, grace: Duration) {
        for (_, child, _) in &self.children {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for (_, child, _) in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.children.clear();
    }
}

/// Starts the hypervisor; the caller owns (and waits for) it.
pub fn spawn_hypervisor(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    command(program, args, log)?.spawn().with_context(|| format!("cannot start {}", program.display()))
}

/// Mounts `overlay` on the host (lower read-only, upper and work per VM).
pub fn mount_overlay(overlay: &Overlay) -> anyhow::Result<()> {
    for dir in [&overlay.upper, &overlay.work, &overlay.merged] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let options = overlay.mount_options()?;
    // nosuid, nodev: whatever the guest copies up (a setuid file of the lower tree it
    // rewrote, a device it chmodded) grants nothing to a host user who reaches the mount.
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("overlay"), &overlay.merged, Some("overlay"), flags, Some(options.as_str())).with_context(
        || {
            format!(
                "cannot mount an overlay of {} (overlayfs may not support its file system; use --mount rw)",
                overlay.lower.display()
            )
        },
    )
}
