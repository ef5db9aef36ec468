//! End-to-end tier: `[[processes]]` in `vm.toml`, run by the guest init with their restart
//! policies, logs and states visible on the host, stopped cleanly at power-off.

mod support;

use std::time::{Duration, Instant};

use support::e2e::begin;

#[test]
fn declared_processes_start_restart_log_and_stop() {
    let Some((_serial, lab)) = begin("declared_processes_start_restart_log_and_stop") else { return };
    let project = lab.sandbox.mkdir("app");
    std::fs::write(project.join("index.html"), "served by a process\n").unwrap();
    lab.mvm(&[
        "create",
        "app",
        "--project",
        project.to_str().unwrap(),
        "--port",
        "8080:3000",
        "--env",
        "GREETING=hello",
    ])
    .ok();
    let vm_toml = lab.sandbox.state_dir().join("app/vm.toml");
    let mut text = std::fs::read_to_string(&vm_toml).unwrap();
    text.push_str(
        r#"
[[processes]]
name = "web"
command = "echo starting $GREETING; exec python3 -m http.server 3000"
restart = "always"

[[processes]]
name = "flaky"
command = "echo try; exit 3"

[[processes]]
name = "once"
command = "echo done; trap 'echo got-term; exit 0' TERM; sleep 1000 & wait"
restart = "never"
"#,
    );
    std::fs::write(&vm_toml, text).unwrap();
    lab.mvm(&["start", "app"]).ok();

    let reply = |within| {
        let deadline = Instant::now() + within;
        loop {
            let out = lab.host.exec("curl", &["-sf", "--max-time", "3", "http://127.0.0.1:8080/index.html"]);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(Instant::now() < deadline, "the process's server never answered");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    assert_eq!(reply(Duration::from_secs(30)), "served by a process\n");
    assert!(lab.mvm(&["logs", "app", "--process", "web"]).ok().contains("starting hello"));
    lab.mvm(&["logs", "app", "--process", "nope"]).fails(3, &["declares no process \"nope\""]);

    // Killed, the `always` process comes back; the failing one keeps being restarted.
    lab.sh("app", "pkill -f '^python3 -m http.server'").ok();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reply(Duration::from_secs(30)), "served by a process\n");
    let inspect: serde_json::Value =
        serde_json::from_str(lab.mvm(&["inspect", "app", "--json"]).ok()).unwrap();
    let state = |name: &str| {
        inspect["processes"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["state"].clone()
    };
    assert_eq!(state("web")["state"], "running");
    assert!(state("web")["restarts"].as_u64().unwrap() >= 1, "{inspect}");
    assert!(state("flaky")["restarts"].as_u64().unwrap() >= 1, "{inspect}");
    assert_eq!(state("flaky")["last_exit"]["Code"], 3);
    assert_eq!(state("once")["state"], "running");

    lab.mvm(&["stop", "app"]).ok();
    let once = lab.mvm(&["logs", "app", "--process", "once"]).ok().to_string();
    assert!(once.contains("got-term"), "stop sends SIGTERM to processes: {once}");
    lab.assert_nothing_left();
}
