//! A user's VM needs no privilege for its shares: each virtiofsd starts in a user
//! namespace and a mount namespace of its own, in which the VM's owner is id 0 (and no
//! other host id exists), so virtiofsd's chroot sandbox and id translation work as they do
//! under root, with nothing but the owner's rights. An overlay (the project's, a root
//! tree's) is mounted inside that namespace, for that virtiofsd alone: the host sees no
//! mount, and nothing needs unmounting when it exits.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context};
use nix::libc;

use crate::supervisor::launch::Overlay;

/// What the child does between fork and exec, prepared beforehand (it may not allocate).
struct Plan {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    overlay: Option<(CString, CString)>,
}

/// Makes `command` start in a user namespace where (`uid`, `gid`) are 0, with `overlay`
/// mounted in its mount namespace.
pub fn enter(command: &mut Command, (uid, gid): (u32, u32), overlay: Option<&Overlay>) -> anyhow::Result<()> {
    let overlay = match overlay {
        Some(overlay) => {
            for dir in [&overlay.upper, &overlay.work, &overlay.merged] {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let options = crate::supervisor::processes::overlay_options(overlay)? + ",userxattr";
            Some((CString::new(overlay.merged.as_os_str().as_bytes())?, CString::new(options)?))
        }
        None => None,
    };
    let plan = Plan {
        uid_map: format!("0 {uid} 1").into_bytes(),
        gid_map: format!("0 {gid} 1").into_bytes(),
        overlay,
    };
    // SAFETY: the closure makes only raw system calls (unshare, open, write, close,
    // mount) on data prepared above: nothing that allocates or takes a lock.
    unsafe {
        command.pre_exec(move || plan.apply());
    }
    Ok(())
}

impl Plan {
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY: unshare takes flags only.
        check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) })?;
        write_proc(c"/proc/self/setgroups", b"deny")?;
        write_proc(c"/proc/self/uid_map", &self.uid_map)?;
        write_proc(c"/proc/self/gid_map", &self.gid_map)?;
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
