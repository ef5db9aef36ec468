//! File-event benchmarks (root, QEMU/TCG, a Debian kernel, in a private network namespace).
//!
//! `cargo bench --bench file_events` prints:
//! - host write → guest watcher event: a host program writes a file in the project; a
//!   guest `inotifywait` prints its `CLOSE_WRITE` line, which reaches the benchmark
//!   through `mvm shell`'s output (so the figure includes that way back too). Targets:
//!   median ≤ 50 ms, p95 ≤ 200 ms;
//! - a burst (a `git checkout`'s worth: 5,000 files written at once): until the guest's
//!   watcher saw the last one, and whether the guest then lists all 5,000;
//! - a project of 100,000 files (10,000 directories): how long the host takes to watch
//!   it, and the supervisor's resident memory against a VM with an empty project
//!   (target: at most 16 MiB more);
//! - `git status` over 10,000 files on the project share against the same tree on the
//!   guest's tmpfs (target: ratio at most 1.2).

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

mod common;
use common::{line, Bench};

fn main() {
    Bench::with("mvmevents", run);
}

/// `mvm shell NAME -- sh -c SCRIPT`'s output (which must succeed).
fn sh(bench: &Bench, name: &str, script: &str) -> String {
    let output =
        bench.mvm(&["shell", name, "--", "sh", "-c", script]).stdout(Stdio::piped()).output().unwrap();
    assert!(output.status.success(), "{script} failed in {name}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `inotifywait` on `dir` in guest `name`; each file closed after writing arrives
/// on the returned channel with the time its line arrived.
fn guest_watcher(bench: &Bench, name: &str, dir: &Path) -> std::sync::mpsc::Receiver<(String, Instant)> {
    let script = format!("inotifywait -m -q -e close_write --format %f {}", dir.display());
    let mut child =
        bench.mvm(&["shell", name, "--", "sh", "-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send((line, Instant::now())).is_err() {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    });
    // Let the watcher set up (under TCG, a second or two).
    std::thread::sleep(Duration::from_secs(4));
    received
}

fn supervisor_rss_kib(vm: &str) -> u64 {
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.len() >= 3 && args[1] == b"supervise" && args[2] == vm.as_bytes() {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap();
            let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            return rss.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no supervisor of {vm}");
}

fn run(bench: &Bench) {
    std::fs::write(
        &bench.paths.config_file,
        "[defaults]\nhypervisor = \"qemu\"\ncpus = 1\nmemory = \"512M\"\n",
    )
    .unwrap();
    let project = bench.dir.path().join("web");
    std::fs::create_dir_all(project.join("burst")).unwrap();
    bench.ok(&["create", "web", "--project", project.to_str().unwrap(), "--no-auto-ports"]);
    // A repository of 10,000 files, there before the VM starts (as a project is).
    let repo = project.join("repo");
    for dir in 0..100 {
        std::fs::create_dir_all(repo.join(format!("d{dir}"))).unwrap();
        for file in 0..100 {
            std::fs::write(repo.join(format!("d{dir}/f{file}.txt")), format!("{dir} {file}\n")).unwrap();
        }
    }
    let git = |args: &[&str]| {
        let status =
            Command::new("git").args(args).current_dir(&repo).stdout(Stdio::null()).status().unwrap();
        assert!(status.success());
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "tree"]);
    bench.ok(&["start", "web"]);
    std::thread::sleep(Duration::from_secs(3));
    let small_rss = supervisor_rss_kib("web");

    // Latency, one change at a time.
    let events = guest_watcher(bench, "web", &project);
    let mut latencies = Vec::new();
    for run in 0..40 {
        let name = format!("lat-{run}.txt");
        let written = Instant::now();
        std::fs::write(project.join(&name), format!("change {run}\n")).unwrap();
        loop {
            let (line, at) = events.recv_timeout(Duration::from_secs(10)).expect("no event within 10 s");
            if line == name {
                latencies.push(at.duration_since(written).as_secs_f64() * 1000.0);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    line("host write -> guest inotify event (TCG)", &latencies, "ms");

    // A burst.
    let burst = guest_watcher(bench, "web", &project.join("burst"));
    let started = Instant::now();
    for file in 0..5000 {
        std::fs::write(project.join(format!("burst/f{file:04}")), "x").unwrap();
    }
    let written = started.elapsed();
    let last = loop {
        let (line, at) = burst.recv_timeout(Duration::from_secs(120)).expect("the burst never arrived whole");
        if line == "f4999" {
            break at;
        }
    };
    let listed = sh(bench, "web", &format!("ls {}/burst | wc -l", project.display()));
    println!(
        "burst of 5,000 new files (written in {:.2} s) -> the last one's event in the guest: {:.2} s; the guest lists {} files",
        written.as_secs_f64(),
        last.duration_since(started).as_secs_f64(),
        listed.trim()
    );

    // git status on the share against the guest's tmpfs (once the burst is applied).
    std::thread::sleep(Duration::from_secs(5));
    let timing = "s=$(date +%s%N); for i in 1 2 3 4 5; do git status >/dev/null; done; e=$(date +%s%N); echo $(( (e - s) / 5000000 ))";
    let repo_in_guest = repo.display();
    let on_share: f64 = sh(bench, "web", &format!("cd {repo_in_guest} && git status >/dev/null && {timing}"))
        .trim()
        .parse()
        .unwrap();
    let on_tmpfs: f64 = sh(
        bench,
        "web",
        &format!("rm -rf /tmp/copy && cp -a {repo_in_guest} /tmp/copy && cd /tmp/copy && git status >/dev/null && {timing}"),
    )
    .trim()
    .parse()
    .unwrap();
    println!(
        "git status over 10,000 files: {on_share:.0} ms on the share, {on_tmpfs:.0} ms on tmpfs (ratio {:.2})",
        on_share / on_tmpfs
    );
    let after_bursts = supervisor_rss_kib("web");
    bench.ok(&["stop", "web"]);

    // Watching 100,000 files.
    let big = bench.dir.path().join("big");
    for dir in 0..10_000 {
        std::fs::create_dir_all(big.join(format!("m{}/p{dir}", dir / 100))).unwrap();
        for file in 0..10 {
            std::fs::write(big.join(format!("m{}/p{dir}/f{file}.js", dir / 100)), "").unwrap();
        }
    }
    bench.ok(&["create", "big", "--project", big.to_str().unwrap(), "--no-auto-ports"]);
    bench.ok(&["start", "big"]);
    std::thread::sleep(Duration::from_secs(3));
    let big_rss = supervisor_rss_kib("big");
    let log = std::fs::read_to_string(bench.paths.state_dir.join("big/log/supervisor.log")).unwrap();
    let watching =
        log.lines().find(|l| l.contains("directories of the project for file events")).unwrap_or("?");
    println!("100,000 files: {}", watching.split("] ").nth(1).unwrap_or(watching));
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "supervisor memory: {:.1} MiB with 100,000 files watched, {:.1} MiB with a small project ({:+.1} MiB); {:.1} MiB after the bursts above",
        mib(big_rss),
        mib(small_rss),
        mib(big_rss) - mib(small_rss),
        mib(after_bursts)
    );
    bench.ok(&["stop", "big"]);
}
