//! Tests of `project_env`.

use super::tools::tool_search_path;
use super::*;
use crate::config::vm::RestartPolicy;
use crate::contract::GUEST_PATH;
use std::cell::RefCell;

/// `nix print-dev-env --json` output in the shape its manual documents (trimmed).
pub const PRINT_DEV_ENV: &str = r#"{
  "bashFunctions": {"runHook": " \n    local hookName=\"$1\";\n"},
  "variables": {
    "PATH": {"type": "exported", "value": "/nix/store/aaa-nodejs-20/bin:/nix/store/bbb-coreutils/bin"},
    "DEVENV_ROOT": {"type": "exported", "value": "/src/web"},
    "GREETING": {"type": "exported", "value": "from devenv"},
    "HOME": {"type": "exported", "value": "/homeless-shelter"},
    "NIX_BUILD_TOP": {"type": "exported", "value": "/tmp"},
    "shellHook": {"type": "var", "value": "echo hi"},
    "postUnpackHooks": {"type": "array", "value": ["_updateSourceDateEpochFromSourceRoot"]}
  }
}"#;

/// `devenv info` output as devenv's info module renders it (`# SECTION` then `- ENTRY`).
pub const DEVENV_INFO: &str = "# env\n- DEVENV_ROOT: /src/web\n\n# packages\n- nodejs-20\n\n\
    # processes\n- web: exec /nix/store/ccc-web\n- worker: npm run worker\n- bad name: x\n\n\
    # scripts\n- hello: echo hi\n";

struct FakeTools {
    installed: bool,
    calls: RefCell<Vec<String>>,
}

impl Tools for FakeTools {
    fn output(&self, program: &str, args: &[&str], dir: &Path) -> anyhow::Result<Option<String>> {
        self.calls.borrow_mut().push(format!("{program} {} in {}", args.join(" "), dir.display()));
        if !self.installed {
            return Ok(None);
        }
        Ok(Some(if args == ["info"] { DEVENV_INFO } else { PRINT_DEV_ENV }.to_string()))
    }
}

fn vm_with_project(project: &Path) -> VmConfig {
    let mut config = crate::config::vm::tests::sample();
    config.project.as_mut().unwrap().path = project.to_path_buf();
    config
}

#[test]
fn takes_the_exported_variables_and_joins_path() {
    let variables = parse_print_dev_env(PRINT_DEV_ENV).unwrap();
    assert_eq!(variables["GREETING"], "from devenv");
    assert_eq!(
        variables["PATH"],
        format!("/nix/store/aaa-nodejs-20/bin:/nix/store/bbb-coreutils/bin:{GUEST_PATH}")
    );
    for absent in ["HOME", "NIX_BUILD_TOP", "shellHook", "postUnpackHooks"] {
        assert!(!variables.contains_key(absent), "{absent}");
    }
    assert!(parse_print_dev_env("export PATH=/x").is_err());
}

#[test]
fn tools_are_also_looked_for_in_nix_profiles() {
    let search = tool_search_path(Some("/usr/bin:/bin".into()), Some(Path::new("/home/ann")), "ann");
    let dirs: Vec<PathBuf> = std::env::split_paths(&search).collect();
    let expected = [
        "/usr/bin",
        "/bin",
        "/home/ann/.nix-profile/bin",
        "/home/ann/.local/state/nix/profile/bin",
        "/etc/profiles/per-user/ann/bin",
        "/nix/var/nix/profiles/default/bin",
        "/run/current-system/sw/bin",
    ];
    assert_eq!(dirs, expected.map(PathBuf::from));
}

#[test]
fn reads_processes_from_devenv_info() {
    let processes = parse_devenv_info_processes(DEVENV_INFO);
    let pairs: Vec<(&str, &str)> = processes.iter().map(|p| (p.name.as_str(), p.command.as_str())).collect();
    assert_eq!(pairs, [("web", "exec /nix/store/ccc-web"), ("worker", "npm run worker")]);
}

#[test]
fn detects_devenv_and_flakes_with_dev_shells() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(detect(dir.path()), None);
    std::fs::write(dir.path().join("flake.nix"), "{ outputs = _: { packages = {}; }; }").unwrap();
    assert_eq!(detect(dir.path()), None, "a flake without a dev shell");
    std::fs::write(dir.path().join("flake.nix"), "{ outputs = _: { devShells.x86_64-linux.default = 1; }; }")
        .unwrap();
    assert_eq!(detect(dir.path()), Some(Kind::Nix));
    std::fs::write(dir.path().join("devenv.nix"), "{ pkgs, ... }: { }").unwrap();
    assert_eq!(detect(dir.path()), Some(Kind::Devenv));
    // What a guest with `--mount rw` plants is no definition: a FIFO never blocks.
    std::fs::remove_file(dir.path().join("devenv.nix")).unwrap();
    std::fs::remove_file(dir.path().join("flake.nix")).unwrap();
    nix::unistd::mkfifo(&dir.path().join("devenv.nix"), nix::sys::stat::Mode::from_bits_truncate(0o644))
        .unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.path().join("flake.nix")).unwrap();
    assert_eq!(detect(dir.path()), None);
    cache_key(dir.path());
}

