//! End-to-end tier: the fault matrix (issue 12). Each of a VM's processes is killed with
//! SIGKILL while the VM runs (and the supervisor and hypervisor while it starts); after
//! each, `list` says what happened and why, nothing of the VM is left on the host, and
//! the next start works. The matrix (fault × phase → outcome) is printed; run with
//! `--nocapture` to read it.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use mvm::supervisor::orphans;
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
            orphans::find(&run_dir)
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
        orphans::find(&lab.sandbox.run_dir().join(name)).is_empty() && row(lab, name)["state"] != "running"
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
            orphans::find(&run_dir).iter().any(|process| process.cmdline.contains("qmp.sock"))
        });
        kill9(target.pid(&lab, "f"));
        let started = support::Run::from_output(start.wait_with_output().unwrap());
        assert_ne!(started.code, 0, "a start whose {} died reported success", target.label());
        let outcome = settle(&lab, "f", target);
        matrix.push(format!("{:<22} starting  → start fails, crashed: {outcome}", target.label()));
    }
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
    let disguise = format!("qemu-system-x86_64 -qmp unix:{}/qmp.sock,server=on", run_dir.display());
    let mut leftover = std::process::Command::new("bash")
        .args(["-c", &format!("exec -a '{disguise}' sleep 1000")])
        .spawn()
        .unwrap();
    wait_until("the leftover to run", Duration::from_secs(5), || !orphans::find(&run_dir).is_empty());
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
