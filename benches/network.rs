//! Host-network benchmarks (root; everything happens in a network namespace made here).
//!
//! `cargo bench --bench network` prints:
//! - host-side bring-up of one VM (bridge, tap, sysctls, firewall), from nothing and when
//!   already up (target: median under 30 ms), and its teardown;
//! - adding a port forward to a running VM, as `mvm port` does it (target: under 20 ms);
//! - the number of mvm rules with 1, 10 and 100 VMs up (isolation stays one rule).

use std::process::Command;
use std::time::{Duration, Instant};

use mvm::config::host::HostConfig;
use mvm::config::vm::VmConfig;
use mvm::net::host::HostNet;
use mvm::privileged::client::ThisProcess;
use mvm::spec::{HostPortSelector, PortForward};
use mvm::state::lock::RunLock;
use mvm::state::Paths;
use mvm::vm::create::{create, CreateArgs, HostLimits};
use mvm::vm::ports as port;

const RUNS: usize = 30;

fn report(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<44} median {:>7.2} ms   p90 {:>7.2} ms   min {:>7.2} ms   ({} runs)",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        ms(times[0]),
        times.len()
    );
}

fn timed(work: impl FnOnce()) -> Duration {
    let start = Instant::now();
    work();
    start.elapsed()
}

fn new_vm(paths: &Paths, name: &str) -> VmConfig {
    let args = CreateArgs { name: name.into(), root: "host".into(), cpus: Some(1), ..CreateArgs::default() };
    create(&args, paths, &HostConfig::default(), HostLimits { cpus: 1, memory_mib: None }).unwrap()
}

fn mvm_rule_lines() -> (usize, usize) {
    let mut total = 0;
    let mut isolation = 0;
    let out = Command::new("iptables-save").output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with("-A") && line.contains("--comment") && line.contains("mvm") {
            total += 1;
            isolation += usize::from(line.contains("-i mvmbr+ -o mvmbr+"));
        }
    }
    (total, isolation)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("network benchmarks skipped: they need root");
        return;
    }
    let namespace = format!("mvmbench-{}", std::process::id());
    assert!(Command::new("ip").args(["netns", "add", &namespace]).status().unwrap().success());
    let file = std::fs::File::open(format!("/run/netns/{namespace}")).unwrap();
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let result = std::panic::catch_unwind(run);
    let _ = Command::new("ip").args(["netns", "del", &namespace]).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn run() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::under(dir.path());
    let host = HostConfig::default();
    let web = new_vm(&paths, "web");
    let (roots, record) = (paths.roots(), web.record());
    let open = || HostNet::open(&roots, &host.network).unwrap();
    println!("mvm host-network benchmarks (in a private network namespace)");

    let (mut cold, mut warm, mut down) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        cold.push(timed(|| open().up(&record).unwrap()));
        warm.push(timed(|| open().up(&record).unwrap()));
        down.push(timed(|| open().down(&record).unwrap()));
    }
    report("network up, one VM, from nothing", cold);
    report("network up, one VM, already up", warm);
    report("network down, one VM", down);

    open().up(&record).unwrap();
    let run_dir = paths.vm_run_dir(&web.name);
    std::fs::create_dir_all(&run_dir).unwrap();
    let _running = RunLock::try_acquire(&run_dir.join("lock")).unwrap().unwrap();
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for i in 0..RUNS as u16 {
        let forward: PortForward = format!("{}:80", 20000 + i).parse().unwrap();
        add.push(timed(|| {
            port::add(&paths, &ThisProcess::new(&paths), &web.name, forward).unwrap();
        }));
        let selector: HostPortSelector = forward.host.to_string().parse().unwrap();
        remove.push(timed(|| {
            port::remove(&paths, &ThisProcess::new(&paths), &web.name, selector).unwrap();
        }));
    }
    report("port forward add (running VM, as mvm port)", add);
    report("port forward remove (running VM)", remove);
    open().down(&record).unwrap();

    println!("\n| VMs up | mvm rules (filter, nat and raw, jumps included) | isolation rules |");
    println!("|---|---|---|");
    let mut vms = Vec::new();
    for target in [1usize, 10, 100] {
        while vms.len() < target {
            let vm = new_vm(&paths, &format!("vm{}", vms.len()));
            open().up(&vm.record()).unwrap();
            vms.push(vm);
        }
        let (total, isolation) = mvm_rule_lines();
        println!("| {target} | {total} | {isolation} |");
    }
    for vm in &vms {
        open().down(&vm.record()).unwrap();
    }
}
