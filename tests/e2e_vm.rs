//! End-to-end tier: real VMs under QEMU (TCG where KVM cannot run ordinary kernels) with
//! Debian's kernel, virtiofsd and vhost-device-vsock, driven through the mvm binary.
//!
//! Every test runs mvm inside network namespaces it made: a "host" with an uplink to an
//! "internet" namespace. mvm runs there through `nsenter --net` so that its mounts stay in
//! the test's mount namespace, where the test can check that stop removed them.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::e2e::{begin, http_get, Lab, HOST_UPLINK_IP, INTERNET_IP};
use support::Run;

/// Runs `mvm shell NAME` on a pseudo-terminal of `rows`×`cols`, typing `input`; returns
/// what the terminal showed and the exit code.
fn interactive(lab: &Lab, name: &str, rows: u16, cols: u16, input: &[&[u8]]) -> (String, i32) {
    let winsize = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(&winsize, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut command = lab.command(&["shell", name]);
    command.env("TERM", "xterm");
    command.stdin(Stdio::from(slave.try_clone().unwrap()));
    command.stdout(Stdio::from(slave.try_clone().unwrap()));
    command.stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl are async-signal-safe; they make the pty the child's terminal.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let output = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    for chunk in input {
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(size) = chunk.strip_prefix(b"\0resize ") {
            // Resize the terminal: the kernel signals mvm shell, which tells the guest.
            let size = String::from_utf8_lossy(size);
            let (rows, cols) = size.split_once('x').unwrap();
            let winsize = nix::libc::winsize {
                ws_row: rows.parse().unwrap(),
                ws_col: cols.parse().unwrap(),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads a valid winsize from the pointer.
            unsafe {
                nix::libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&master), nix::libc::TIOCSWINSZ, &winsize)
            };
            continue;
        }
        master.write_all(chunk).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "interactive shell did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(master);
    // The reader ends with EIO once no process holds the terminal open.
    let seen = output.join().unwrap();
    (seen, status.code().unwrap_or(-1))
}

