//! The command line, as clap types. Each subcommand's arguments live beside its `run`.

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::{
    completions::CompletionsArgs,
    create::CreateArgs,
    diff::{ApplyArgs, DiffArgs, DiscardArgs},
    direnv::DirenvArgs,
    doctor::DoctorArgs,
    image::ImageArgs,
    inspect::InspectArgs,
    list::ListArgs,
    logs::LogsArgs,
    pause::PauseArgs,
    port::PortArgs,
    restart::RestartArgs,
    rm::RmArgs,
    setup::SetupArgs,
    shell::ShellArgs,
    start::StartArgs,
    stop::StopArgs,
    supervise::SuperviseArgs,
    templates::TemplatesArgs,
    up::UpArgs,
};
use crate::error::EXIT_CODES_HELP;

const ENVIRONMENT_HELP: &str = "\
Environment:
  MVM_STATE_DIR  per-VM state [default: /var/lib/microvms]
  MVM_RUN_DIR    per-VM runtime files [default: /run/mvm]
  MVM_CONFIG     host config [default: /etc/mvm/config.toml]";

/// mvm: one isolated, fast microVM per project.
#[derive(Debug, Parser)]
#[command(
    name = "mvm",
    version,
    about = "One isolated, fast microVM per project",
    long_about = "mvm gives each project its own microVM: the project shared at the same path, \
                  its own network with NAT, isolated from every other VM, entered with `mvm shell`.",
    after_help = format!("{EXIT_CODES_HELP}\n\n{ENVIRONMENT_HELP}"),
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Declare a new VM (starts nothing)
    Create(CreateArgs),
    /// Start a VM and wait until it answers
    Start(StartArgs),
    /// Shut a VM down and remove everything it had on the host
    Stop(StopArgs),
    /// Create and start the VM of a project as needed, leased to the calling shell (for .envrc)
    Up(UpArgs),
    /// Print .envrc lines that bring the project's VM up when a shell enters it
    Direnv(DirenvArgs),
    /// Stop, then start a VM
    Restart(RestartArgs),
    /// Freeze a running VM's CPUs, keeping its processes and connections (resumed by `resume`, `up`, `shell`)
    Pause(PauseArgs),
    /// Run a paused VM again, its clock set to the host's
    Resume(PauseArgs),
    /// Open a shell in a VM, or run one command there
    Shell(ShellArgs),
    /// List all VMs
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show everything about one VM
    Inspect(InspectArgs),
    /// List, add or remove port forwards
    Port(PortArgs),
    /// Show what a VM changed in its project's overlay
    Diff(DiffArgs),
    /// Copy a VM's overlay changes into the project
    Apply(ApplyArgs),
    /// Drop a stopped VM's overlay changes
    Discard(DiscardArgs),
    /// Show a VM's console (or another log)
    Logs(LogsArgs),
    /// Remove a stopped VM with its state, volumes and logs
    Rm(RmArgs),
    /// Build, list and remove images: clean Debian trees VMs boot with `create --image`
    Image(ImageArgs),
    /// List the templates `create --template` takes, or show one
    Templates(TemplatesArgs),
    /// Check that this host can run VMs
    Doctor(DoctorArgs),
    /// Prepare this host once so that a group's members use mvm without root
    Setup(SetupArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Run a VM's supervisor (started by `mvm start`)
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

/// The clap command, for completions and man pages.
pub fn command() -> clap::Command {
    Cli::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn help_lists_exit_codes_and_environment() {
        let help = command().render_long_help().to_string();
        assert!(help.contains(EXIT_CODES_HELP), "{help}");
        assert!(help.contains(ENVIRONMENT_HELP), "{help}");
    }
}