#[test]
fn caches_until_a_defining_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (project, vm_dir) = (dir.path().join("web"), dir.path().join("vm"));
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("devenv.nix"), "{ }").unwrap();
    let config = vm_with_project(&project);
    let tools = FakeTools { installed: true, calls: RefCell::default() };

    let Outcome::Ready(env) = resolve(&vm_dir, &config, &tools) else { panic!("not ready") };
    assert_eq!(env.processes.len(), 2);
    assert_eq!(tools.calls.borrow().len(), 2, "{:?}", tools.calls.borrow());
    assert!(tools.calls.borrow()[0].starts_with("devenv print-dev-env --json in "));
    assert_eq!(resolve(&vm_dir, &config, &tools), Outcome::Ready(env.clone()));
    assert_eq!(tools.calls.borrow().len(), 2, "the second look is served from the cache");

    std::fs::write(project.join("devenv.lock"), "{}").unwrap();
    assert_eq!(cached(&vm_dir, &config), None);
    resolve(&vm_dir, &config, &tools);
    assert_eq!(tools.calls.borrow().len(), 4, "a new lock file makes it again");
    assert_eq!(std::fs::read_dir(vm_dir.join(CACHE_DIR)).unwrap().count(), 1, "one entry is kept");
}

#[test]
fn a_flake_dev_shell_comes_from_nix_print_dev_env() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flake.nix"), "{ outputs = _: { devShells.x86_64-linux.default = 1; }; }")
        .unwrap();
    let tools = FakeTools { installed: true, calls: RefCell::default() };
    let Outcome::Ready(env) = resolve(&dir.path().join("vm"), &vm_with_project(dir.path()), &tools) else {
        panic!("not ready")
    };
    assert_eq!((env.kind, env.processes.len()), (Kind::Nix, 0));
    assert_eq!(env.variables["GREETING"], "from devenv");
    let calls = tools.calls.borrow();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].starts_with("nix --extra-experimental-features nix-command flakes print-dev-env --json"));
}

#[test]
fn a_failing_tool_is_reported_with_its_message() {
    struct Failing;
    impl Tools for Failing {
        fn output(&self, _: &str, _: &[&str], _: &Path) -> anyhow::Result<Option<String>> {
            anyhow::bail!("error: attribute 'devShells' missing")
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devenv.nix"), "{ }").unwrap();
    let outcome = resolve(&dir.path().join("vm"), &vm_with_project(dir.path()), &Failing);
    let warning = outcome.warning().unwrap();
    assert!(
        warning.contains("`devenv print-dev-env --json` failed") && warning.contains("devShells"),
        "{warning}"
    );
    assert!(!dir.path().join("vm").join(CACHE_DIR).exists(), "a failure is not cached");
}

/// In an `rw` project the guest can rewrite devenv.nix: it is never evaluated on the host.
#[test]
fn a_guest_writable_project_is_not_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devenv.nix"), "{ env.LEAK = builtins.readFile /etc/shadow; }").unwrap();
    let tools = FakeTools { installed: true, calls: RefCell::default() };
    let mut config = vm_with_project(dir.path());
    config.project.as_mut().unwrap().mount = crate::config::vm::MountMode::Rw;
    let outcome = resolve(&dir.path().join("vm"), &config, &tools);
    assert_eq!(outcome, Outcome::GuestWritable(Kind::Devenv));
    assert!(tools.calls.borrow().is_empty(), "a tool ran: {:?}", tools.calls.borrow());
    assert!(outcome.warning().unwrap().contains("mounted rw"));
}

#[test]
fn without_the_tool_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devenv.nix"), "{ }").unwrap();
    let tools = FakeTools { installed: false, calls: RefCell::default() };
    let outcome = resolve(&dir.path().join("vm"), &vm_with_project(dir.path()), &tools);
    assert_eq!(outcome, Outcome::ToolMissing(Kind::Devenv));
    assert!(outcome.warning().unwrap().contains("devenv is not installed on this host"));
    let none = resolve(&dir.path().join("vm"), &vm_with_project(&dir.path().join("elsewhere")), &tools);
    assert_eq!(none, Outcome::Undeclared);
}

#[test]
fn processes_get_the_environment_and_declared_ones_win() {
    let env = ProjectEnv {
        kind: Kind::Devenv,
        variables: parse_print_dev_env(PRINT_DEV_ENV).unwrap(),
        processes: parse_devenv_info_processes(DEVENV_INFO),
    };
    let declared = Process {
        name: "web".into(),
        command: "python3 -m http.server".into(),
        workdir: None,
        env: BTreeMap::from([("GREETING".into(), "mine".into())]),
        restart: RestartPolicy::Always,
    };
    let mut processes = vec![declared];
    let vm_env = BTreeMap::from([("A".to_string(), "1".to_string())]);
    env.apply_to(&mut processes, &vm_env, "/src/web");
    assert_eq!(processes.len(), 2);
    assert_eq!(processes[0].command, "python3 -m http.server");
    assert_eq!(processes[0].env["GREETING"], "mine");
    assert!(processes[0].env["PATH"].starts_with("/nix/store/aaa"));
    assert_eq!(processes[1].name, "worker");
    assert_eq!(processes[1].env["A"], "1");
    assert_eq!(processes[1].workdir.as_deref(), Some("/src/web"));
}
