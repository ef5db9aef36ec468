//! Boot benchmarks (root, QEMU, a Debian kernel; all in a private network namespace).
//!
//! `cargo bench --bench boot` prints:
//! - the cold build of the base initramfs (target: under 1 s);
//! - host-side start overhead with a warm cache: from running `mvm start` to the
//!   hypervisor's exec, measured with a stand-in hypervisor that notes when it starts
//!   (target: under 50 ms);
//! - `mvm start` to agent-ready, against a plain QEMU boot of the same kernel to a
//!   trivial `/init` (busybox, which powers off at once): what mvm adds over the kernel's
//!   own boot (target: ratio at most 1.3);
//! - the start of a second VM from an image against a plain start (target: ratio at
//!   most 1.2), and what each image VM's own disk takes;
//! - `mvm shell NAME -- true` round trips on a running VM;
//! - instant re-entry (`up` on a paused VM) and a paused VM's CPU;
//! - automatic port forwarding: a guest listener up → the host's `127.0.0.1` port
//!   connects (target: p95 ≤ 1 s under TCG), the listener closed → the forward gone
//!   (target: ≤ 3 s), and the forwards made for an ignored port (target: none).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mvm::boot::initramfs::{self, BaseSpec};
use mvm::boot::kernel;

mod common;
use common::{line, median, Bench};

/// A `newc` archive whose `/init` is busybox (static, from Debian's busybox-static)
/// powering the machine off: the least a boot of this kernel can do.
fn write_trivial_initramfs(path: &std::path::Path) {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup installs it)");
    let file = std::fs::File::create(path).unwrap();
    let mut cpio = mvm::boot::cpio::CpioWriter::new(std::io::BufWriter::new(file));
    cpio.dir("bin", 0o755).unwrap();
    cpio.file("bin/busybox", 0o755, &busybox).unwrap();
    cpio.file("init", 0o755, b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n").unwrap();
    std::io::Write::flush(&mut cpio.finish().unwrap()).unwrap();
}

fn main() {
    Bench::with("mvmboot", run);
}

