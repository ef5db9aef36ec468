//! End-to-end tier: the fault matrix (issue 12). Each of a VM's processes is killed with
//! SIGKILL while the VM runs (and the supervisor and hypervisor while it starts); after
//! each, `list` says what happened and why, nothing of the VM is left on the host, and
//! the next start works. The matrix (fault × phase → outcome) is printed; run with
//! `--nocapture` to read it.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use mvm::runtime::orphans;
use support::e2e::{begin, Lab};

/// What gets killed.
#[derive(Debug, Clone, Copy)]
enum Target {
    Supervisor,
    Hypervisor,
    Virtiofsd(&'static str),
    VhostVsock,
}

impl Target {
    fn label(self) -> String {
        match self {
            Target::Supervisor => "supervisor".into(),
            Target::Hypervisor => "hypervisor".into(),
            Target::Virtiofsd(tag) => format!("virtiofsd[{tag}]"),
            Target::VhostVsock => "vhost-device-vsock".into(),
        }
    }

    /// The target's pid in VM `name` of `lab`.
    fn pid(self, lab: &Lab, name: &str) -> i32 {
        let run_dir = lab.sandbox.run_dir().join(name);
        let status = || -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(run_dir.join("status.json")).unwrap()).unwrap()
        };
        let by_cmdline = |needle: &str| {
            orphans::find(&run_dir, 0)
                .into_iter()
                .find(|process| process.cmdline.contains(needle))
                .unwrap_or_else(|| panic!("no process of {name} names {needle}"))
                .pid
        };
        match self {
            Target::Supervisor => status()["supervisor_pid"].as_i64().unwrap() as i32,
            Target::Hypervisor => by_cmdline("qmp.sock"),
            Target::Virtiofsd(tag) => by_cmdline(&format!("fs-{tag}.sock")),
            Target::VhostVsock => by_cmdline("vhost-vsock.sock"),
        }
    }
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The VM's row in `list --json`.
fn row(lab: &Lab, name: &str) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    list.as_array().unwrap().iter().find(|vm| vm["name"] == name).unwrap().clone()
}

/// After a fault: the VM is seen down with a reason, nothing of it is left once
/// `doctor --fix` ran (only needed when the supervisor itself died), and it starts again.
fn settle(lab: &Lab, name: &str, target: Target) -> String {
    wait_until("the VM's processes to end", Duration::from_secs(30), || {
        orphans::find(&lab.sandbox.run_dir().join(name), 0).is_empty() && row(lab, name)["state"] != "running"
    });
    let vm = row(lab, name);
    assert_eq!(vm["state"], "crashed", "{vm}");
    let reason = vm["reason"].as_str().unwrap_or_default().to_string();
    let expected = match target {
        Target::Supervisor => "supervisor".to_string(),
        Target::Hypervisor => "killed by signal 9".to_string(),
        other => other.label(),
    };
    assert!(reason.contains(&expected), "{} killed, but the reason is: {reason}", target.label());
    if matches!(target, Target::Supervisor) {
        lab.mvm(&["doctor", "--fix"]);
    }
    lab.assert_nothing_left();
    reason.lines().next().unwrap_or_default().to_string()
}

