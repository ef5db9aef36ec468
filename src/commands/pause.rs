//! `mvm pause` and `mvm resume`: stop a running VM's vCPUs, keeping everything in it as it
//! is (processes, connections, memory), and run them again in milliseconds. `up` and
//! `shell` resume a paused VM by themselves; `up`'s VMs pause when idle.

use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::name::VmName;
use crate::runtime::request::Request;
use crate::state::Paths;

/// Arguments of `mvm pause` and `mvm resume`.
#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    /// The VM
    pub name: String,
}

/// Runs `mvm pause`.
pub fn run_pause(args: PauseArgs, paths: &Paths) -> anyhow::Result<i32> {
    run(args, paths, Request::Pause)
}

/// Runs `mvm resume`.
pub fn run_resume(args: PauseArgs, paths: &Paths) -> anyhow::Result<i32> {
    run(args, paths, Request::Resume)
}

fn run(args: PauseArgs, paths: &Paths, request: Request) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    let began = Instant::now();
    let word = request.as_str();
    if !crate::vm::pause::request(paths, &name, request)
        .with_context(|| format!("cannot {word} VM '{name}'"))?
    {
        anyhow::bail!("VM '{name}' did not {word} (still booting or stopping?); see `mvm logs {name} --source supervisor`");
    }
    println!("VM '{name}' {word}d in {:.1} ms", began.elapsed().as_secs_f64() * 1000.0);
    Ok(0)
}
