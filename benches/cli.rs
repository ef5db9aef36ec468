//! CLI benchmarks: wall time of whole `mvm` invocations, as a user sees them.
//!
//! `cargo bench --bench cli` prints median / p90 / min over repeated runs of
//! - `mvm list` and `mvm list --json` with 200 VMs on disk (target: median under 20 ms);
//! - `mvm create` into a state dir already holding 200 VMs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mvm::config::host::HostConfig;
use mvm::state::Paths;
use mvm::vm::create::{create, CreateArgs, HostLimits};

const VMS: usize = 200;
const RUNS: usize = 50;

fn mvm(paths: &Paths, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mvm"));
    command
        .args(args)
        .env("MVM_STATE_DIR", &paths.state_dir)
        .env("MVM_RUN_DIR", &paths.run_dir)
        .env("MVM_CONFIG", &paths.config_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn time_runs(label: &str, mut make: impl FnMut(usize) -> Command) {
    for i in 0..3 {
        make(RUNS + i).status().unwrap();
    }
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let start = Instant::now();
            let status = make(i).status().unwrap();
            let elapsed = start.elapsed();
            assert!(status.success(), "{label} failed");
            elapsed
        })
        .collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<40} median {:>7.2} ms   p90 {:>7.2} ms   min {:>7.2} ms   ({RUNS} runs)",
        ms(times[RUNS / 2]),
        ms(times[RUNS * 9 / 10]),
        ms(times[0])
    );
}

fn populate(paths: &Paths, host: &HostConfig, project: &Path) {
    let limits = HostLimits { cpus: 2, memory_mib: None };
    for i in 0..VMS {
        let args = CreateArgs {
            name: format!("vm{i}"),
            project: Some(project.to_path_buf()),
            ports: vec![format!("{}:80", 10000 + i)],
            root: "host".into(),
            ..CreateArgs::default()
        };
        create(&args, paths, host, limits).unwrap();
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::under(dir.path());
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let config = "[network]\npool = \"10.200.0.0/16\"\nsubnet_prefix = 26\n";
    std::fs::write(&paths.config_file, config).unwrap();
    let host = HostConfig::parse(config).unwrap();
    assert!(host.address_pool().unwrap().capacity() as usize > VMS + RUNS + 3);
    populate(&paths, &host, &project);
    println!("mvm CLI benchmarks, {VMS} VMs on disk");
    time_runs("mvm list", |_| mvm(&paths, &["list"]));
    time_runs("mvm list --json", |_| mvm(&paths, &["list", "--json"]));
    time_runs("mvm create (one more VM)", |i| mvm(&paths, &["create", &format!("new{i}")]));

    // `mvm diff` of a 10,000-file project: nothing changed, 100 files changed, then 1,000
    // changed with their patches.
    let big = dir.path().join("big");
    for i in 0..10_000 {
        let sub = big.join(format!("d{}", i / 100));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    let args = CreateArgs {
        name: "big".into(),
        project: Some(big.clone()),
        persist: true,
        root: "host".into(),
        ..CreateArgs::default()
    };
    create(&args, &paths, &host, HostLimits { cpus: 2, memory_mib: None }).unwrap();
    let upper = paths.state_dir.join("big/layer/upper");
    std::fs::create_dir_all(&upper).unwrap();
    time_runs("mvm diff, 10,000-file project, no change", |_| mvm(&paths, &["diff", "big"]));
    for i in 0..100 {
        let sub = upper.join(format!("d{}", i));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{}.txt", i * 100)), "changed\n").unwrap();
    }
    time_runs("mvm diff, 10,000-file project, 100 changed", |_| mvm(&paths, &["diff", "big"]));
    // The case that matters: 1,000 of the 10,000 files changed, read as a patch.
    for i in 0..1_000 {
        let sub = upper.join(format!("d{}", i / 10));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{}.txt", (i / 10) * 100 + i % 10)), format!("changed {i}\n"))
            .unwrap();
    }
    time_runs("mvm diff --patch, 10,000-file project, 1,000 changed", |_| {
        let mut command = mvm(&paths, &["diff", "--patch", "big"]);
        command.stdout(std::process::Stdio::null());
        command
    });
}
