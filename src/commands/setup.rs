//! `sudo mvm setup` and `--undo`: root's one step (see `setup`), and what it changed.

use clap::Args;

use crate::error::UserError;
use crate::setup::{member_notes, setup, undo, Target};
use crate::state::Paths;

/// Arguments of `mvm setup`.
#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// The group whose members may use mvm without root (made if missing)
    #[arg(long, default_value = "mvm")]
    pub group: String,
    /// Reverse it: remove the helper and the group's access
    #[arg(long)]
    pub undo: bool,
}

/// Runs `mvm setup`.
pub fn run(args: SetupArgs, paths: &Paths) -> anyhow::Result<i32> {
    if !crate::host::is_root() {
        return Err(UserError::needs_root("mvm setup changes the host").hint("run `sudo mvm setup`").into());
    }
    let target = Target::host(paths);
    let changes = if args.undo { undo(&target, &args.group)? } else { setup(&target, &args.group)? };
    for change in &changes {
        println!("{change}");
    }
    if changes.is_empty() {
        println!("nothing to change");
    }
    if !args.undo {
        for note in member_notes(&target, &args.group) {
            println!("{note}");
        }
        println!(
            "members of group '{}' now use mvm without sudo (add one: `sudo usermod -aG {} USER`, then log in again)",
            args.group, args.group
        );
    }
    Ok(0)
}
