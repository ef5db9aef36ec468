//! A user's VM needs no privilege for its shares: each virtiofsd starts in a user
//! namespace and a mount namespace of its own, in which the VM's owner is id 0 (and no
//! other host id exists), so virtiofsd's chroot sandbox and id translation work as they do
//! under root, with nothing but the owner's rights. An overlay (the project's, a root
//! tree's) is mounted inside that namespace, for that virtiofsd alone: the host sees no
//! mount, and nothing needs unmounting when it exits.
//!
//! The VM's own trees (`/etc`, `/var`, volumes) get real ids when the owner has
//! subordinate ids (`host::subids`): their virtiofsds join a [`MappedNamespace`], made once
//! with Debian's `newuidmap`/`newgidmap`, in which the owner is id 0 and ids
//! `1..=GUEST_IDS` are the owner's subordinate range. `mvm rm` removes such trees from
//! inside it too.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::host::subids::{SubIds, GUEST_IDS};

use anyhow::{bail, Context};
use nix::libc;

use crate::supervisor::launch::Overlay;

/// What the child does between fork and exec, prepared beforehand (it may not allocate).
struct Plan {
    /// Join this user namespace (a [`MappedNamespace`]'s), or make one with these maps.
    user: UserNamespace,
    overlay: Option<(CString, CString)>,
    /// Where to start, once the overlay is mounted.
    workdir: Option<CString>,
}

enum UserNamespace {
    Join(RawFd),
    Make { uid_map: Vec<u8>, gid_map: Vec<u8> },
}

/// Where a user's VM's process starts.
pub enum Namespace<'a> {
    /// A user namespace of its own, where the owner (`uid`, `gid`) is 0 and no other id
    /// exists.
    Own { owner: (u32, u32), overlay: Option<&'a Overlay> },
    /// The VM's namespace with the owner's subordinate ids, starting in `shared_dir`:
    /// virtiofsd drops the owner's groups there (its ids are many), and then reaches
    /// the directory only as `.` (`--shared-dir=.`, `GuestIds::Subordinate`), not
    /// through mvm's roots, which only the group may enter.
    Mapped { namespace: &'a MappedNamespace, overlay: Option<&'a Overlay>, shared_dir: &'a Path },
}

impl Namespace<'_> {
    /// Makes `command` start there.
    pub fn apply(&self, command: &mut Command) -> anyhow::Result<()> {
        match self {
            Namespace::Own { owner, overlay } => enter(command, *owner, *overlay),
            Namespace::Mapped { namespace, overlay, shared_dir } => {
                let user = UserNamespace::Join(namespace.user.as_raw_fd());
                start_in(command, user, *overlay, Some(shared_dir))
            }
        }
    }
}

/// Makes `command` start in a user namespace where (`uid`, `gid`) are 0, with `overlay`
/// mounted in its mount namespace.
pub fn enter(command: &mut Command, (uid, gid): (u32, u32), overlay: Option<&Overlay>) -> anyhow::Result<()> {
    let user = UserNamespace::Make {
        uid_map: format!("0 {uid} 1").into_bytes(),
        gid_map: format!("0 {gid} 1").into_bytes(),
    };
    start_in(command, user, overlay, None)
}

fn start_in(
    command: &mut Command,
    user: UserNamespace,
    overlay: Option<&Overlay>,
    workdir: Option<&Path>,
) -> anyhow::Result<()> {
    let overlay = match overlay {
        Some(overlay) => {
            for dir in [&overlay.upper, &overlay.work, &overlay.merged] {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let options = overlay.mount_options()? + ",userxattr";
            Some((CString::new(overlay.merged.as_os_str().as_bytes())?, CString::new(options)?))
        }
        None => None,
    };
    let workdir = workdir.map(|dir| CString::new(dir.as_os_str().as_bytes())).transpose()?;
    let plan = Plan { user, overlay, workdir };
    // SAFETY: the closure makes only raw system calls (setns, unshare, open, write, close,
    // mount, chdir) on data prepared above: nothing that allocates or takes a lock.
    unsafe {
        command.pre_exec(move || plan.apply());
    }
    Ok(())
}

impl Plan {
    fn apply(&self) -> std::io::Result<()> {
        match &self.user {
            UserNamespace::Join(fd) => {
                // SAFETY: setns and unshare take a descriptor (open in this child, which
                // inherited it) and flags only.
                check(unsafe { libc::setns(*fd, libc::CLONE_NEWUSER) })?;
                check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
            }
            UserNamespace::Make { uid_map, gid_map } => {
                // SAFETY: unshare takes flags only.
                check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) })?;
                write_proc(c"/proc/self/setgroups", b"deny")?;
                write_proc(c"/proc/self/uid_map", uid_map)?;
                write_proc(c"/proc/self/gid_map", gid_map)?;
            }
        }
        if let Some((target, options)) = &self.overlay {
            // SAFETY: every pointer is to a NUL-terminated string that outlives the call.
            check(unsafe {
                libc::mount(
                    c"overlay".as_ptr(),
                    target.as_ptr(),
                    c"overlay".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                )
            })?;
        }
        if let Some(dir) = &self.workdir {
            // SAFETY: a NUL-terminated path that outlives the call.
            check(unsafe { libc::chdir(dir.as_ptr()) })?;
        }
        Ok(())
    }
}

