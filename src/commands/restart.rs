//! `mvm restart`: stop (if running), then start.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::name::VmName;
use crate::privileged::client::ThisProcess;
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
    let began = Instant::now();
    crate::vm::stop::stop(paths, &ThisProcess::new(paths), &name, false, Duration::from_secs(15))
        .with_context(|| format!("cannot stop VM '{name}'"))?;
    crate::vm::start::start(paths, &name, true, Duration::from_secs(120))
        .with_context(|| format!("cannot start VM '{name}'"))?;
    let address = crate::state::store::load(paths, &name)?.network.address;
    println!("VM '{name}' restarted in {:.2} s ({address})", began.elapsed().as_secs_f64());
    Ok(0)
}
