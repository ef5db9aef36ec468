//! `mvm create`: declare a VM (see `vm::create`); nothing is started.

use anyhow::Context;

use crate::config::host::HostConfig;
use crate::state::Paths;
pub use crate::vm::create::CreateArgs;
use crate::vm::create::{create, HostLimits};

/// Runs `mvm create`.
pub fn run(args: CreateArgs, paths: &Paths) -> anyhow::Result<i32> {
    let host = HostConfig::load(&paths.config_file)?;
    let name = args.name.clone();
    let config = create(&args, paths, &host, HostLimits::of_this_host())
        .with_context(|| format!("cannot create VM '{name}'"))?;
    let network = &config.network;
    let plural = if config.cpus == 1 { "" } else { "s" };
    println!(
        "created VM '{}': {} CPU{plural}, {} memory, {}, address {}",
        config.name,
        config.cpus,
        config.memory(),
        config.hypervisor,
        network.address
    );
    for port in &config.ports {
        println!("  host port {}/{} → guest port {}", port.host, port.protocol, port.guest);
    }
    for process in &config.processes {
        println!("  runs process '{}' at boot", process.name);
    }
    Ok(0)
}