#[test]
fn the_fault_matrix() {
    let Some((_serial, lab)) = begin("the_fault_matrix") else { return };
    let project = lab.sandbox.mkdir("faulty");
    let p = project.display().to_string();
    lab.mvm(&["create", "f", "--project", &p]).ok();
    let mut matrix = Vec::new();
    // Running: each process in turn.
    for target in [
        Target::Supervisor,
        Target::Hypervisor,
        Target::Virtiofsd("usr"),
        Target::Virtiofsd("etc"),
        Target::Virtiofsd("var"),
        Target::Virtiofsd("project"),
        Target::VhostVsock,
    ] {
        lab.mvm(&["start", "f"]).ok();
        assert_eq!(lab.sh("f", "echo up").ok(), "up\n");
        kill9(target.pid(&lab, "f"));
        let outcome = settle(&lab, "f", target);
        matrix.push(format!("{:<22} running   → crashed: {outcome}", target.label()));
    }
    // Starting: the supervisor and the hypervisor die before the guest is up.
    for target in [Target::Supervisor, Target::Hypervisor] {
        let start =
            lab.command(&["start", "f"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let run_dir = lab.sandbox.run_dir().join("f");
        wait_until("the hypervisor to run", Duration::from_secs(30), || {
            orphans::find(&run_dir, 0).iter().any(|process| process.cmdline.contains("qmp.sock"))
        });
        kill9(target.pid(&lab, "f"));
        let started = support::Run::from_output(start.wait_with_output().unwrap());
        assert_ne!(started.code, 0, "a start whose {} died reported success", target.label());
        let outcome = settle(&lab, "f", target);
        matrix.push(format!("{:<22} starting  → start fails, crashed: {outcome}", target.label()));
    }
    // Stopping: the supervisor and the hypervisor die while `mvm stop` waits.
    for target in [Target::Supervisor, Target::Hypervisor] {
        lab.mvm(&["start", "f"]).ok();
        let pid = target.pid(&lab, "f");
        let stop = lab.command(&["stop", "f"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // The guest may power off before the kill lands: then the row says so.
        let landed =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
                .is_ok();
        let stopped = support::Run::from_output(stop.wait_with_output().unwrap());
        wait_until("the VM's processes to end", Duration::from_secs(30), || {
            orphans::find(&lab.sandbox.run_dir().join("f"), 0).is_empty()
        });
        let vm = row(&lab, "f");
        assert_ne!(vm["state"], "running", "{vm}");
        lab.mvm(&["doctor", "--fix"]);
        lab.assert_nothing_left();
        let outcome = format!(
            "{}stop exits {}, {}: {}",
            if landed { "" } else { "(ended before the kill) " },
            stopped.code,
            vm["state"],
            vm["reason"].as_str().unwrap_or("")
        );
        matrix.push(format!("{:<22} stopping  → {}", target.label(), outcome.lines().next().unwrap_or("")));
    }
    // Inside the guest: its init (and the agent, a thread of it) cannot be killed.
    lab.mvm(&["start", "f"]).ok();
    let _ = lab.sh("f", "kill -9 1");
    assert_eq!(lab.sh("f", "echo still").ok(), "still\n");
    matrix.push(format!(
        "{:<22} running   → ignored: the kernel protects PID 1; the VM answers",
        "guest init, agent"
    ));
    lab.mvm(&["stop", "f"]).ok();
    // And the VM still works.
    lab.mvm(&["start", "f"]).ok();
    assert_eq!(lab.sh("f", "echo fine").ok(), "fine\n");
    lab.mvm(&["stop", "f"]).ok();
    lab.assert_nothing_left();
    println!("fault matrix (kill -9):\n{}", matrix.join("\n"));
}

/// A process that outlived its supervisor (here one that only looks like a hypervisor of
/// the VM) makes `list` say crashed, `start` refuse, and `stop` end it.
#[test]
fn processes_that_outlive_their_supervisor_are_seen_refused_and_ended() {
    let Some((_serial, lab)) = begin("processes_that_outlive_their_supervisor_are_seen_refused_and_ended")
    else {
        return;
    };
    lab.mvm(&["create", "o"]).ok();
    let run_dir = lab.sandbox.run_dir().join("o");
    std::fs::create_dir_all(&run_dir).unwrap();
    // What a supervisor killed before it could record anything leaves.
    std::fs::write(
        run_dir.join("status.json"),
        r#"{"phase":"running","supervisor_pid":999999,"hypervisor_pid":null,"started_at":1,"ended_at":null,"reason":null}"#,
    )
    .unwrap();
    let script = format!(
        "exec -a qemu-system-x86_64 /usr/bin/python3 -c 'import time; time.sleep(1000)' -qmp unix:{}/qmp.sock,server=on",
        run_dir.display()
    );
    let mut leftover = std::process::Command::new("bash").args(["-c", &script]).spawn().unwrap();
    wait_until("the leftover to run", Duration::from_secs(5), || !orphans::find(&run_dir, 0).is_empty());
    let vm = row(&lab, "o");
    assert_eq!(vm["state"], "crashed", "{vm}");
    assert!(vm["reason"].as_str().unwrap().contains("1 of its processes still run"), "{vm}");
    lab.mvm(&["start", "o"]).fails(4, &["outlived its supervisor", "mvm stop o"]);
    lab.mvm(&["stop", "o"]).ok();
    assert!(leftover.wait().unwrap().code().is_none(), "the leftover was not killed");
    let vm = row(&lab, "o");
    assert!(vm["reason"].as_str().unwrap().contains("`mvm stop` ended"), "{vm}");
    lab.assert_nothing_left();
}

/// A host reboot empties /run: a stopped VM whose runtime dir is gone starts as before.
#[test]
fn a_wiped_runtime_dir_does_not_stop_the_next_start() {
    let Some((_serial, lab)) = begin("a_wiped_runtime_dir_does_not_stop_the_next_start") else { return };
    lab.mvm(&["create", "w"]).ok();
    lab.mvm(&["start", "w"]).ok();
    lab.mvm(&["stop", "w"]).ok();
    std::fs::remove_dir_all(lab.sandbox.run_dir()).unwrap();
    assert_eq!(row(&lab, "w")["state"], "stopped");
    lab.mvm(&["start", "w"]).ok();
    assert_eq!(lab.sh("w", "echo after-reboot").ok(), "after-reboot\n");
    lab.mvm(&["stop", "w"]).ok();
    lab.assert_nothing_left();
}

/// Two starts and a stop at the same moment end with one VM, started once (or stopped),
/// and a start racing an rm never leaves half a VM.
#[test]
fn racing_starts_stops_and_rm_leave_one_truth() {
    let Some((_serial, lab)) = begin("racing_starts_stops_and_rm_leave_one_truth") else { return };
    lab.mvm(&["create", "r"]).ok();
    let spawn =
        |args: &[&str]| lab.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let racers = [spawn(&["start", "r"]), spawn(&["start", "r"]), spawn(&["stop", "r"])];
    let runs: Vec<support::Run> = racers
        .into_iter()
        .map(|child| support::Run::from_output(child.wait_with_output().unwrap()))
        .collect();
    let hypervisors = orphans::find(&lab.sandbox.run_dir().join("r"), 0)
        .iter()
        .filter(|process| process.cmdline.contains("qmp.sock"))
        .count();
    assert!(hypervisors <= 1, "{hypervisors} hypervisors for one VM: {runs:?}");
    let state = row(&lab, "r")["state"].as_str().unwrap().to_string();
    assert!(state == "running" || state == "stopped", "{state}: {runs:?}");
    assert_eq!(hypervisors == 1, state == "running", "{runs:?}");
    lab.mvm(&["stop", "r"]).ok();
    lab.assert_nothing_left();
    // A start while rm runs: either the VM is gone entirely, or it runs whole.
    let (start, rm) = (spawn(&["start", "r"]), spawn(&["rm", "--force", "r"]));
    let (start, rm) = (
        support::Run::from_output(start.wait_with_output().unwrap()),
        support::Run::from_output(rm.wait_with_output().unwrap()),
    );
    let listed: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    match listed.as_array().unwrap().as_slice() {
        [] => assert!(!lab.sandbox.state_dir().join("r").exists(), "{start:?} {rm:?}"),
        [vm] => {
            assert!(vm["state"] == "running" || vm["state"] == "stopped", "{vm} {start:?} {rm:?}");
            assert!(lab.sandbox.state_dir().join("r/vm.toml").is_file());
            let _ = lab.mvm(&["rm", "--force", "r"]);
        }
        more => panic!("{more:?}"),
    }
    lab.mvm(&["doctor", "--fix"]);
    lab.assert_nothing_left();
}

/// A state disk that fills up: a create fails clearly and leaves no VM; a start fails
/// clearly and leaves nothing running; `vm.toml` is never half-written.
#[test]
fn a_full_state_disk_fails_clearly_and_loses_nothing() {
    let Some((_serial, lab)) = begin("a_full_state_disk_fails_clearly_and_loses_nothing") else { return };
    let state = lab.sandbox.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let mount = |size: &str| {
        let done = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", state.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(done.success());
    };
    let unmount = || {
        let _ = std::process::Command::new("umount").arg("-l").arg(&state).status();
    };
    let fill = |filler: &std::path::Path| {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"])
            .stderr(Stdio::null())
            .status();
    };
    mount("1m");
    fill(&state.join("filler"));
    let created = lab.mvm(&["create", "full"]);
    let listed = lab.mvm(&["list", "--json"]).ok().to_string();
    unmount();
    created.fails(1, &["No space left on device"]);
    assert_eq!(listed.trim(), "[]", "a failed create left a VM");
    mount("64m");
    lab.mvm(&["create", "full"]).ok();
    let toml = std::fs::read_to_string(state.join("full/vm.toml")).unwrap();
    // Fill what is left, then start.
    let filler = state.join("filler");
    fill(&filler);
    let started = lab.mvm(&["start", "full"]);
    assert_ne!(started.code, 0, "a start on a full disk succeeded: {started:?}");
    assert!(
        started.stderr.contains("No space left") || started.stderr.contains("error:"),
        "{}",
        started.stderr
    );
    assert_eq!(std::fs::read_to_string(state.join("full/vm.toml")).unwrap(), toml, "vm.toml changed");
    assert!(orphans::find(&lab.sandbox.run_dir().join("full"), 0).is_empty());
    std::fs::remove_file(&filler).unwrap();
    lab.mvm(&["doctor", "--fix"]);
    lab.mvm(&["start", "full"]).ok();
    lab.mvm(&["stop", "full"]).ok();
    lab.mvm(&["rm", "full"]).ok();
    unmount();
    lab.assert_nothing_left();
}
