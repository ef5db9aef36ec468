//! The host's devenv and nix, run as the owner of the project they evaluate.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::host::user::InvokingUser;

use super::Kind;

/// The command that prints the environment of a project of `kind`.
pub(super) fn command_line(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::Devenv => vec!["devenv", "print-dev-env", "--json"],
        Kind::Nix => {
            vec!["nix", "--extra-experimental-features", "nix-command flakes", "print-dev-env", "--json"]
        }
    }
}

/// Runs the host's tools. The real one runs them as the owner of the project they
/// evaluate; tests give outputs in the tools' documented formats (devenv cannot be
/// installed on CI).
pub trait Tools {
    /// `program args` run in `dir`: `Ok(None)` when the program is not installed, its
    /// stdout on success, an error with its stderr otherwise.
    fn output(&self, program: &str, args: &[&str], dir: &Path) -> anyhow::Result<Option<String>>;
}

/// The tools on this host, run as the owner of the project: its Nix is their code,
/// never run with more rights than theirs (root starting a developer's VM included).
/// A project root owns runs as the invoking user, so only root runs root's Nix as root.
pub struct HostTools;

impl Tools for HostTools {
    fn output(&self, program: &str, args: &[&str], dir: &Path) -> anyhow::Result<Option<String>> {
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir)?);
        let runner = if owner == 0 { crate::host::user::invoking_user().uid } else { owner };
        let (user, home, search) = user_and_search_path(runner);
        let Ok(path) = which::which_in(program, Some(&search), dir) else { return Ok(None) };
        let mut command = Command::new(path);
        command.args(args).current_dir(dir).env("PATH", &search).stdin(std::process::Stdio::null());
        if nix::unistd::getuid().is_root() && user.uid != 0 {
            command.uid(user.uid).gid(user.gid);
            if let Some(home) = home {
                command.env("HOME", home);
            }
            command.env("USER", &user.name);
        }
        let output = command.output().with_context(|| format!("cannot run {program}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last: Vec<&str> = stderr.lines().rev().take(5).collect();
            anyhow::bail!("{}", last.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
    }
}

impl HostTools {
    /// Whether the program that makes `kind`'s environment is on this host.
    pub fn has(kind: Kind) -> bool {
        let (_, _, search) = user_and_search_path(crate::host::user::invoking_user().uid);
        which::which_in(kind.program(), Some(search), "/").is_ok()
    }
}

/// User `uid`, their home directory, and where their tools are looked for.
fn user_and_search_path(uid: u32) -> (InvokingUser, Option<PathBuf>, OsString) {
    let account = nix::unistd::User::from_uid(uid.into()).ok().flatten();
    let user = match &account {
        Some(account) => InvokingUser { name: account.name.clone(), uid, gid: account.gid.as_raw() },
        None => InvokingUser { name: uid.to_string(), uid, gid: uid },
    };
    let home = account.map(|account| account.dir);
    let search = tool_search_path(std::env::var_os("PATH"), home.as_deref(), &user.name);
    (user, home, search)
}

/// Where devenv and nix are looked for: `PATH`, then the Nix profiles of the invoking user
/// and of the system, which `sudo`'s `secure_path` leaves out.
pub(super) fn tool_search_path(path: Option<OsString>, home: Option<&Path>, user: &str) -> OsString {
    let mut dirs: Vec<PathBuf> = path.map(|path| std::env::split_paths(&path).collect()).unwrap_or_default();
    if let Some(home) = home {
        dirs.push(home.join(".nix-profile/bin"));
        dirs.push(home.join(".local/state/nix/profile/bin"));
    }
    dirs.push(PathBuf::from(format!("/etc/profiles/per-user/{user}/bin")));
    dirs.push(PathBuf::from("/nix/var/nix/profiles/default/bin"));
    dirs.push(PathBuf::from("/run/current-system/sw/bin"));
    std::env::join_paths(dirs).unwrap_or_default()
}
