//! `mvm-helper`: the setuid-root part of mvm (see the `mvm_privileged` crate). It runs one
//! request for its caller — the real uid the kernel started it with — and exits.
//!
//! Before anything else it forgets what the caller chose: the environment is replaced by
//! a fixed `PATH`, the roots are the installed ones (never `MVM_*`), and once the caller
//! is known the process becomes root through and through, so the caller can neither
//! signal nor trace it half-way.

use std::os::unix::fs::MetadataExt;

use mvm_base::error::{ExitCode, UserError};
use mvm_privileged::roots::Roots;
use mvm_privileged::{helper, Request};

fn main() {
    let caller = nix::unistd::getuid().as_raw();
    let caller_gid = nix::unistd::getgid();
    let keys: Vec<_> = std::env::vars_os().map(|(key, _)| key).collect();
    for key in keys {
        std::env::remove_var(key);
    }
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let result = become_root(caller, caller_gid).and_then(|()| {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let request = Request::parse(&args)?;
        helper::serve(&request, caller, &Roots::installed())
    });
    if let Err(error) = result {
        eprint!("mvm-helper: ");
        mvm_base::error::report(&error, &mut std::io::stderr().lock());
        std::process::exit(mvm_base::error::exit_code_of(&error).code());
    }
}

/// Checks the caller may use the helper (root, or a member of the group the helper
/// belongs to: its mode lets no one else run it, this says so again), then drops the
/// caller's ids for root's.
fn become_root(caller: u32, caller_gid: nix::unistd::Gid) -> anyhow::Result<()> {
    use nix::unistd::{Gid, Uid};
    if !nix::unistd::geteuid().is_root() {
        return Err(UserError::needs_root("mvm-helper is not setuid root")
            .hint("install it with `sudo mvm setup`")
            .into());
    }
    if caller != 0 {
        let group = Gid::from_raw(std::fs::metadata("/proc/self/exe")?.gid());
        let mut groups = nix::unistd::getgroups()?;
        groups.push(caller_gid);
        if group.as_raw() == 0 || !groups.contains(&group) {
            return Err(UserError::new(ExitCode::NeedsRoot, "you are not in mvm-helper's group").into());
        }
    }
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))?;
    Ok(())
}
