//! `mvm completions SHELL`: print a completion script generated from the CLI definition.

use clap::Args;
use clap_complete::Shell;

/// Arguments of `mvm completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Runs `mvm completions` for the CLI `command`.
pub fn run(args: CompletionsArgs, command: clap::Command) -> anyhow::Result<i32> {
    use std::io::Write;
    std::io::stdout().write_all(&crate::generate::completion(command, args.shell))?;
    Ok(0)
}
