//! End-to-end tier: a devenv project's environment and processes in the VM.
//!
//! devenv and Nix cannot be installed on CI's machines (no registry mvm may use has them),
//! so a stand-in `devenv` prints what the real one prints, in the documented formats:
//! `print-dev-env --json` the JSON of `nix print-dev-env --json` (the Nix manual's
//! example shape), and `info` the `# SECTION` / `- NAME: COMMAND` lines of devenv's info
//! module. Everything after those outputs is real: the cache, the shell, the processes.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::e2e::{begin, Lab};
use support::Run;

const FAKE_DEVENV: &str = r#"#!/bin/sh
# Stand-in for devenv (not installable on CI): prints devenv's documented output formats.
echo "$*" >> "$(dirname "$0")/calls.log"
case "$1" in
print-dev-env) cat <<'JSON'
{
  "bashFunctions": {"runHook": " \n    local hookName=\"$1\";\n"},
  "variables": {
    "GREETING": {"type": "exported", "value": "hello from devenv"},
    "PATH": {"type": "exported", "value": "/opt/devenv-profile/bin"},
    "HOME": {"type": "exported", "value": "/homeless-shelter"},
    "shellHook": {"type": "var", "value": "echo entering"},
    "postUnpackHooks": {"type": "array", "value": ["_updateSourceDateEpochFromSourceRoot"]}
  }
}
JSON
;;
info) printf '# env\n- DEVENV_ROOT: %s\n\n# processes\n- files: exec python3 -m http.server 3000\n\n# scripts\n- hi: echo hi\n' "$PWD" ;;
*) echo "unexpected: $*" >&2; exit 1 ;;
esac
"#;

fn mvm_with_path(lab: &Lab, path: &str, args: &[&str]) -> Run {
    Run::from_output(lab.command(args).env("PATH", path).output().unwrap())
}

fn calls(bin: &Path) -> Vec<String> {
    std::fs::read_to_string(bin.join("calls.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn devenv_environment_reaches_the_shell_and_its_processes_run() {
    let Some((_serial, lab)) = begin("devenv_environment_reaches_the_shell_and_its_processes_run") else {
        return;
    };
    let bin = lab.sandbox.mkdir("bin");
    std::fs::write(bin.join("devenv"), FAKE_DEVENV).unwrap();
    std::fs::set_permissions(bin.join("devenv"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let system_path = std::env::var("PATH").unwrap();
    let with_devenv = format!("{}:{system_path}", bin.display());
    let project = lab.sandbox.mkdir("web");
    std::fs::write(project.join("devenv.nix"), "{ pkgs, ... }: { processes.files.exec = \"…\"; }\n").unwrap();
    let project_arg = project.to_str().unwrap();
    lab.mvm(&["create", "web", "--project", project_arg, "--port", "8080:3000"]).ok();

    mvm_with_path(&lab, &with_devenv, &["start", "web"]).ok();
    assert_eq!(calls(&bin), ["print-dev-env --json", "info"]);

    // The shell runs inside the environment; `[env]` and --env still win over it.
    let echo = ["shell", "web", "--", "sh", "-c", "echo \"$GREETING\"; echo \"$PATH\"; echo \"$HOME\""];
    let out = mvm_with_path(&lab, &with_devenv, &echo).ok().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello from devenv", "{out}");
    assert!(lines[1].starts_with("/opt/devenv-profile/bin:/usr/local/sbin:"), "{out}");
    assert_ne!(lines[2], "/homeless-shelter", "the build's HOME is not carried");
    let overridden = mvm_with_path(
        &lab,
        &with_devenv,
        &["shell", "web", "--env", "GREETING=mine", "--", "printenv", "GREETING"],
    );
    assert_eq!(overridden.ok(), "mine\n");
    assert_eq!(calls(&bin).len(), 2, "shells are served from the cache: {:?}", calls(&bin));

    // devenv's process runs in the VM, answering through the port forward.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = lab.host.exec("curl", &["-sf", "--max-time", "3", "http://127.0.0.1:8080/devenv.nix"]);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("processes.files.exec"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "devenv's process never answered: {:?}",
            lab.mvm(&["inspect", "web"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let inspect = lab.mvm(&["inspect", "web"]).ok().to_string();
    assert!(inspect.contains("devenv (") && inspect.contains("1 processes"), "{inspect}");

    // A changed lock file makes the environment again.
    std::fs::write(project.join("devenv.lock"), "{}\n").unwrap();
    mvm_with_path(&lab, &with_devenv, &["shell", "web", "--", "true"]).ok();
    assert_eq!(calls(&bin).len(), 4, "{:?}", calls(&bin));
    lab.mvm(&["stop", "web"]).ok();

    // Without devenv on the host: a clear warning, and the VM works without the environment.
    std::fs::write(project.join("devenv.yaml"), "inputs: {}\n").unwrap();
    let started = mvm_with_path(&lab, &system_path, &["start", "web"]);
    started.ok();
    assert!(
        started.stderr.contains("the project has devenv.nix but devenv is not installed"),
        "{}",
        started.stderr
    );
    let out = mvm_with_path(&lab, &system_path, &["shell", "web", "--", "sh", "-c", "echo \"[$GREETING]\""]);
    assert_eq!(out.ok(), "[]\n");
    assert!(lab.mvm(&["inspect", "web"]).ok().contains("devenv is not installed"));
    lab.mvm(&["stop", "web"]).ok();
    lab.assert_nothing_left();
}
