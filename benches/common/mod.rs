//! What the VM benchmarks share: a private network namespace and state for mvm, the
//! lines they print (median, p95, min, max), and running work inside the namespace.

#![allow(dead_code)]

use std::process::{Command, Stdio};

use mvm::state::Paths;

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn line(label: &str, values: &[f64], unit: &str) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // The nearest-rank 95th percentile.
    let p95 = sorted[(sorted.len() * 95).div_ceil(100) - 1];
    println!(
        "{label:<52} median {:>8.1} {unit}   p95 {:>8.1} {unit}   min {:>8.1} {unit}   max {:>8.1} {unit}   ({} runs)",
        median(values.to_vec()),
        p95,
        sorted[0],
        sorted[sorted.len() - 1],
        values.len()
    );
}

/// An mvm of its own (state under a temporary directory) in a network namespace of its own.
pub struct Bench {
    pub paths: Paths,
    pub namespace: String,
    pub dir: tempfile::TempDir,
}

impl Bench {
    /// Runs `run` with a new bench named after `prefix`, root and QEMU being there
    /// (otherwise it says why not), and removes the namespace however `run` ends.
    pub fn with(prefix: &str, run: impl FnOnce(&Bench) + std::panic::UnwindSafe) {
        if !nix::unistd::geteuid().is_root() || which::which("qemu-system-x86_64").is_err() {
            println!("{prefix} benchmarks skipped: they need root and qemu-system-x86_64 (scripts/setup)");
            return;
        }
        let namespace = format!("{prefix}-{}", std::process::id());
        assert!(Command::new("ip").args(["netns", "add", &namespace]).status().unwrap().success());
        // Its loopback up: automatic forwards listen on 127.0.0.1.
        assert!(Command::new("ip")
            .args(["-n", &namespace, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        let dir = tempfile::tempdir().unwrap();
        let bench = Bench { paths: Paths::under(dir.path()), namespace: namespace.clone(), dir };
        let result = std::panic::catch_unwind(|| run(&bench));
        let _ = Command::new("ip").args(["netns", "del", &namespace]).status();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// `mvm ARGS` in the bench's namespace and state, its output dropped.
    pub fn mvm(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.namespace))
            .arg(env!("CARGO_BIN_EXE_mvm"))
            .args(args)
            .env("MVM_STATE_DIR", &self.paths.state_dir)
            .env("MVM_RUN_DIR", &self.paths.run_dir)
            .env("MVM_CONFIG", &self.paths.config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// `mvm ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) {
        assert!(self.mvm(args).status().unwrap().success(), "mvm {args:?} failed");
    }

    /// Runs `job` in the bench's network namespace (where the supervisors' forwards listen).
    pub fn in_namespace<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = std::fs::File::open(format!("/run/netns/{}", self.namespace)).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            job()
        })
        .join()
        .unwrap()
    }
}
