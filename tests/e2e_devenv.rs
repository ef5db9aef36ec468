//! End-to-end tier: a project's Nix environment and processes in the VM.
//!
//! Nix is real (Debian's `nix-bin`): a flake without inputs, built offline, gives a VM its
//! environment through the real `nix print-dev-env`. devenv is in no registry mvm may
//! use, so a stand-in `devenv` prints, for `print-dev-env --json`, what the real
//! `nix print-dev-env --json` printed for a flake with the same variables (made at the
//! start of the test), and for `info` the `# SECTION` / `- NAME: COMMAND` lines of
//! devenv's info module. Everything after those outputs is real: the cache, the shell,
//! the processes.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::e2e::{begin, Lab};
use support::Run;

const FAKE_DEVENV: &str = r#"#!/bin/sh
# Stand-in for devenv (not installable on CI): its print-dev-env output is a real
# `nix print-dev-env --json` run's, its info output devenv's documented format.
echo "$*" >> "$(dirname "$0")/calls.log"
case "$1" in
print-dev-env) cat "$(dirname "$0")/print-dev-env.json" ;;
info) printf '# env\n- DEVENV_ROOT: %s\n\n# processes\n- files: exec python3 -m http.server 3000\n\n# scripts\n- hi: echo hi\n' "$PWD" ;;
*) echo "unexpected: $*" >&2; exit 1 ;;
esac
"#;

/// A flake without inputs whose dev shell exports `variables` (name, value): `nix
/// print-dev-env` needs a bash builder and an `outputs` list, nothing from a network.
fn flake_with(variables: &[(&str, &str)]) -> String {
    let exported: String =
        variables.iter().map(|(name, value)| format!("      {name} = \"{value}\";\n")).collect();
    format!(
        "{{\n  outputs = {{ self }}: {{\n    devShells.x86_64-linux.default = derivation {{\n      \
         name = \"mvm-test-shell\";\n      system = \"x86_64-linux\";\n      builder = \"/bin/bash\";\n      \
         args = [ \"-c\" \"echo > $out\" ];\n      outputs = [ \"out\" ];\n{exported}    }};\n  }};\n}}\n"
    )
}

/// Nix's settings for a machine with no network and no build users (CI's): no binary
/// cache, builds as the caller, no sandbox (the builder is the host's bash).
const OFFLINE_NIX: &str = "substituters =\nbuild-users-group =\nsandbox = false\n";

/// The real `nix print-dev-env --json` of a flake in `dir`.
fn real_print_dev_env(dir: &Path) -> String {
    let out = std::process::Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes", "print-dev-env", "--json"])
        .current_dir(dir)
        .env("NIX_CONFIG", OFFLINE_NIX)
        .output()
        .expect("nix (scripts/setup installs nix-bin)");
    assert!(out.status.success(), "nix print-dev-env failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

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
    if !support::require_program("devenv_environment_reaches_the_shell_and_its_processes_run", "nix") {
        return;
    }
    let bin = lab.sandbox.mkdir("bin");
    let shell = lab.sandbox.mkdir("devenv-shell");
    std::fs::write(
        shell.join("flake.nix"),
        flake_with(&[("GREETING", "hello from devenv"), ("PATH", "/opt/devenv-profile/bin")]),
    )
    .unwrap();
    std::fs::write(bin.join("print-dev-env.json"), real_print_dev_env(&shell)).unwrap();
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

/// A project flake's dev shell, through the real `nix print-dev-env`, reaches `mvm shell`.
#[test]
fn a_flake_environment_comes_from_the_real_nix() {
    let Some((_serial, lab)) = begin("a_flake_environment_comes_from_the_real_nix") else { return };
    if !support::require_program("a_flake_environment_comes_from_the_real_nix", "nix") {
        return;
    }
    let project = lab.sandbox.mkdir("flaky");
    std::fs::write(project.join("flake.nix"), flake_with(&[("GREETING", "from a real flake")])).unwrap();
    lab.mvm(&["create", "nixy", "--project", project.to_str().unwrap()]).ok();
    let with_nix =
        |args: &[&str]| Run::from_output(lab.command(args).env("NIX_CONFIG", OFFLINE_NIX).output().unwrap());
    with_nix(&["start", "nixy"]).ok();
    assert_eq!(with_nix(&["shell", "nixy", "--", "printenv", "GREETING"]).ok(), "from a real flake\n");
    let inspect = lab.mvm(&["inspect", "nixy"]).ok().to_string();
    assert!(inspect.contains("nix (") && inspect.contains("variables"), "{inspect}");
    lab.mvm(&["stop", "nixy"]).ok();
    lab.assert_nothing_left();
}
