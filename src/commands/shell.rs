//! `mvm shell`: a login shell in the VM, or one command with its exit code.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::agent::{client, session};
use crate::config::vm::VmConfig;
use crate::contract::protocol::ExecRequest;
use crate::error::UserError;
use crate::name::VmName;
use crate::project_env;
use crate::spec::EnvVar;
use crate::state::lease::{self, ProcessId};
use crate::state::store::{self, RunState};
use crate::state::Paths;

/// Arguments of `mvm shell`.
#[derive(Debug, Clone, Args)]
pub struct ShellArgs {
    /// The VM
    pub name: String,
    /// An environment variable for the command (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Directory to run in [default: the current directory if inside the project, else the project]
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Start the VM first if it is stopped
    #[arg(long)]
    pub start: bool,
    /// Run the command on a terminal even with a command given
    #[arg(short, long)]
    pub tty: bool,
    /// Run as this guest user: `root` (to install software into the VM's system layer)
    /// or UID[:GID] [default: you, with your host uid and gid]
    #[arg(short, long, value_name = "root|UID[:GID]", value_parser = parse_guest_user)]
    pub user: Option<(u32, u32)>,
    /// The command to run instead of a login shell
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs `mvm shell`; returns the command's exit code.
pub fn run(args: ShellArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    let config = store::load(paths, &name)?;
    if store::run_state(paths, &name)? != RunState::Running {
        if !args.start {
            return Err(UserError::conflict(format!("VM '{name}' is not running"))
                .hint(format!("start it with `mvm start {name}`, or use `mvm shell --start {name}`"))
                .into());
        }
        crate::vm::start::start(paths, &name, true, Duration::from_secs(120))
            .with_context(|| format!("cannot start VM '{name}'"))?;
    }
    // Instant re-entry: a paused VM runs again before the shell connects.
    crate::vm::pause::resume_if_paused(paths, &name).with_context(|| format!("cannot resume VM '{name}'"))?;
    let environment = project_env::resolve(&paths.vm_dir(&name), &config, &project_env::HostTools);
    if let Some(warning) = environment.warning().filter(|_| std::io::stderr().is_terminal()) {
        eprintln!("warning: {warning}");
    }
    let project_variables = match environment {
        project_env::Outcome::Ready(environment) => environment.variables,
        _ => BTreeMap::new(),
    };
    let request = request(&config, &project_variables, &args)?;
    let stream = client::connect(&paths.agent_socket(&name), Duration::from_secs(5))
        .with_context(|| format!("cannot reach the agent of VM '{name}'"))?;
    // While the session lasts, a VM that stops when idle (`mvm up`) is in use.
    let run_dir = paths.vm_run_dir(&name);
    let session_lease = lease::auto_stop(&run_dir)
        .and(ProcessId::of(std::process::id()))
        .filter(|me| lease::take(&run_dir, *me, lease::Scope::Anywhere).is_ok());
    let status = session::run(stream, request);
    if let Some(me) = session_lease {
        lease::release(&run_dir, me);
    }
    let status = status?;
    Ok(status.shell_code())
}

/// The session request: the caller's terminal variables, then the project environment's,
/// the VM's `[env]` and `--env`, each over the ones before.
fn request(
    config: &VmConfig,
    project_variables: &BTreeMap<String, String>,
    args: &ShellArgs,
) -> anyhow::Result<ExecRequest> {
    let invoking = crate::host::user::invoking_user();
    let (uid, gid) = args.user.unwrap_or((invoking.uid, invoking.gid));
    let tty = args.tty || (args.command.is_empty() && std::io::stdin().is_terminal());
    let (rows, cols) = session::terminal_size().unwrap_or((24, 80));
    let mut env: Vec<(String, String)> = Vec::new();
    for key in ["TERM", "LANG", "LC_ALL", "COLORTERM"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_string(), value));
        }
    }
    env.extend(project_variables.iter().chain(&config.env).map(|(k, v)| (k.clone(), v.clone())));
    for text in &args.env {
        let var: EnvVar = text.parse()?;
        env.push((var.key, var.value));
    }
    Ok(ExecRequest {
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone().or_else(|| default_workdir(config)),
        uid,
        gid,
        tty,
        rows,
        cols,
    })
}

/// `--user`: `root`, `UID` (its group the same number) or `UID:GID`. Any guest user is
/// the VM owner's to be: the VM's processes run as guest root already.
fn parse_guest_user(text: &str) -> Result<(u32, u32), String> {
    let number = |part: &str| part.parse::<u32>().ok().filter(|id| *id != u32::MAX);
    let parsed = match text.split_once(':') {
        _ if text == "root" => Some((0, 0)),
        Some((uid, gid)) => number(uid).zip(number(gid)),
        None => number(text).map(|id| (id, id)),
    };
    parsed.ok_or_else(|| format!("{text:?} is neither 'root' nor UID[:GID]"))
}

/// The current directory when it lies inside the project, else the project itself.
fn default_workdir(config: &VmConfig) -> Option<String> {
    let project = &config.project.as_ref()?.path;
    let here: Option<PathBuf> = std::env::current_dir().ok();
    let dir = here.filter(|dir| dir.starts_with(project)).unwrap_or_else(|| project.clone());
    Some(dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_guest_user;

    #[test]
    fn guest_user_forms() {
        assert_eq!(parse_guest_user("root"), Ok((0, 0)));
        assert_eq!(parse_guest_user("1000"), Ok((1000, 1000)));
        assert_eq!(parse_guest_user("105:110"), Ok((105, 110)));
        for bad in ["", "postgres", "1:x", "-1", "4294967295", "1:2:3"] {
            assert!(parse_guest_user(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
