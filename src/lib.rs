//! mvm: one isolated, fast microVM per project.
//!
//! The binary is a thin shell over this library: `main` parses the command line and
//! maps [`run`]'s result to an exit code. Privileged work sits behind small modules
//! whose plans are pure data, so most of mvm is testable without root.

pub mod agent;
pub mod boot;
pub mod changes;
pub mod cli;
pub mod commands;
pub mod config;
pub mod contract;
pub mod dns;
pub mod failpoint;
pub mod generate;
pub mod guest;
pub mod host;
pub mod image;
pub mod log_cap;
pub mod output;
pub mod privileged;
pub mod project_env;
pub mod runtime;
pub mod setup;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod view;
pub mod vm;
pub mod vmm;

// The foundations and the privileged part are crates of their own (`crates/`): the
// setuid helper links them alone. Their modules keep their places in this library.
pub use mvm_base::{addr, atomic, error, fs, name};
pub use mvm_privileged::{net, proc_net};

use cli::{Cli, Command};
use state::Paths;

/// Runs one parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let paths = Paths::from_env();
    act_as_owner(&paths, &cli.command)?;
    match cli.command {
        Command::Create(args) => commands::create::run(args, &paths),
        Command::Start(args) => commands::start::run(args, &paths),
        Command::Stop(args) => commands::stop::run(args, &paths),
        Command::Restart(args) => commands::restart::run(args, &paths),
        Command::Pause(args) => commands::pause::run_pause(args, &paths),
        Command::Resume(args) => commands::pause::run_resume(args, &paths),
        Command::Shell(args) => commands::shell::run(args, &paths),
        Command::Diff(args) => commands::diff::run_diff(args, &paths),
        Command::Apply(args) => commands::diff::run_apply(args, &paths),
        Command::Discard(args) => commands::diff::run_discard(args, &paths),
        Command::Logs(args) => commands::logs::run(args, &paths),
        Command::Supervise(args) => commands::supervise::run(args, &paths),
        Command::List(args) => commands::list::run(args, &paths),
        Command::Inspect(args) => commands::inspect::run(args, &paths),
        Command::Port(args) => commands::port::run(args, &paths),
        Command::Rm(args) => commands::rm::run(args, &paths),
        Command::Templates(args) => commands::templates::run(args, &paths),
        Command::Image(args) => commands::image::run(args, &paths),
        Command::Up(args) => commands::up::run(args, &paths),
        Command::Direnv(args) => commands::direnv::run(args),
        Command::Doctor(args) => commands::doctor::run(args, &paths),
        Command::Setup(args) => commands::setup::run(args, &paths),
        Command::Completions(args) => commands::completions::run(args, cli::command()),
    }
}

/// Root acting on a VM that belongs to a user becomes that user first: the VM's files
/// and runtime dir are the user's, and whatever they planted there must be met with
/// their rights, not root's (its network still goes through the helper, as theirs does).
fn act_as_owner(paths: &Paths, command: &Command) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let name = match command {
        Command::Start(args) => Some(&args.name),
        Command::Stop(args) => Some(&args.name),
        Command::Restart(args) => Some(&args.name),
        Command::Pause(args) | Command::Resume(args) => Some(&args.name),
        Command::Shell(args) => Some(&args.name),
        Command::Diff(args) => Some(&args.name),
        Command::Apply(args) => Some(&args.name),
        Command::Discard(args) => Some(&args.name),
        Command::Logs(args) => Some(&args.name),
        Command::Inspect(args) => Some(&args.name),
        Command::Port(args) => Some(&args.name),
        Command::Rm(args) => Some(&args.name),
        Command::Up(args) => args.name.as_ref(),
        _ => None,
    };
    let Some(name) = name.and_then(|name| name.parse::<name::VmName>().ok()) else { return Ok(()) };
    match state::store::owner(paths, &name) {
        // With the shared roots' group, which its owner had (and may have lost since).
        Some(owner) if owner != 0 => {
            use std::os::unix::fs::MetadataExt;
            let shared =
                std::fs::metadata(&paths.state_dir).ok().map(|meta| meta.gid()).filter(|gid| *gid != 0);
            host::user::become_user(owner, shared)
        }
        _ => Ok(()),
    }
}
