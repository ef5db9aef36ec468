//! `mvm start`: spawn the VM's supervisor and wait until the guest agent answers.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::name::VmName;
use crate::state::store::{self};
use crate::state::Paths;
use crate::vm::start::{start, Started};

/// Arguments of `mvm start`.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// The VM to start
    pub name: String,
    /// Return once the supervisor runs, without waiting for the guest
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the guest agent
    #[arg(long, value_name = "S", default_value_t = 120)]
    pub timeout: u64,
}

/// Runs `mvm start`.
pub fn run(args: StartArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    let started = Instant::now();
    match start(paths, &name, !args.no_wait, Duration::from_secs(args.timeout))
        .with_context(|| format!("cannot start VM '{name}'"))?
    {
        Started::AlreadyRunning => eprintln!("VM '{name}' is already running"),
        Started::Resumed => println!("VM '{name}' was paused and runs again"),
        Started::Spawned => println!("VM '{name}' is starting"),
        Started::Ready => {
            let config = store::load(paths, &name)?;
            println!(
                "VM '{name}' is up in {:.2} s ({})",
                started.elapsed().as_secs_f64(),
                config.network.address
            );
        }
    }
    Ok(0)
}