/// A user namespace in which the VM's owner is id 0 and ids `1..=GUEST_IDS` are the
/// owner's subordinate ids: guest id `g` of a share served from it is host id
/// `start + g` (`GuestIds::Subordinate`). It lives as long as this value (a descriptor
/// of it), whatever process made it.
pub struct MappedNamespace {
    user: OwnedFd,
}

impl MappedNamespace {
    /// Makes one for this process's user (`owner`: uid, gid) and ranges `sub`: a child
    /// makes a user namespace and waits; Debian's setuid `newuidmap` and `newgidmap`,
    /// which check the ranges against `/etc/subuid` and `/etc/subgid`, map it; the
    /// namespace is then kept by a descriptor and the child let go.
    pub fn make((uid, gid): (u32, u32), sub: SubIds) -> anyhow::Result<MappedNamespace> {
        let mut holder = Command::new("cat");
        holder.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: unshare takes flags only.
        unsafe {
            holder.pre_exec(|| check(libc::unshare(libc::CLONE_NEWUSER)).map(drop));
        }
        let mut holder = holder.spawn().context("cannot start a process to hold a user namespace")?;
        let pid = holder.id().to_string();
        let mapped = (|| -> anyhow::Result<OwnedFd> {
            for (program, own, start) in [("newuidmap", uid, sub.uid), ("newgidmap", gid, sub.gid)] {
                let args = [
                    pid.clone(),
                    "0".into(),
                    own.to_string(),
                    "1".into(),
                    "1".into(),
                    start.to_string(),
                    GUEST_IDS.to_string(),
                ];
                let output = Command::new(program).args(&args).stdin(Stdio::null()).output().map_err(|error| {
                    anyhow::anyhow!("cannot run {program} ({error}): install Debian's uidmap package (`sudo mvm setup` does)")
                })?;
                if !output.status.success() {
                    bail!("{program} refused: {}", String::from_utf8_lossy(&output.stderr).trim());
                }
            }
            Ok(std::fs::File::open(format!("/proc/{pid}/ns/user"))
                .context("cannot open the mapped user namespace")?
                .into())
        })();
        drop(holder.stdin.take());
        let _ = holder.kill();
        let _ = holder.wait();
        Ok(MappedNamespace { user: mapped.context("cannot map subordinate ids for the VM")? })
    }

    /// Removes tree `path` from inside the namespace, where the subordinate ids the guest
    /// gave its files are this user's to remove (`rm` never follows a symlink, nor leaves
    /// the file system).
    pub fn remove_tree(&self, path: &Path) -> anyhow::Result<()> {
        let mut rm = Command::new("rm");
        rm.args(["-rf", "--one-file-system", "--"]).arg(path);
        self.run(rm).with_context(|| format!("cannot remove {}", path.display()))
    }

    /// Runs `command` to its end inside the namespace; its error output is the error.
    pub fn run(&self, mut command: Command) -> anyhow::Result<()> {
        command.stdin(Stdio::null());
        start_in(&mut command, UserNamespace::Join(self.user.as_raw_fd()), None, None)?;
        let program = command.get_program().to_string_lossy().into_owned();
        let output = command.output().with_context(|| format!("cannot run {program}"))?;
        if !output.status.success() {
            bail!("{program}: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }
}

fn write_proc(path: &std::ffi::CStr, content: &[u8]) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below on every path.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    // SAFETY: `content` is valid for its length.
    let written = unsafe { libc::write(fd, content.as_ptr().cast(), content.len()) };
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    if written != content.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn check(result: libc::c_int) -> std::io::Result<libc::c_int> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Whether this host lets an unprivileged user make a user namespace (and so run a VM
/// without root): the answer `doctor` and a failed start give.
pub fn available() -> anyhow::Result<()> {
    let read = |path: &str| std::fs::read_to_string(path).map(|text| text.trim().to_string());
    if read("/proc/sys/kernel/unprivileged_userns_clone").is_ok_and(|value| value == "0") {
        bail!("kernel.unprivileged_userns_clone is 0: users cannot make user namespaces");
    }
    if read("/proc/sys/user/max_user_namespaces").is_ok_and(|value| value == "0") {
        bail!("user.max_user_namespaces is 0: users cannot make user namespaces");
    }
    Ok(())
}
