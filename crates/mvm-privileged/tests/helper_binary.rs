//! The built `mvm-helper` binary, run for real: who it lets in before it reads a request.
//!
//! Each test runs a copy of the binary Cargo built for this crate (which is also what makes
//! `cargo test --workspace` build the helper the end-to-end tests install). The copies live in
//! a directory of the test's own; a caller is switched to with `setpriv`, so the tests that
//! need another uid run only as root. Every request sent is one the helper refuses to parse,
//! so nothing here changes the host even when a check lets the caller through.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The uid and gid the tests' callers run as: `nobody`'s, never a member of the helper's group.
const CALLER: u32 = 65534;
/// The group a setuid copy of the helper belongs to.
const HELPER_GROUP: u32 = 64_321;
/// The exit code for "needs root" (`mvm_base::error::ExitCode::NeedsRoot`).
const NEEDS_ROOT: i32 = 6;
/// The exit code for a usage error (`mvm_base::error::ExitCode::Usage`).
const USAGE: i32 = 2;

/// Reports a test that cannot run here, or fails it when `MVM_TEST_STRICT` is set (as in CI).
fn skip(test: &str, reason: &str) {
    assert!(
        std::env::var_os("MVM_TEST_STRICT").is_none(),
        "{test} cannot run: {reason} (MVM_TEST_STRICT is set, so skipping is a failure)"
    );
    eprintln!("SKIP {test}: {reason}");
}

/// True when running as root with `setpriv` at hand; otherwise reports the skip.
fn can_switch_callers(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip(test, "needs root to run the helper as another user");
        return false;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip(test, "setpriv (util-linux) is not installed");
        return false;
    }
    true
}

/// A copy of the built helper at `dir/mvm-helper`, owned by root and `group`, with `mode`.
fn helper_copy(dir: &Path, group: u32, mode: u32) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("mvm-helper");
    std::fs::copy(env!("CARGO_BIN_EXE_mvm-helper"), &copy).unwrap();
    std::os::unix::fs::chown(&copy, Some(0), Some(group)).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
    copy
}

/// Runs `helper` as `nobody`, with `groups` as its supplementary groups, asking for a
/// request no helper accepts.
fn run_as_caller(helper: &Path, groups: &[u32]) -> Output {
    let mut command = Command::new("setpriv");
    command.args(["--reuid", &CALLER.to_string(), "--regid", &CALLER.to_string()]);
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        command.args(["--groups", &list.join(",")]);
    }
    command.arg(helper).args(["no-such-verb", "web"]).output().unwrap()
}

/// A setuid-root copy of the helper in `group`, in a directory of its own (kept alive by the
/// returned handle); `None`, with the skip reported, where the test cannot make one.
fn setuid_copy(test: &str, group: u32) -> Option<(tempfile::TempDir, PathBuf)> {
    if !can_switch_callers(test) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = nix::sys::statvfs::statvfs(dir.path()).unwrap().flags();
    if flags.contains(nix::sys::statvfs::FsFlags::ST_NOSUID) {
        skip(test, "the temporary directory's file system is mounted nosuid");
        return None;
    }
    let helper = helper_copy(dir.path(), group, 0o4755);
    Some((dir, helper))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_helper_that_is_not_setuid_refuses_before_reading_the_request() {
    let test = "a_helper_that_is_not_setuid_refuses_before_reading_the_request";
    if !can_switch_callers(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let helper = helper_copy(dir.path(), 0, 0o755);
    let output = run_as_caller(&helper, &[]);
    assert_eq!(output.status.code(), Some(NEEDS_ROOT), "{}", stderr(&output));
    assert!(stderr(&output).contains("not setuid root"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("usage"), "it read the request first: {}", stderr(&output));
}

#[test]
fn a_setuid_helper_lets_in_only_members_of_its_group() {
    let Some((_dir, helper)) = setuid_copy("a_setuid_helper_lets_in_only_members_of_its_group", HELPER_GROUP)
    else {
        return;
    };

    let outsider = run_as_caller(&helper, &[]);
    assert_eq!(outsider.status.code(), Some(NEEDS_ROOT), "{}", stderr(&outsider));
    assert!(stderr(&outsider).contains("not in mvm-helper's group"), "{}", stderr(&outsider));

    let other_group = run_as_caller(&helper, &[HELPER_GROUP + 1]);
    assert_eq!(other_group.status.code(), Some(NEEDS_ROOT), "{}", stderr(&other_group));

    // A member gets past the gate and is stopped by the request itself.
    let member = run_as_caller(&helper, &[HELPER_GROUP]);
    assert_eq!(member.status.code(), Some(USAGE), "{}", stderr(&member));
    assert!(stderr(&member).contains("usage: mvm-helper"), "{}", stderr(&member));
}

#[test]
fn a_setuid_helper_in_roots_group_lets_no_one_in() {
    // Group 0 would mean "whoever is in root's group": the helper takes that as a mistake.
    let Some((_dir, helper)) = setuid_copy("a_setuid_helper_in_roots_group_lets_no_one_in", 0) else {
        return;
    };
    let output = run_as_caller(&helper, &[0]);
    assert_eq!(output.status.code(), Some(NEEDS_ROOT), "{}", stderr(&output));
    assert!(stderr(&output).contains("not in mvm-helper's group"), "{}", stderr(&output));
}
