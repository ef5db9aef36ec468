//! `mvm rm`: delete a stopped VM and everything it keeps on the host.
//!
//! The VM directory is first renamed to a hidden trash name (atomic), then deleted, so
//! an interrupted `rm` never leaves a half-deleted VM that `list` would show.

use anyhow::Context;
use clap::Args;

use crate::name::VmName;
use crate::privileged::client::ThisProcess;
use crate::state::store::{self, RunState};
use crate::state::Paths;
use crate::vm::remove::remove;

/// Arguments of `mvm rm`.
#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// The VM to remove (with its volumes and logs)
    pub name: String,
    /// Stop the VM first if it is running
    #[arg(long)]
    pub force: bool,
    /// Keep the VM's volumes; a new VM of the same name with the same volumes gets them back
    #[arg(long)]
    pub keep_volumes: bool,
}

/// Runs `mvm rm`.
pub fn run(args: RmArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    if args.force && store::exists(paths, &name) && store::run_state(paths, &name)? == RunState::Running {
        crate::vm::stop::stop(
            paths,
            &ThisProcess::new(paths),
            &name,
            true,
            std::time::Duration::from_secs(5),
        )
        .with_context(|| format!("cannot stop VM '{name}' before removing it"))?;
    }
    remove(paths, &ThisProcess::new(paths), &name, args.keep_volumes)
        .with_context(|| format!("cannot remove VM '{name}'"))?;
    println!("removed VM '{name}'");
    if args.keep_volumes {
        println!("its volumes are kept in {}", paths.kept_volumes(&name).display());
    }
    Ok(0)
}
