//! End-to-end tier: the `.envrc` that `mvm direnv` prints, run by the real direnv (from
//! Debian) in two shells: the VM starts once when both enter together, stays while one
//! is inside, and stops by itself once neither is left after the idle time.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use support::e2e::{begin, Lab};

/// A bash fed commands on stdin, as an interactive shell with direnv's hook would run them.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: PathBuf,
}

impl Shell {
    fn spawn(lab: &Lab, home: &Path, label: &str) -> Shell {
        let mvm_dir = support::mvm_binary().parent().unwrap().to_path_buf();
        let path = format!("{}:{}", mvm_dir.display(), std::env::var("PATH").unwrap_or_default());
        let stderr = lab.sandbox.root().join(format!("shell-{label}.stderr"));
        let mut child = lab
            .host
            .nsenter("bash", &["--noprofile", "--norc"])
            .env("PATH", path)
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("MVM_STATE_DIR", lab.sandbox.state_dir())
            .env("MVM_RUN_DIR", lab.sandbox.run_dir())
            .env("MVM_CONFIG", lab.sandbox.config_file())
            .env("MVM_IDLE", "2s")
            .env("MVM_STOP_AFTER", "2s")
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .env_remove("SUDO_USER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Shell { child, stdin, lines, stderr }
    }

    /// Sends one command line.
    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next line of output, within `within`.
    #[track_caller]
    fn next_line(&self, within: Duration) -> String {
        self.lines.recv_timeout(within).unwrap_or_else(|_| {
            panic!(
                "the shell printed nothing; its stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap()
            )
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What direnv's bash hook runs at each prompt.
const DIRENV_HOOK: &str = r#"eval "$(direnv export bash)""#;

fn state_of(lab: &Lab, name: &str) -> String {
    let vms = lab.sandbox.list_json();
    let vm = vms.iter().find(|vm| vm["name"] == name);
    vm.map_or("absent".into(), |vm| vm["state"].as_str().unwrap().to_string())
}

#[test]
fn direnv_starts_the_vm_once_and_it_stops_when_no_shell_is_left() {
    let test = "direnv_starts_the_vm_once_and_it_stops_when_no_shell_is_left";
    if !support::require_program(test, "direnv") {
        return;
    }
    let Some((_serial, lab)) = begin(test) else { return };
    let home = lab.sandbox.mkdir("home");
    let project = lab.sandbox.mkdir("todo-app");
    std::fs::write(project.join("hello.txt"), "hi\n").unwrap();
    let envrc = lab.mvm(&["direnv"]).ok().to_string();
    std::fs::write(project.join(".envrc"), &envrc).unwrap();

    let mut a = Shell::spawn(&lab, &home, "a");
    let mut b = Shell::spawn(&lab, &home, "b");
    a.send(&format!("cd {} && direnv allow . && echo allowed", project.display()));
    assert_eq!(a.next_line(Duration::from_secs(10)), "allowed");

    // Both shells enter at once: one `mvm up` creates and starts the VM, the other waits
    // for it and finds it running.
    let enter = format!("cd {} && {DIRENV_HOOK} && echo \"entered $MVM_VM $MVM_IP\"", project.display());
    a.send(&enter);
    b.send(&enter);
    let boot = Duration::from_secs(180);
    let (entered_a, entered_b) = (a.next_line(boot), b.next_line(boot));
    let config: serde_json::Value =
        serde_json::from_str(lab.mvm(&["inspect", "todo-app", "--json"]).ok()).unwrap();
    let expected = format!("entered todo-app {}", config["config"]["network"]["address"].as_str().unwrap());
    let mut shells: Vec<u64> =
        config["auto_stop"]["shells"].as_array().unwrap().iter().map(|pid| pid.as_u64().unwrap()).collect();
    shells.sort();
    let mut expected_shells = vec![u64::from(a.child.id()), u64::from(b.child.id())];
    expected_shells.sort();
    assert_eq!(shells, expected_shells, "each shell holds a lease: {config:#}");
    assert_eq!(entered_a, expected, "{}", a.stderr());
    assert_eq!(entered_b, expected, "{}", b.stderr());
    let both = format!("{}{}", a.stderr(), b.stderr());
    assert_eq!(both.matches("created and started VM 'todo-app'").count(), 1, "{both}");
    assert_eq!(both.matches("VM 'todo-app' is running").count(), 1, "{both}");
    let supervisor =
        std::fs::read_to_string(lab.sandbox.state_dir().join("todo-app/log/supervisor.log")).unwrap();
    assert_eq!(supervisor.matches("starting VM 'todo-app'").count(), 1, "{supervisor}");
    assert_eq!(
        lab.mvm(&["shell", "todo-app", "--", "cat", project.join("hello.txt").to_str().unwrap()]).ok(),
        "hi\n"
    );

    // B leaves the project; A is still inside, so the VM stays well past the idle time.
    b.send(&format!("cd / && {DIRENV_HOOK}; echo \"left ${{MVM_VM:-nothing}}\""));
    assert_eq!(b.next_line(Duration::from_secs(10)), "left nothing");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(state_of(&lab, "todo-app"), "running");

    // An `mvm shell` session run from outside the project keeps the VM while it lasts.
    let mut session =
        lab.command(&["shell", "todo-app", "--", "sleep", "8"]).current_dir("/").spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // A's shell ends too: once the session is over and the idle time has passed, the VM
    // powers itself off.
    a.send("exit");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(state_of(&lab, "todo-app"), "running", "the session holds the VM");
    assert!(session.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(90);
    while state_of(&lab, "todo-app") == "running" {
        assert!(Instant::now() < deadline, "the VM did not stop by itself");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(state_of(&lab, "todo-app"), "stopped");
    let inspect = lab.mvm(&["inspect", "todo-app"]).ok().to_string();
    assert!(inspect.contains("stopped after 2s with no shell in"), "{inspect}");
    lab.assert_nothing_left();

    // Entering again brings it back, now without creating it.
    b.send(&enter);
    assert_eq!(b.next_line(boot), expected);
    assert!(b.stderr().contains("started VM 'todo-app'"), "{}", b.stderr());
    lab.mvm(&["stop", "todo-app"]).ok();
}

#[test]
fn up_outside_a_project_says_what_is_wrong() {
    let sandbox = support::Sandbox::new();
    sandbox
        .mvm(&["up", "--project", "/nonexistent/dir", "--no-lease"])
        .fails(3, &["/nonexistent/dir cannot be used"]);
    sandbox.mvm(&["up", "Bad_Name", "--no-lease"]).fails(2, &["invalid VM name"]);
    sandbox.mvm(&["direnv", "Bad_Name"]).fails(2, &["invalid VM name"]);
    if support::require_root("up_outside_a_project_says_what_is_wrong") {
        let project = sandbox.mkdir("web");
        let as_nobody = sandbox.mvm_as(65534, &["up", "--project", project.to_str().unwrap()]);
        as_nobody.fails(6, &["permission denied", "sudo mvm setup"]);
        assert!(sandbox.vm_dirs().is_empty(), "nothing was created");
    }
}
