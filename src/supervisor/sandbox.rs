//! The seccomp filter writable shares' virtiofsd run under: the guest can make no
//! setuid or setgid file and no device node on the host, whatever it asks virtiofsd for.
//!
//! Ownership alone does not stop a setuid bit (an owner may set it without privilege),
//! so the calls that set a mode — `chmod` in its forms, and creating files, directories
//! and nodes — fail with `EPERM` when the mode has `S_ISUID` or `S_ISGID`, and `mknod`
//! fails for character and block devices (but an overlay's whiteout, the device 0:0). `openat2` carries its mode inside a struct a
//! filter cannot read, so it fails too; virtiofsd then falls back to `openat`, whose mode
//! is an argument. A guest id virtiofsd's translation cannot cover (`u32::MAX`, "no
//! change" to `setresuid`) would leave virtiofsd acting as root: switching to it fails.
//! The filter is inherited across `exec` and stacks under virtiofsd's own.

use std::collections::BTreeMap;

use anyhow::Context;
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;
const S_IFMT: u64 = 0o170000;
const S_IFCHR: u64 = 0o020000;
const S_IFBLK: u64 = 0o060000;

/// A rule matching when argument `arg`, masked by `mask`, equals `value`.
fn masked(arg: u8, mask: u64, value: u64) -> anyhow::Result<SeccompRule> {
    let condition = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(mask), value)?;
    Ok(SeccompRule::new(vec![condition])?)
}

/// Rules matching a setuid or setgid bit in argument `arg` (a mode).
fn privilege_bits(arg: u8) -> anyhow::Result<Vec<SeccompRule>> {
    Ok(vec![masked(arg, S_ISUID, S_ISUID)?, masked(arg, S_ISGID, S_ISGID)?])
}

/// The compiled filter.
pub fn no_privilege_filter() -> anyhow::Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_openat2, vec![]);
    for (syscall, mode_arg) in [
        (libc::SYS_chmod, 1),
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (libc::SYS_fchmodat2, 2),
        (libc::SYS_creat, 1),
        (libc::SYS_open, 2),
        (libc::SYS_openat, 3),
        (libc::SYS_mkdir, 1),
        (libc::SYS_mkdirat, 2),
    ] {
        rules.insert(syscall, privilege_bits(mode_arg)?);
    }
    // virtiofsd takes a request's ids with setres[ug]id(-1, id, -1).
    for syscall in [libc::SYS_setresuid, libc::SYS_setresgid] {
        rules.insert(syscall, vec![masked(1, u64::from(u32::MAX), u64::from(u32::MAX))?]);
    }
    for (syscall, mode_arg) in [(libc::SYS_mknod, 1), (libc::SYS_mknodat, 2)] {
        let mut node_rules = privilege_bits(mode_arg)?;
        // A character device 0:0 is an overlay's whiteout (a guest's overlay deleting a
        // file of the layer beneath): it opens nothing, and the kernel makes it without
        // CAP_MKNOD. Any other is refused.
        let char_device = SeccompCondition::new(
            mode_arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(S_IFMT),
            S_IFCHR,
        )?;
        let not_whiteout = SeccompCondition::new(mode_arg + 1, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, 0)?;
        node_rules.push(SeccompRule::new(vec![char_device, not_whiteout])?);
        node_rules.push(masked(mode_arg, S_IFMT, S_IFBLK)?);
        rules.insert(syscall, node_rules);
    }
    let arch = std::env::consts::ARCH.try_into().context("seccomp does not support this architecture")?;
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)?;
    BpfProgram::try_from(filter).context("cannot compile the seccomp filter")
}

/// Makes `command` run under `filter` (installed between fork and exec).
pub fn confine(command: &mut std::process::Command, filter: BpfProgram) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec; it only makes the
    // prctl and seccomp system calls (no allocation on success, no locks).
    unsafe {
        command.pre_exec(move || {
            seccompiler::apply_filter(&filter).map_err(|error| std::io::Error::other(error.to_string()))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confined_sh(dir: &std::path::Path, script: &str) -> std::process::Output {
        let mut command = std::process::Command::new("sh");
        command.arg("-c").arg(script).current_dir(dir);
        confine(&mut command, no_privilege_filter().unwrap());
        command.output().unwrap()
    }

    #[test]
    fn setuid_setgid_and_devices_are_refused_plain_modes_pass() {
        let dir = tempfile::tempdir().unwrap();
        let out = confined_sh(
            dir.path(),
            "touch f && chmod 755 f && mkdir d && echo plain-ok; \
             chmod 4755 f || echo suid-refused; chmod g+s f || echo sgid-refused; \
             mkdir -m 2755 g || echo sgid-dir-refused; \
             mknod dev c 1 3 2>/dev/null || echo device-refused; mkfifo pipe && echo fifo-ok; \
             mknod whiteout c 0 0 && echo whiteout-ok",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for expected in [
            "plain-ok",
            "suid-refused",
            "sgid-refused",
            "sgid-dir-refused",
            "device-refused",
            "fifo-ok",
            "whiteout-ok",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("f")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(!dir.path().join("dev").exists() && !dir.path().join("g").exists());
    }

    #[test]
    fn the_untranslatable_id_cannot_be_taken() {
        let dir = tempfile::tempdir().unwrap();
        let out = confined_sh(
            dir.path(),
            "python3 -c 'import os; os.setresuid(-1, 65534, -1); print(\"switched\")'; \
             python3 -c 'import os; os.setresuid(-1, -1, -1)' 2>/dev/null || echo refused",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("switched") && text.contains("refused"), "{text}");
    }

    #[test]
    fn a_setuid_file_cannot_be_created_directly() {
        let dir = tempfile::tempdir().unwrap();
        let out = confined_sh(
            dir.path(),
            "python3 -c 'import os; os.open(\"s\", os.O_CREAT | os.O_WRONLY, 0o4755)' 2>/dev/null || echo refused",
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("refused"));
        assert!(!dir.path().join("s").exists());
    }
}
