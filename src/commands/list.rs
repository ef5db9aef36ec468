//! `mvm list`: every VM with its state, address, size, ports, project and uptime.

use clap::Args;

use crate::output::{self, print_json, print_table, short_duration};
use crate::spec::MemorySize;
use crate::state::store;
use crate::state::Paths;
use crate::view::{VmState, VmSummary};

/// Arguments of `mvm list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print a JSON array (stable field names) instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Runs `mvm list`.
pub fn run(args: ListArgs, paths: &Paths) -> anyhow::Result<i32> {
    let summaries: Vec<VmSummary> =
        store::list(paths)?.iter().map(|entry| VmSummary::of(paths, entry)).collect();
    if args.json {
        print_json(&summaries)?;
        return Ok(0);
    }
    let mut table =
        output::table(["NAME", "STATE", "IP", "CPUS", "MEMORY", "DISK", "PORTS", "PROJECT", "UPTIME"]);
    for vm in &summaries {
        table.add_row(row(vm));
    }
    print_table(&table);
    if summaries.is_empty() {
        eprintln!("no VMs yet; make one with `mvm create NAME --project DIR`");
    }
    for vm in summaries.iter().filter(|vm| vm.state == VmState::Broken) {
        eprintln!("warning: VM '{}' is broken: {}", vm.name, vm.error.as_deref().unwrap_or("unknown error"));
    }
    Ok(0)
}

fn row(vm: &VmSummary) -> [String; 9] {
    let dash = || "-".to_string();
    let ports: Vec<String> = vm.ports.iter().map(ToString::to_string).collect();
    [
        vm.name.clone(),
        vm.state.as_str().to_string(),
        vm.ip.clone().unwrap_or_else(dash),
        vm.cpus.map_or_else(dash, |cpus| cpus.to_string()),
        match (vm.memory_used_mib, vm.memory_mib) {
            (Some(used), Some(limit)) => {
                format!("{}/{}", MemorySize::from_mib(used), MemorySize::from_mib(limit))
            }
            (_, limit) => limit.map_or_else(dash, |mib| MemorySize::from_mib(mib).to_string()),
        },
        vm.disk.map_or_else(dash, |disk| {
            format!("{}/{}", output::short_size(disk.used_bytes), output::short_size(disk.limit_bytes))
        }),
        if ports.is_empty() { dash() } else { ports.join(",") },
        vm.project.as_ref().map_or_else(dash, |path| path.display().to_string()),
        vm.uptime_seconds.map_or_else(dash, short_duration),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running VM's memory says what the host holds of it beside its limit.
    #[test]
    fn a_running_vms_memory_is_used_of_limit() {
        let vm = VmSummary {
            name: "web".into(),
            state: VmState::Running,
            ip: None,
            cpus: Some(1),
            memory_mib: Some(1024),
            memory_used_mib: Some(338),
            disk: Some(crate::state::disk::Usage { used_bytes: 1288 << 20, limit_bytes: 20 << 30 }),
            hypervisor: None,
            ports: vec![],
            project: None,
            uptime_seconds: Some(5),
            reason: None,
            error: None,
        };
        assert_eq!(row(&vm)[4], "338M/1G");
        assert_eq!(row(&vm)[5], "1.3G/20G");
        assert_eq!(row(&VmSummary { memory_used_mib: None, ..vm })[4], "1G");
    }
}
