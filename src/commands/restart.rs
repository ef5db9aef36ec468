//! `mvm restart`: stop (if running), then start.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::name::VmName;
use crate::state::Paths;

/// Arguments of `mvm restart`.
#[derive(Debug, Clone, Args)]
pub struct RestartArgs {
    /// The VM to restart
    pub name: String,
}

/// Runs `mvm restart`.
pub fn run(args: RestartArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    super::stop::stop(paths, &name, false, Duration::from_secs(15))
        .with_context(|| format!("cannot stop VM '{name}'"))?;
    super::start::run(super::start::StartArgs { name: args.name, no_wait: false, timeout: 120 }, paths)
}
