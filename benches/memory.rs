//! What a VM costs the host in memory (issue 24): the hypervisor's resident memory idle,
//! with 600 MiB in use in the guest, and 30 s after the guest freed them (free page
//! reporting hands them back); and each of mvm's own processes for an idle VM.
//!
//!   cargo bench --bench memory      # as root, with QEMU (TCG here)

mod common;

use std::time::Duration;

use common::Bench;

fn main() {
    Bench::with("mvmmem", run);
}

/// Resident memory of process `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    mvm::view::resident_mib(pid).unwrap_or(0) as f64
}

/// Process `pid`'s resident set (`Rss`), its proportional share of it (`Pss`: pages it
/// shares with other processes, such as the same virtiofsd binary's six copies, counted
/// once among them) and what it alone holds (`Private_*`), in MiB.
fn memory_mib(pid: u32) -> (f64, f64, f64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        rollup
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum::<f64>()
            / 1024.0
    };
    (field("Rss:"), field("Pss:"), field("Private_Clean:") + field("Private_Dirty:"))
}

/// The processes of the VM whose runtime dir is `run_dir`, by name, beside its supervisor.
fn vm_processes(run_dir: &std::path::Path, supervisor: u32) -> Vec<(String, u32)> {
    let mut found = vec![("supervisor".to_string(), supervisor)];
    let needle = run_dir.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid != supervisor && text.contains(&needle) {
            let program = text.split_whitespace().next().unwrap_or_default();
            let name = std::path::Path::new(program).file_name().unwrap_or_default().to_string_lossy();
            let tag = text.split("fs-").nth(1).and_then(|rest| rest.split(".sock").next());
            found.push((tag.map_or(name.to_string(), |tag| format!("{name}[{tag}]")), pid));
        }
    }
    found
}

fn run(bench: &Bench) {
    std::fs::create_dir_all(&bench.paths.state_dir).unwrap();
    std::fs::write(
        &bench.paths.config_file,
        "[defaults]\nhypervisor = \"qemu\"\ncpus = 1\nmemory = \"1G\"\n",
    )
    .unwrap();
    bench.ok(&["create", "mem", "--ignore-port", "9999"]);
    bench.ok(&["start", "mem"]);
    let run_dir = bench.paths.run_dir.join("mem");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("status.json")).unwrap()).unwrap();
    let hypervisor = status["hypervisor_pid"].as_u64().unwrap() as u32;
    let supervisor = status["supervisor_pid"].as_u64().unwrap() as u32;
    println!("mvm memory benchmarks (a 1 GiB VM, QEMU)");
    std::thread::sleep(Duration::from_secs(20));
    let idle = rss_mib(hypervisor);
    println!("{:<52} {idle:>8.0} MiB", "hypervisor RSS, idle guest");
    // 600 MiB written (every page touched), held, then freed by the process's exit.
    let hold =
        "import time; b = bytearray(b'\\x01') * (600 << 20); open('/tmp/held', 'w').close(); time.sleep(8)";
    let mut holder = bench.mvm(&["shell", "mem", "--", "python3", "-c", hold]).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let busy = rss_mib(hypervisor);
    println!("{:<52} {busy:>8.0} MiB", "hypervisor RSS, 600 MiB in use in the guest");
    holder.wait().unwrap();
    std::thread::sleep(Duration::from_secs(30));
    let after = rss_mib(hypervisor);
    println!("{:<52} {after:>8.0} MiB", "hypervisor RSS, 30 s after the guest freed them");
    println!("{:<52} {:>+8.0} MiB (target within 150)", "  above idle", after - idle);

    println!("{:<52} {:>8} {:>8} {:>8}", "mvm's own processes for an idle VM (MiB)", "RSS", "PSS", "private");
    let mut total = (0.0, 0.0, 0.0);
    for (name, pid) in vm_processes(&run_dir, supervisor) {
        if pid == hypervisor {
            continue;
        }
        let (rss, pss, private) = memory_mib(pid);
        total = (total.0 + rss, total.1 + pss, total.2 + private);
        println!("{:<52} {rss:>8.1} {pss:>8.1} {private:>8.1}", format!("  {name}"));
    }
    println!("{:<52} {:>8.1} {:>8.1} {:>8.1} (target 16)", "  all of them", total.0, total.1, total.2);
    bench.ok(&["stop", "mem"]);
}