#[test]
fn a_vm_boots_runs_commands_serves_a_port_and_stops_clean() {
    let Some((_serial, lab)) = begin("a_vm_boots_runs_commands_serves_a_port_and_stops_clean") else {
        return;
    };
    let project = lab.sandbox.mkdir("project");
    std::fs::write(project.join("hello.txt"), "hello from the host\n").unwrap();
    let project_arg = project.to_str().unwrap();
    lab.mvm(&["create", "web", "--project", project_arg]).ok();
    lab.mvm(&["shell", "web", "--", "true"]).fails(4, &["VM 'web' is not running", "mvm start web"]);
    let started = lab.mvm(&["start", "web"]);
    assert!(started.ok().contains("VM 'web' is up in"), "{}", started.stdout);
    assert!(lab.mvm(&["start", "web"]).stderr.contains("already running"));

    // The project at the same path, commands with their exit codes, streams kept apart.
    assert_eq!(
        lab.mvm(&["shell", "web", "--", "cat", &format!("{project_arg}/hello.txt")]).ok(),
        "hello from the host\n"
    );
    assert_eq!(lab.sh("web", "pwd").ok().trim(), project.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(lab.sh("web", "exit 7").code, 7);
    assert_eq!(lab.sh("web", "kill -9 $$").code, 137);
    // A missing command and one that cannot be executed, as a shell reports them, every
    // time (the spawn never races the guest's reaper).
    for _ in 0..5 {
        lab.mvm(&["shell", "web", "--", "nosuchcmd"]).fails(127, &["nosuchcmd: command not found"]);
    }
    lab.mvm(&["shell", "web", "--", "/etc"]).fails(126, &["/etc: Permission denied"]);
    let streams = lab.sh("web", "echo out; echo err >&2");
    assert_eq!((streams.stdout.as_str(), streams.stderr.as_str()), ("out\n", "err\n"));
    assert_eq!(lab.mvm_with_stdin(&["shell", "web", "--", "cat"], b"piped data\n").ok(), "piped data\n");
    let env = lab.mvm(&["shell", "web", "--env", "GREETING=hi", "--", "sh", "-c", "echo $GREETING"]);
    assert_eq!(env.ok(), "hi\n");

    // Many shells at once.
    let many: Vec<_> = (0..6)
        .map(|i| {
            lab.command(&["shell", "web", "--", "sh", "-c", &format!("sleep 1; echo {i}")])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in many.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{i}\n"));
    }

    // The guest runs as the invoking user and never sees the host's secrets.
    let as_user = lab
        .command(&["shell", "web", "--", "id", "-u"])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .env("SUDO_USER", "nobody")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&as_user.stdout).trim(), "65534");
    assert!(std::path::Path::new("/etc/shadow").exists());
    let marker = format!("/root/mvm-e2e-marker-{}", std::process::id());
    std::fs::write(&marker, "host only").unwrap();
    // The guest's shadow is generated, every account locked: no line with a hash.
    let secrets =
        lab.sh("web", &format!("grep -v '^[^:]*:\\*:' /etc/shadow; ls {marker}; ls /etc/ssh | grep '_key$'"));
    let _ = std::fs::remove_file(&marker);
    assert!(secrets.stdout.trim().is_empty(), "the guest saw: {}", secrets.stdout);
    // The overlay: the guest writes, the project stays as it was.
    lab.sh("web", &format!("echo changed > {project_arg}/hello.txt && touch {project_arg}/new.txt")).ok();
    assert_eq!(std::fs::read_to_string(project.join("hello.txt")).unwrap(), "hello from the host\n");
    assert!(!project.join("new.txt").exists());

    // An interactive session: a terminal of the right size, Ctrl-C reaches the guest.
    let (screen, code) = interactive(
        &lab,
        "web",
        33,
        101,
        &[
            b"stty size; echo $((6*7))\r",
            b"\0resize 40x120",
            b"stty size\r",
            b"sleep 30\r",
            b"\x03",
            b"echo after-interrupt\r",
            b"exit 3\r",
        ],
    );
    assert_eq!(code, 3, "screen:\n{screen}");
    for needle in ["33 101", "42", "40 120", "after-interrupt"] {
        assert!(screen.contains(needle), "{needle:?} not on screen:\n{screen}");
    }

    // A server in the guest, reached from the host's localhost through `mvm port`.
    lab.sh("web", "setsid python3 -m http.server 3000 >/dev/null 2>&1 < /dev/null &").ok();
    let forwarded = lab.mvm(&["port", "web", "8080:3000"]);
    assert!(forwarded.ok().contains("forwarding host port 8080/tcp"), "{}", forwarded.stdout);
    let reply = http_get(&lab.host, "127.0.0.1:8080", "/hello.txt", Duration::from_secs(30)).unwrap();
    assert!(reply.contains("200") && reply.contains("changed"), "{reply}");

    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    assert_eq!(list[0]["state"], "running");
    assert!(list[0]["uptime_seconds"].as_u64().is_some());
    // The host memory it holds, beside its limit (a booted guest holds some, never more).
    let used = list[0]["memory_used_mib"].as_u64().expect("no memory in use for a running VM");
    assert!(used > 16 && used < list[0]["memory_mib"].as_u64().unwrap() + 256, "{used} MiB");

    assert!(lab.mvm(&["stop", "web"]).ok().contains("stopped"));
    lab.assert_nothing_left();
    assert!(lab.mvm(&["stop", "web"]).stderr.contains("is not running"));
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    assert_eq!(list[0]["state"], "stopped");
    assert_eq!(list[0]["reason"], "stopped by mvm stop");
}

