//! `mvm stop`: ask the supervisor for a graceful shutdown (or a kill) and wait until the
//! VM and everything it had on the host are gone.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::name::VmName;
use crate::privileged::client::ThisProcess;
use crate::state::Paths;
use crate::vm::stop::stop;

/// Arguments of `mvm stop`.
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// The VM to stop
    pub name: String,
    /// Kill the VM at once instead of shutting it down
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for a graceful shutdown before killing
    #[arg(long, value_name = "S", default_value_t = 15)]
    pub timeout: u64,
}

/// Runs `mvm stop`.
pub fn run(args: StopArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    let started = Instant::now();
    if stop(paths, &ThisProcess::new(paths), &name, args.force, Duration::from_secs(args.timeout))
        .with_context(|| format!("cannot stop VM '{name}'"))?
    {
        println!("VM '{name}' stopped in {:.2} s", started.elapsed().as_secs_f64());
    } else {
        eprintln!("VM '{name}' is not running");
    }
    Ok(0)
}
