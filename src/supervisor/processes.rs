//! The supervisor's helper processes and host mounts: spawning with logs, waiting for
//! sockets, stopping, and the overlays shared with the guest.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
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

/// The id of the mount `path` (not followed if a symlink) is on.
fn mount_id(path: &Path) -> Option<u64> {
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).ok()?;
    crate::fs::mount_id(std::os::fd::AsFd::as_fd(&fd))
}

/// Whether `path` is the root of a mount: its mount differs from its parent's (a bind
/// mount of the same file system included), or, where the kernel has no mount ids, its
/// device does.
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(meta), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else { return false };
    match (mount_id(path), mount_id(parent)) {
        (Some(own), Some(above)) => own != above,
        _ => std::fs::metadata(parent).is_ok_and(|parent| parent.dev() != meta.dev()),
    }
}

/// Bind-mounts the directory `source` is open on at `at` (with what is mounted inside
/// it; nosuid, nodev, private; read-only when `read_only` or when the source is): what
/// the shares and the overlays use from then on is that directory, whatever becomes of
/// its path.
pub fn pin_directory(source: &crate::fs::Tree, at: &Path, read_only: bool) -> anyhow::Result<()> {
    use nix::sys::statvfs::{fstatvfs, FsFlags};
    use std::os::fd::{AsFd, AsRawFd};
    std::fs::create_dir_all(at).with_context(|| format!("cannot create {}", at.display()))?;
    let by_descriptor = format!("/proc/self/fd/{}", source.as_fd().as_raw_fd());
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(by_descriptor.as_str()), at, None::<&str>, bind, None::<&str>)
        .with_context(|| format!("cannot bind {} at {}", source.path().display(), at.display()))?;
    let settle = || -> anyhow::Result<()> {
        mount(None::<&str>, at, None::<&str>, MsFlags::MS_PRIVATE | MsFlags::MS_REC, None::<&str>)?;
        // A remount replaces the mount's flags: keep the source's read-only and noexec.
        let source_flags = fstatvfs(source.as_fd())?.flags();
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if read_only || source_flags.contains(FsFlags::ST_RDONLY) {
            flags |= MsFlags::MS_RDONLY;
        }
        if source_flags.contains(FsFlags::ST_NOEXEC) {
            flags |= MsFlags::MS_NOEXEC;
        }
        mount(None::<&str>, at, None::<&str>, flags, None::<&str>)?;
        Ok(())
    };
    settle().map_err(|error| {
        let _ = umount2(at, MntFlags::MNT_DETACH);
        error.context(format!("cannot set up the bind mount at {}", at.display()))
    })
}

/// Detaches the mount at `path`, if there is one.
pub fn unmount_if_mounted(path: &Path) -> anyhow::Result<()> {
    if is_mount_point(path) {
        umount2(path, MntFlags::MNT_DETACH).with_context(|| format!("cannot unmount {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project bound in the runtime dir: a mount point on the same file system is seen
    /// as one (so nothing deletes through it), and turning the project's path into a
    /// symlink afterwards changes nothing the VM sees.
    #[test]
    fn a_pinned_directory_stays_the_one_that_was_opened() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_pinned_directory_stays_the_one_that_was_opened: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (project, elsewhere, at) =
            (dir.path().join("project"), dir.path().join("elsewhere"), dir.path().join("lower"));
        std::fs::create_dir(&project).unwrap();
        std::fs::write(project.join("mine"), "project").unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("secret"), "elsewhere").unwrap();
        let tree = crate::fs::Tree::open_exact(&project).unwrap();
        std::fs::rename(&project, dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &project).unwrap();
        assert!(crate::fs::Tree::open_exact(&project).is_err(), "a symlinked path was opened");
        pin_directory(&tree, &at, true).unwrap();
        assert!(is_mount_point(&at), "a same-file-system bind mount is not seen");
        assert_eq!(std::fs::read_to_string(at.join("mine")).unwrap(), "project");
        assert!(!at.join("secret").exists());
        assert!(std::fs::write(at.join("new"), "x").is_err(), "a read-only pin is writable");
        unmount_if_mounted(&at).unwrap();
        assert!(!is_mount_point(&at));
        assert!(dir.path().join("moved/mine").exists());
    }
}
