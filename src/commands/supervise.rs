//! `mvm supervise NAME` (hidden): the per-VM supervisor, started by `mvm start`.

use clap::Args;

use crate::name::VmName;
use crate::state::Paths;

/// Arguments of `mvm supervise`.
#[derive(Debug, Clone, Args)]
pub struct SuperviseArgs {
    /// The VM to supervise
    pub name: String,
}

/// Runs the supervisor until the VM ends.
pub fn run(args: SuperviseArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    crate::supervisor::supervise(paths, &name)?;
    Ok(0)
}
