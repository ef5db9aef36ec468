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

/// One mapping of a process (`/proc/PID/smaps`): the file it maps (device and inode,
/// `0` for anonymous memory), whether it is shared, and its size, resident set (`Rss`),
/// proportional share (`Pss`) and what the process alone holds (`Private_*`), in KiB.
#[derive(Default)]
struct Mapping {
    file: (String, u64),
    shared: bool,
    size: u64,
    rss: u64,
    pss: u64,
    private: u64,
}

fn mappings(pid: u32) -> Vec<Mapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut found: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_header = fields.first().is_some_and(|range| range.contains('-') && !range.ends_with(':'));
        if is_header && fields.len() >= 5 {
            let shared = fields[1].ends_with('s');
            let file = (fields[3].to_string(), fields[4].parse().unwrap_or(0));
            found.push(Mapping { file, shared, ..Mapping::default() });
            continue;
        }
        let (Some(mapping), [key, value, ..]) = (found.last_mut(), fields.as_slice()) else { continue };
        let kib: u64 = value.parse().unwrap_or(0);
        match *key {
            "Size:" => mapping.size = kib,
            "Rss:" => mapping.rss = kib,
            "Pss:" => mapping.pss = kib,
            "Private_Clean:" | "Private_Dirty:" => mapping.private += kib,
            _ => {}
        }
    }
    found
}

/// The guest's memory: the hypervisor's largest shared mapping (a memfd both hypervisors
/// share with every vhost-user device).
fn guest_memory(hypervisor: u32) -> (String, u64) {
    let largest = mappings(hypervisor).into_iter().filter(|m| m.shared).max_by_key(|m| m.size);
    largest.expect("the hypervisor shares the guest's memory").file
}

/// Process `pid`'s memory in MiB: the guest memory it maps (which the hypervisor's figure
/// counts already: a virtiofsd writes file data straight into the guest's pages), and,
/// besides that, its resident set, its proportional share (pages it shares with other
/// processes, such as the same virtiofsd binary's copies, counted once among them) and
/// what it alone holds.
fn memory_mib(pid: u32, guest: &(String, u64)) -> [f64; 4] {
    let mut kib = [0u64; 4];
    for mapping in mappings(pid) {
        if mapping.file == *guest {
            kib[0] += mapping.rss;
        } else {
            kib[1] += mapping.rss;
            kib[2] += mapping.pss;
            kib[3] += mapping.private;
        }
    }
    kib.map(|k| k as f64 / 1024.0)
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

    let guest = guest_memory(hypervisor);
    let heading = "mvm's own processes for an idle VM (MiB)";
    println!("{heading:<44} {:>9} {:>7} {:>7} {:>7}", "guest RAM", "RSS", "PSS", "private");
    let mut total = [0.0; 4];
    for (name, pid) in vm_processes(&run_dir, supervisor) {
        if pid == hypervisor {
            continue;
        }
        let figures = memory_mib(pid, &guest);
        total.iter_mut().zip(figures).for_each(|(sum, figure)| *sum += figure);
        let [ram, rss, pss, private] = figures;
        println!("{:<44} {ram:>9.1} {rss:>7.1} {pss:>7.1} {private:>7.1}", format!("  {name}"));
    }
    let [ram, rss, pss, private] = total;
    println!("{:<44} {ram:>9.1} {rss:>7.1} {pss:>7.1} {private:>7.1} (target: PSS 16)", "  all of them");
    bench.ok(&["stop", "mem"]);
}