fn run(bench: &Bench) {
    let paths = &bench.paths;
    let kernel = kernel::discover(std::path::Path::new("/"), None, &mvm::host::kernel_release()).unwrap();
    println!("mvm boot benchmarks: kernel {}", kernel.image.display());

    let mut spec = BaseSpec::for_kernel(&kernel, None).unwrap();
    spec.image.exe = env!("CARGO_BIN_EXE_mvm").into();
    let builds: Vec<f64> = (0..5)
        .map(|run| {
            let cache = paths.state_dir.with_file_name(format!("cache-{run}"));
            let start = Instant::now();
            initramfs::cached_base(&cache, &spec).unwrap();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    line("cold initramfs build (written to an empty cache)", &builds, "ms");

    // Host-side overhead: a stand-in hypervisor notes the time it was exec'd.
    let mark = paths.state_dir.with_file_name("exec-time");
    let fake = paths.state_dir.with_file_name("fake-qemu");
    std::fs::create_dir_all(&paths.state_dir).unwrap();
    std::fs::write(&fake, format!("#!/bin/sh\ndate +%s%N > {}\nexec sleep 600\n", mark.display())).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        &paths.config_file,
        format!(
            "[defaults]\nhypervisor = \"qemu\"\ncpus = 1\nmemory = \"512M\"\n[paths]\nqemu = \"{}\"\n",
            fake.display()
        ),
    )
    .unwrap();
    bench.ok(&["create", "fake"]);
    bench.ok(&["start", "fake", "--no-wait"]);
    bench.ok(&["stop", "fake", "--force"]);
    let overheads: Vec<f64> = (0..10)
        .map(|_| {
            let _ = std::fs::remove_file(&mark);
            let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
            bench.ok(&["start", "fake", "--no-wait"]);
            let deadline = Instant::now() + Duration::from_secs(10);
            let exec_ns: u128 = loop {
                if let Some(ns) = std::fs::read_to_string(&mark).ok().and_then(|t| t.trim().parse().ok()) {
                    break ns;
                }
                assert!(Instant::now() < deadline, "the stand-in hypervisor never ran");
                std::thread::sleep(Duration::from_millis(1));
            };
            bench.ok(&["stop", "fake", "--force"]);
            (exec_ns - start) as f64 / 1e6
        })
        .collect();
    line("mvm start -> hypervisor exec (warm cache)", &overheads, "ms");

    // Real boots.
    std::fs::write(&paths.config_file, "[defaults]\nhypervisor = \"qemu\"\ncpus = 1\nmemory = \"512M\"\n")
        .unwrap();
    bench.ok(&["create", "web", "--ignore-port", "9999"]);
    let starts: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            bench.ok(&["start", "web"]);
            let elapsed = start.elapsed().as_secs_f64();
            bench.ok(&["stop", "web"]);
            elapsed
        })
        .collect();
    line("mvm start -> guest agent ready (TCG)", &starts, "s");

    // The baseline: the same kernel and command line, booting a trivial initramfs whose
    // /init (busybox) powers off at once; the run ends when the guest reached /init.
    let trivial = bench.dir.path().join("trivial.cpio");
    write_trivial_initramfs(&trivial);
    let cmdline = mvm::vmm::kernel_cmdline(&mvm::vmm::qemu::tcg_kernel_args().unwrap_or_default());
    let bare: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new("qemu-system-x86_64")
                .args(["-M", "microvm,rtc=on", "-accel", "tcg", "-cpu", "max", "-m", "512M", "-smp", "1"])
                .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
                .arg("-kernel")
                .arg(&kernel.image)
                .arg("-initrd")
                .arg(&trivial)
                .args(["-append", &cmdline])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            start.elapsed().as_secs_f64()
        })
        .collect();
    line("plain qemu boot of the same kernel to a trivial /init", &bare, "s");
    println!(
        "{:<52} {:.2}",
        "ratio mvm start / plain boot (medians)",
        median(starts.clone()) / median(bare.clone())
    );

    image_starts(bench, &starts);

    bench.ok(&["start", "web"]);
    let shells: Vec<f64> = (0..20)
        .map(|_| {
            let start = Instant::now();
            bench.ok(&["shell", "web", "--", "true"]);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    line("mvm shell web -- true (TCG guest)", &shells, "ms");
    let ups: Vec<f64> = (0..20)
        .map(|_| {
            let start = Instant::now();
            bench.ok(&["up", "web", "--export"]);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    line("mvm up web, already running (a cd into the project)", &ups, "ms");
    // Instant re-entry: `up` on a paused VM returns once it runs again and its agent
    // answered (the supervisor sets the guest clock through it).
    let resumes: Vec<f64> = (0..20)
        .map(|_| {
            bench.ok(&["pause", "web"]);
            let start = Instant::now();
            bench.ok(&["up", "web", "--export"]);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    line("mvm up web on a paused VM -> running, agent answered", &resumes, "ms");
    let reentries: Vec<f64> = (0..20)
        .map(|_| {
            bench.ok(&["pause", "web"]);
            let start = Instant::now();
            bench.ok(&["shell", "web", "--", "true"]);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    line("mvm shell web -- true on a paused VM (resume + run)", &reentries, "ms");
    let ticks = |pid: &str| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        fields.get(11).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(bench.paths.run_dir.join("web/status.json")).unwrap_or_default();
    let hypervisor =
        serde_json::from_str::<serde_json::Value>(&status).ok().and_then(|s| s["hypervisor_pid"].as_u64());
    if let Some(pid) = hypervisor.map(|pid| pid.to_string()) {
        let hz = 100.0;
        let sample = |label: &str| {
            let before = ticks(&pid);
            std::thread::sleep(std::time::Duration::from_secs(5));
            println!("{label:<52} {:>8.1} % of a core", (ticks(&pid) - before) / hz / 5.0 * 100.0);
        };
        sample("hypervisor CPU, running idle guest (5 s)");
        bench.ok(&["pause", "web"]);
        sample("hypervisor CPU, paused guest (5 s)");
        bench.ok(&["resume", "web"]);
    }
    auto_forwards(bench);
    match ssh_round_trips(bench) {
        Some(ssh) => {
            line("ssh root@guest true (the host's sshd, in the guest)", &ssh, "ms");
            println!("{:<52} {:.2}", "ratio mvm shell / ssh (medians)", median(shells) / median(ssh));
        }
        None => println!("ssh comparison skipped: needs ssh, ssh-keygen and /usr/sbin/sshd (openssh-server)"),
    }
    bench.ok(&["stop", "web"]);
}

/// VMs from an image: the second VM made from an image starts like a plain one
/// (target: at most 1.2 times `plain` starts' median), and costs only its own layer.
fn image_starts(bench: &Bench, plain: &[f64]) {
    if which::which("mmdebstrap").is_err() {
        println!("image benchmarks skipped: they need mmdebstrap (scripts/setup installs it)");
        return;
    }
    // Built with the host's own network (the bench's namespace has none), once.
    let started = Instant::now();
    let built = Command::new(env!("CARGO_BIN_EXE_mvm"))
        .args(["image", "build", "bench"])
        .env("MVM_STATE_DIR", &bench.paths.state_dir)
        .env("MVM_RUN_DIR", &bench.paths.run_dir)
        .env("MVM_CONFIG", &bench.paths.config_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(built.success(), "mvm image build failed");
    println!("{:<52} {:>8.1} s", "mvm image build (bookworm, minimal)", started.elapsed().as_secs_f64());
    bench.ok(&["create", "first", "--image", "bench"]);
    bench.ok(&["start", "first"]);
    bench.ok(&["stop", "first"]);
    bench.ok(&["create", "second", "--image", "bench"]);
    let starts: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            bench.ok(&["start", "second"]);
            let elapsed = start.elapsed().as_secs_f64();
            bench.ok(&["stop", "second"]);
            elapsed
        })
        .collect();
    line("mvm start of a second VM from an image (TCG)", &starts, "s");
    println!(
        "{:<52} {:.2}",
        "ratio image VM start / plain start (medians)",
        median(starts) / median(plain.to_vec())
    );
    for vm in ["first", "second"] {
        let disk = bench.paths.state_dir.join(vm).join(mvm::state::system_disk::FILE);
        let used =
            std::fs::metadata(disk).map_or(0, |meta| std::os::unix::fs::MetadataExt::blocks(&meta) * 512);
        println!(
            "{:<52} {:>8.1} MiB",
            format!("disk of VM '{vm}' beside the shared image"),
            used as f64 / 1048576.0
        );
    }
    for vm in ["first", "second"] {
        bench.ok(&["rm", vm]);
    }
    bench.ok(&["image", "rm", "bench"]);
}

/// Automatic forwarding on the running VM `web`: a guest program listens on the guest's
/// loopback and says so; from that line until a connection to the same port on the
/// host's loopback reaches it, then from its exit until the host port refuses again.
fn auto_forwards(bench: &Bench) {
    use std::io::BufRead;
    let (mut up, mut gone) = (Vec::new(), Vec::new());
    for port in 7600..7620u16 {
        let script = format!(
            "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\ns.listen()\n\
             print('up', flush=True)\ns.accept()[0].recv(1)\n"
        );
        let mut guest = bench
            .mvm(&["shell", "web", "--", "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        std::io::BufReader::new(guest.stdout.take().unwrap()).read_line(&mut said).unwrap();
        assert_eq!(said.trim(), "up", "the guest's listener did not start");
        let listening = Instant::now();
        let waited = bench.in_namespace(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(mut connection) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    // Reached: the guest program reads this byte and exits.
                    if std::io::Write::write_all(&mut connection, b"x").is_ok() {
                        return listening.elapsed();
                    }
                }
                assert!(Instant::now() < deadline, "guest port {port} was never forwarded");
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        up.push(waited.as_secs_f64() * 1000.0);
        guest.wait().unwrap();
        let closed = Instant::now();
        let waited = bench.in_namespace(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                assert!(Instant::now() < deadline, "the forward of guest port {port} stayed");
                std::thread::sleep(Duration::from_millis(10));
            }
            closed.elapsed()
        });
        gone.push(waited.as_secs_f64() * 1000.0);
    }
    line("guest listener up -> host 127.0.0.1 connects (TCG)", &up, "ms");
    line("guest program exited -> host port refuses", &gone, "ms");
    // An ignored port (`--ignore-port 9999`): listened on for 2 s, forwarded never.
    let ignored = bench
        .mvm(&[
            "shell",
            "web",
            "--",
            "python3",
            "-c",
            "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', 9999))\ns.listen()\ntime.sleep(2)",
        ])
        .spawn()
        .unwrap();
    let mut forwards = 0;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(2) {
        let listed = bench.mvm(&["port", "web", "--json"]).stdout(Stdio::piped()).output().unwrap();
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        forwards = forwards.max(rows.iter().filter(|row| row["guest"] == 9999).count());
        std::thread::sleep(Duration::from_millis(100));
    }
    ignored.wait_with_output().unwrap();
    println!("{:<52} {forwards}", "forwards made for an ignored port (2 s)");
}

/// Starts the host's sshd inside the running VM `web` (with fresh host keys and a key
/// made here) and times `ssh … true` into it.
fn ssh_round_trips(bench: &Bench) -> Option<Vec<f64>> {
    if which::which("ssh").is_err()
        || which::which("ssh-keygen").is_err()
        || !std::path::Path::new("/usr/sbin/sshd").exists()
    {
        return None;
    }
    let config = mvm::state::store::load(&bench.paths, &"web".parse().ok()?).ok()?;
    let address = config.network.address;
    let key = bench.paths.state_dir.with_file_name("bench_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()
        .ok()?;
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).ok()?;
    let setup = format!(
        "ssh-keygen -A >/dev/null && mkdir -p /run/sshd /root/.ssh && chmod 700 /root/.ssh && \
         echo '{}' > /root/.ssh/authorized_keys && /usr/sbin/sshd -o PermitRootLogin=prohibit-password -o UseDNS=no",
        public.trim()
    );
    bench.ok(&["shell", "web", "--", "sh", "-c", &setup]);
    let ssh = |command: &mut Command| {
        command
            .args(["nsenter", &format!("--net=/run/netns/{}", bench.namespace), "ssh", "-q", "-i"])
            .arg(&key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
            ])
            .arg(format!("root@{address}"))
            .arg("true")
            .stdin(Stdio::null())
            .status()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ssh(&mut Command::new("env")).ok()?.success() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Some(
        (0..10)
            .map(|_| {
                let start = Instant::now();
                assert!(ssh(&mut Command::new("env")).unwrap().success());
                start.elapsed().as_secs_f64() * 1000.0
            })
            .collect(),
    )
}
