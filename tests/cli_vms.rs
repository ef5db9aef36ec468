//! Unit tier, through the real binary: `list`, `inspect`, `rm` and their error paths.
//! Running is judged by the run lock alone, held here by the test process itself.

mod support;

use mvm::state::lock::RunLock;
use support::Sandbox;

fn hold_run_lock(sandbox: &Sandbox, name: &str) -> RunLock {
    let dir = sandbox.run_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    RunLock::try_acquire(&dir.join("lock")).unwrap().expect("lock is free")
}

#[test]
fn list_shows_a_table_with_every_column() {
    let sandbox = Sandbox::new();
    let project = sandbox.mkdir("proj");
    sandbox
        .mvm(&[
            "create",
            "web",
            "--project",
            project.to_str().unwrap(),
            "--port",
            "8080:3000",
            "--memory",
            "512M",
        ])
        .ok();
    sandbox.mvm(&["create", "api", "--cpus", "1", "--port", "53:53/udp", "--disk", "8G"]).ok();
    let table = sandbox.mvm(&["list"]).ok().to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATE", "IP", "CPUS", "MEMORY", "DISK", "PORTS", "PROJECT", "UPTIME"]);
    let api: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(api, ["api", "stopped", "10.200.1.2", "1", "1G", "0M/8G", "53:53/udp", "-", "-"]);
    let web: Vec<&str> = lines[2].split_whitespace().collect();
    let project = project.canonicalize().unwrap();
    assert_eq!(
        web,
        ["web", "stopped", "10.200.0.2", "2", "512M", "0M/20G", "8080:3000", project.to_str().unwrap(), "-"]
    );
}

#[test]
fn empty_list_says_how_to_start() {
    let sandbox = Sandbox::new();
    let out = sandbox.mvm(&["list"]);
    assert_eq!(out.ok().trim(), "NAME  STATE  IP  CPUS  MEMORY  DISK  PORTS  PROJECT  UPTIME");
    assert!(out.stderr.contains("mvm create NAME"), "{}", out.stderr);
    assert_eq!(sandbox.mvm(&["list", "--json"]).ok().trim(), "[]");
}

#[test]
fn running_comes_from_the_run_lock_not_a_pid_file() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "web"]).ok();
    let run_dir = sandbox.run_dir().join("web");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(run_dir.join("supervisor.pid"), std::process::id().to_string()).unwrap();
    assert_eq!(sandbox.list_json()[0]["state"], "stopped", "a pid file alone is not running");
    let lock = hold_run_lock(&sandbox, "web");
    assert_eq!(sandbox.list_json()[0]["state"], "running");
    drop(lock);
    assert_eq!(sandbox.list_json()[0]["state"], "stopped");
}

#[test]
fn a_corrupt_vm_toml_is_listed_as_broken_and_spares_the_others() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "good"]).ok();
    sandbox.mvm(&["create", "bad"]).ok();
    std::fs::write(sandbox.state_dir().join("bad/vm.toml"), "name = \"bad\"\ncpus = [").unwrap();
    let list = sandbox.list_json();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "bad");
    assert_eq!(list[0]["state"], "broken");
    assert!(list[0]["error"].as_str().unwrap().contains("is corrupt"), "{}", list[0]);
    assert_eq!(list[1]["state"], "stopped");
    let table = sandbox.mvm(&["list"]);
    assert!(table.ok().contains("bad   broken"), "{}", table.stdout);
    assert!(table.stderr.contains("warning: VM 'bad' is broken"), "{}", table.stderr);
    sandbox.mvm(&["inspect", "bad"]).fails(2, &["VM 'bad' is broken", "hint: fix or restore its vm.toml"]);
    // A broken VM's index is unknown, but it can still be removed.
    sandbox.mvm(&["rm", "bad"]).ok();
    assert_eq!(sandbox.vm_dirs(), ["good"]);
}

#[test]
fn inspect_shows_config_and_json() {
    let sandbox = Sandbox::new();
    sandbox
        .mvm(&[
            "create",
            "web",
            "--env",
            "A=1",
            "--volume",
            "data:/srv/data",
            "--offline",
            "--hypervisor",
            "qemu",
        ])
        .ok();
    let text = sandbox.mvm(&["inspect", "web"]).ok().to_string();
    for needle in ["hypervisor   qemu", "offline      yes", "volumes      data:/srv/data", "env          A=1"]
    {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(sandbox.mvm(&["inspect", "web", "--json"]).ok()).unwrap();
    assert_eq!(json["name"], "web");
    assert_eq!(json["state"], "stopped");
    assert_eq!(json["config"]["network"]["bridge"], "mvmbr0");
    assert_eq!(json["config"]["volumes"][0]["guest_path"], "/srv/data");
    assert!(json["state_dir"].as_str().unwrap().ends_with("/state/web"));
}

/// A VM made before disk limits shows the default until its next start records it; a
/// limit out of bounds is refused at create.
#[test]
fn disk_limits_are_shown_and_checked() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "old"]).ok();
    let record = sandbox.state_dir().join("old/vm.toml");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains("disk_mib = 20480"), "{text}");
    let old: String =
        text.lines().filter(|line| !line.starts_with("disk_mib")).map(|line| format!("{line}\n")).collect();
    std::fs::write(&record, old).unwrap();
    let shown = sandbox.mvm(&["inspect", "old"]).ok().to_string();
    assert!(shown.contains("0 B used of 20G, the default (set at its next start)"), "{shown}");
    let json: serde_json::Value = serde_json::from_str(sandbox.mvm(&["list", "--json"]).ok()).unwrap();
    assert_eq!(json[0]["disk"]["limit_bytes"], 20u64 << 30);
    sandbox.mvm(&["create", "tiny", "--disk", "1G"]).fails(2, &["below the minimum of 2048 MiB"]);
    assert!(!sandbox.state_dir().join("tiny").exists());
}