#[test]
fn vms_are_isolated_reach_the_internet_and_survive_poweroff_and_kill() {
    let Some((_serial, lab)) = begin("vms_are_isolated_reach_the_internet_and_survive_poweroff_and_kill")
    else {
        return;
    };
    lab.mvm(&["create", "a"]).ok();
    lab.mvm(&["create", "b"]).ok();
    let starts: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            lab.command(&["start", name]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for start in starts {
        let run = Run::from_output(start.wait_with_output().unwrap());
        run.ok();
    }
    let listener = lab.internet.run(|| TcpListener::bind(format!("{INTERNET_IP}:80")).unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().unwrap();
        stream.write_all(format!("hello {}\n", peer.ip()).as_bytes()).unwrap();
    });
    let fetch = format!("exec 3<>/dev/tcp/{INTERNET_IP}/80 && cat <&3");
    let reply = lab.mvm(&["shell", "a", "--", "timeout", "10", "bash", "-c", &fetch]);
    assert_eq!(reply.ok(), format!("hello {HOST_UPLINK_IP}\n"), "masqueraded egress");
    server.join().unwrap();

    lab.sh("b", "setsid python3 -m http.server 7000 >/dev/null 2>&1 < /dev/null &").ok();
    let b_ip = "10.200.1.2";
    let probe = format!("exec 3<>/dev/tcp/{b_ip}/7000 && echo reached");
    // b's server answers b itself, but a cannot reach it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.mvm(&["shell", "b", "--", "timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7000"]).code
        != 0
    {
        assert!(Instant::now() < deadline, "b's server never came up");
        std::thread::sleep(Duration::from_millis(500));
    }
    let from_a = lab.mvm(&["shell", "a", "--", "timeout", "5", "bash", "-c", &probe]);
    assert_ne!(from_a.code, 0, "a reached b: {}", from_a.stdout);

    // `poweroff` inside the guest: the VM ends and leaves nothing behind.
    let _ = lab.mvm(&["shell", "a", "--", "poweroff"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
        if list[0]["state"] == "stopped" {
            assert_eq!(list[0]["reason"], "the guest powered off");
            break;
        }
        assert!(Instant::now() < deadline, "a did not power off: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // `reboot` inside the guest: the VM comes back (a fresh boot: virtiofsd ends with each).
    let boot_id = "cat /proc/sys/kernel/random/boot_id";
    let before = lab.sh("b", boot_id).ok().to_string();
    let _ = lab.mvm(&["shell", "b", "--", "reboot"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = lab.sh("b", boot_id);
        if now.code == 0 && now.stdout != before {
            break;
        }
        assert!(Instant::now() < deadline, "b did not come back after reboot");
        std::thread::sleep(Duration::from_millis(500));
    }

    // kill -9 of b's hypervisor: crashed with the reason, torn down, and it starts again.
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.sandbox.run_dir().join("b/status.json")).unwrap())
            .unwrap();
    let pid = status["hypervisor_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
        if list[1]["state"] == "crashed" {
            assert!(list[1]["reason"].as_str().unwrap().contains("killed by signal 9"), "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "b was not seen crashed: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.assert_nothing_left();
    // A stale socket from a crash does not stop the next start.
    std::fs::write(lab.sandbox.run_dir().join("b/vsock.sock"), "stale").unwrap();
    assert!(lab.mvm(&["restart", "b"]).ok().contains("VM 'b' restarted in"));
    let console = lab.mvm(&["logs", "b"]);
    assert!(console.ok().contains("mvm-init: ready"), "{}", console.stdout);
    assert_eq!(lab.sh("b", "echo back").ok(), "back\n");

    // kill -9 of b's supervisor (what the OOM killer does): its hypervisor, virtiofsd
    // and vhost-device-vsock die with it, `list` says crashed and why, `doctor --fix`
    // removes what it left, and the next start works.
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.sandbox.run_dir().join("b/status.json")).unwrap())
            .unwrap();
    let supervisor = status["supervisor_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.leftover_processes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes outlived their supervisor: {:?}",
            lab.leftover_processes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    assert_eq!(list[1]["state"], "crashed", "{list}");
    assert!(
        list[1]["reason"].as_str().unwrap().contains(&format!("supervisor (pid {supervisor})")),
        "{list}"
    );
    lab.mvm(&["doctor", "--fix"]);
    lab.assert_nothing_left();
    assert!(lab.mvm(&["start", "b"]).ok().contains("VM 'b' is up"));
    assert_eq!(lab.sh("b", "echo again").ok(), "again\n");
    lab.mvm(&["stop", "b"]).ok();
    lab.assert_nothing_left();
}

#[test]
fn start_failures_are_clear_and_leave_nothing() {
    let Some((_serial, lab)) = begin("start_failures_are_clear_and_leave_nothing") else { return };
    let project = lab.sandbox.mkdir("vanishing");
    lab.mvm(&["create", "web", "--project", project.to_str().unwrap()]).ok();
    std::fs::remove_dir(&project).unwrap();
    lab.mvm(&["start", "web"]).fails(3, &["has vanished", "hint:"]);
    std::fs::create_dir(&project).unwrap();

    let config = lab.sandbox.config_file();
    std::fs::write(
        &config,
        "[defaults]\nhypervisor = \"qemu\"\n[paths]\nvirtiofsd = \"/nonexistent/virtiofsd\"\n",
    )
    .unwrap();
    lab.mvm(&["start", "web"]).fails(5, &["virtiofsd is configured at /nonexistent/virtiofsd"]);
    std::fs::write(
        &config,
        "[defaults]\nhypervisor = \"qemu\"\n[paths]\nkernel = \"/nonexistent/vmlinuz\"\n",
    )
    .unwrap();
    lab.mvm(&["start", "web"]).fails(5, &["kernel /nonexistent/vmlinuz does not exist"]);

    // A hypervisor that dies during boot: its last words reach the user.
    let fake = lab.sandbox.root().join("dying-qemu");
    std::fs::write(&fake, "#!/bin/sh\necho 'qemu: could not boot: simulated failure' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        &config,
        format!("[defaults]\nhypervisor = \"qemu\"\n[paths]\nqemu = \"{}\"\n", fake.display()),
    )
    .unwrap();
    lab.mvm(&["start", "web"]).fails(1, &["stopped during start", "simulated failure"]);
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    assert_eq!(list[0]["state"], "crashed");
    lab.assert_nothing_left();
}

#[test]
fn a_directory_tree_boots_as_the_root_with_a_writable_layer() {
    let test = "a_directory_tree_boots_as_the_root_with_a_writable_layer";
    if !support::require_program(test, "busybox") {
        return;
    }
    let Some((_serial, lab)) = begin(test) else { return };
    // A minimal tree: a static busybox and the files a login needs.
    let tree = lab.sandbox.mkdir("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::copy(which::which("busybox").unwrap(), tree.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo", "id", "touch"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(tree.join("etc/marker"), "from the tree\n").unwrap();
    lab.mvm(&["create", "tiny", "--root", tree.to_str().unwrap()]).ok();
    lab.mvm(&["start", "tiny"]).ok();
    assert_eq!(lab.mvm(&["shell", "tiny", "--", "/bin/cat", "/etc/marker"]).ok(), "from the tree\n");
    lab.mvm(&["shell", "tiny", "--", "/bin/sh", "-c", "echo guest > /etc/marker; touch /new"]).ok();
    assert_eq!(lab.mvm(&["shell", "tiny", "--", "/bin/cat", "/etc/marker"]).ok(), "guest\n");
    // The tree itself is untouched: the guest's writes live in the VM's own layer.
    assert_eq!(std::fs::read_to_string(tree.join("etc/marker")).unwrap(), "from the tree\n");
    assert!(!tree.join("new").exists());
    assert!(lab.sandbox.state_dir().join("tiny/files/root/upper/new").exists());
    lab.mvm(&["stop", "tiny"]).ok();
    lab.assert_nothing_left();
}

/// `mvm stop` of a VM still booting stops it at once (it used to wait for the boot to
/// finish): the guest never gets as far as its ready line, and nothing is left.
#[test]
fn a_stop_during_boot_stops_at_once() {
    let Some((_serial, lab)) = begin("a_stop_during_boot_stops_at_once") else { return };
    lab.mvm(&["create", "quick"]).ok();
    let start =
        lab.command(&["start", "quick"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let run_lock = lab.sandbox.run_dir().join("quick/lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mvm::state::lock::RunLock::is_held(&run_lock).unwrap_or(false) {
        assert!(Instant::now() < deadline, "the supervisor never took its lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.mvm(&["stop", "quick"]).ok();
    let console =
        std::fs::read_to_string(lab.sandbox.state_dir().join("quick/log/console.log")).unwrap_or_default();
    assert!(!console.contains("mvm-init: ready"), "the stop waited for the boot:\n{console}");
    let started = Run::from_output(start.wait_with_output().unwrap());
    assert_ne!(started.code, 0, "the interrupted start reported success");
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    assert_eq!(list[0]["state"], "stopped", "{list}");
    lab.assert_nothing_left();
}

/// `auto` (the default) runs what this host can run and says which and why in one line;
/// an explicit cloud-hypervisor where KVM cannot run it fails at once, exit 5.
#[test]
fn auto_picks_the_hypervisor_this_host_can_run() {
    let Some((_serial, lab)) = begin("auto_picks_the_hypervisor_this_host_can_run") else { return };
    lab.mvm(&["create", "auto", "--hypervisor", "auto"]).ok();
    let started = lab.mvm(&["start", "auto"]);
    started.ok();
    let kvm = mvm::host::kvm::detect(std::path::Path::new("/"));
    let expected = if !kvm.can_accelerate() {
        "hypervisor: qemu with TCG (auto: "
    } else if which::which("cloud-hypervisor").is_ok() {
        "hypervisor: cloud-hypervisor (auto: hardware KVM works)"
    } else {
        "hypervisor: qemu (auto: cloud-hypervisor is not installed)"
    };
    assert!(started.stderr.lines().any(|line| line.starts_with(expected)), "{}", started.stderr);
    let inspect = lab.mvm(&["inspect", "auto"]).ok().to_string();
    assert!(inspect.contains("auto → "), "{inspect}");
    lab.mvm(&["stop", "auto"]).ok();
    if !kvm.can_accelerate() {
        lab.mvm(&["create", "ch", "--hypervisor", "cloud-hypervisor"]).ok();
        let before = Instant::now();
        lab.mvm(&["start", "ch"]).fails(5, &["cloud-hypervisor needs hardware KVM", "--hypervisor auto"]);
        assert!(before.elapsed() < Duration::from_secs(10), "it waited instead of failing at once");
    }
    lab.assert_nothing_left();
}