#[test]
fn inspect_and_rm_of_a_missing_vm_say_not_found() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["inspect", "ghost"]).fails(3, &["no VM named 'ghost'", "hint: `mvm list`"]);
    sandbox.mvm(&["rm", "ghost"]).fails(3, &["no VM named 'ghost'"]);
    sandbox.mvm(&["rm", "Ghost"]).fails(2, &["invalid VM name"]);
}

#[test]
fn rm_removes_everything_but_refuses_a_running_vm() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "web", "--volume", "data:/data"]).ok();
    std::fs::write(sandbox.state_dir().join("web/volumes/data/file"), "keep?").unwrap();
    let lock = hold_run_lock(&sandbox, "web");
    sandbox.mvm(&["rm", "web"]).fails(4, &["VM 'web' is running", "hint: stop it first with `mvm stop web`"]);
    assert_eq!(sandbox.vm_dirs(), ["web"]);
    drop(lock);
    assert!(sandbox.mvm(&["rm", "web"]).ok().contains("removed VM 'web'"));
    assert!(sandbox.vm_dirs().is_empty());
    assert!(!sandbox.run_dir().join("web").exists());
    assert!(!sandbox.state_entries().iter().any(|e| e.starts_with(".trash-")));
    // The index is free again.
    sandbox.mvm(&["create", "api"]).ok();
    assert_eq!(sandbox.list_json()[0]["ip"], "10.200.0.2");
}

#[test]
fn doctor_reports_every_check_in_json() {
    let sandbox = Sandbox::new();
    let out = sandbox.mvm(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> =
        report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in [
        "root",
        "host config",
        "kvm",
        "cloud-hypervisor",
        "qemu-system-x86_64",
        "virtiofsd",
        "iptables",
        "kernel",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let ok = report["ok"].as_bool().unwrap();
    assert_eq!(out.code, if ok { 0 } else { 5 });
    for check in report["checks"].as_array().unwrap() {
        if check["status"] != "ok" {
            assert!(check["hint"].as_str().is_some_and(|h| !h.is_empty()), "no hint: {check}");
        }
    }
}

#[test]
fn errors_print_their_context_chain() {
    let sandbox = Sandbox::new();
    let out = sandbox.mvm(&["create", "web", "--memory", "1Q"]);
    out.fails(2, &[]);
    assert_eq!(
        out.stderr,
        "error: cannot create VM 'web'\n  caused by: invalid memory size \"1Q\"\n\
         hint: write a size such as 512M, 2G or 1536 (MiB), at least 128M\n"
    );
}

#[test]
fn rm_can_keep_volumes_for_the_next_vm_of_that_name() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "db", "--volume", "pgdata:/var/lib/postgresql"]).ok();
    std::fs::write(sandbox.state_dir().join("db/volumes/pgdata/table"), "rows").unwrap();
    let out = sandbox.mvm(&["rm", "db", "--keep-volumes"]);
    assert!(out.ok().contains(".kept-volumes/db"), "{}", out.stdout);
    assert!(sandbox.vm_dirs().is_empty());
    sandbox.mvm(&["create", "db", "--volume", "pgdata:/var/lib/postgresql"]).ok();
    assert_eq!(std::fs::read_to_string(sandbox.state_dir().join("db/volumes/pgdata/table")).unwrap(), "rows");
    assert!(!sandbox.state_dir().join(".kept-volumes/db").exists());
    sandbox.mvm(&["rm", "db"]).ok();
    assert!(!sandbox.state_dir().join(".kept-volumes/db").exists(), "plain rm removes volumes");
}

#[test]
fn logs_print_the_console_or_say_there_is_none() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "web"]).ok();
    sandbox.mvm(&["logs", "web"]).fails(3, &["has no console.log yet", "mvm start web"]);
    std::fs::write(sandbox.state_dir().join("web/log/console.log"), "booted\n").unwrap();
    std::fs::write(sandbox.state_dir().join("web/log/supervisor.log"), "supervised\n").unwrap();
    assert_eq!(sandbox.mvm(&["logs", "web"]).ok(), "booted\n");
    assert_eq!(sandbox.mvm(&["logs", "web", "--source", "supervisor"]).ok(), "supervised\n");
    // Following a stopped VM's log prints it and ends.
    assert_eq!(sandbox.mvm(&["logs", "web", "-f"]).ok(), "booted\n");
    sandbox.mvm(&["logs", "ghost"]).fails(3, &["no VM named 'ghost'"]);
}

#[test]
fn automatic_forwarding_is_switched_per_vm() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "a"]).ok();
    let said = sandbox.mvm(&["port", "a", "--auto", "off", "--ignore", "5432,9000-9100"]).ok().to_string();
    assert_eq!(said.trim(), "VM 'a' forwards its listeners by itself: off, never for 5432, 9000-9100");
    let text = std::fs::read_to_string(sandbox.state_dir().join("a/vm.toml")).unwrap();
    assert!(
        text.contains("auto_ports = false") && text.contains(r#"auto_ports_ignore = [5432, "9000-9100"]"#),
        "{text}"
    );
    let said = sandbox.mvm(&["port", "a", "--auto", "on", "--no-ignore", "5432"]).ok().to_string();
    assert_eq!(said.trim(), "VM 'a' forwards its listeners by itself: on, never for 9000-9100");
    sandbox.mvm(&["port", "a", "--no-ignore", "9050"]).fails(3, &["does not ignore 9050", "9000-9100"]);
    sandbox.mvm(&["port", "a", "--ignore", "0"]).fails(2, &["invalid port range"]);
    sandbox.mvm(&["port", "a", "--auto", "off", "--json"]).fails(2, &["cannot be used with"]);
}
