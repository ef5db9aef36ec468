//! Project environments from devenv and Nix flakes, made on the host and used in the guest.
//!
//! A project with `devenv.nix` gets its environment from `devenv print-dev-env --json` and
//! its processes from the `# processes` section of `devenv info`; a project with a
//! `flake.nix` that has a dev shell gets it from `nix print-dev-env --json`. Both print the
//! JSON that `nix print-dev-env --json` documents (`{"variables": {NAME: {"type":
//! "exported"|"var"|"array"|…, "value": …}}, "bashFunctions": {…}}`); the exported string
//! variables are the environment. Values name paths in `/nix/store`, which the guest
//! shares read-only, so they work there as they do on the host.
//!
//! The tools run on the host as the invoking user (they use that user's Nix), at
//! `mvm start` and at `mvm shell`. The result is cached in the VM's `devenv/` directory,
//! keyed on a hash of the files that define it (`devenv.nix`, `devenv.yaml`,
//! `devenv.lock`, `flake.nix`, `flake.lock`), so an unchanged project costs four small
//! reads. `mvm shell` runs inside it; the guest init gives it to every process, and
//! devenv's processes become the VM's processes (a `[[processes]]` entry of the same name
//! in `vm.toml` wins). The tools are looked for on `PATH` and in the user's and the
//! system's Nix profiles (`sudo` drops those from `PATH`). Without the tool on the host,
//! mvm says so and the VM works without.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::vm::{Process, RestartPolicy, VmConfig};
use crate::guest::GUEST_PATH;
use crate::host::user::InvokingUser;
use crate::state::atomic::write_private;

/// The files whose contents decide a devenv project's environment.
const DEVENV_FILES: [&str; 5] = ["devenv.nix", "devenv.yaml", "devenv.lock", "flake.nix", "flake.lock"];
/// The directory of a VM's state that holds the cached environment.
const CACHE_DIR: &str = "devenv";
/// Variables of a build environment that describe the build, not the project, or that
/// the guest sets itself.
const NOT_CARRIED: [&str; 14] = [
    "HOME",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "TERM",
    "TMP",
    "TMPDIR",
    "TEMP",
    "TEMPDIR",
    "NIX_BUILD_TOP",
    "NIX_BUILD_CORES",
    "NIX_LOG_FD",
    "SHELL",
    "USER",
];

/// Which tool makes a project's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Devenv,
    Nix,
}

impl Kind {
    /// The program that makes the environment.
    pub fn program(self) -> &'static str {
        match self {
            Kind::Devenv => "devenv",
            Kind::Nix => "nix",
        }
    }

    /// The file that marks a project of this kind.
    fn marker(self) -> &'static str {
        match self {
            Kind::Devenv => "devenv.nix",
            Kind::Nix => "flake.nix",
        }
    }
}

/// The most of one defining file (`devenv.nix`, `flake.lock`, …) mvm reads.
const DEFINITION_CAP: u64 = 16 << 20;

/// The regular file `file` of `project`, read beneath it: a guest with `--mount rw` may
/// have planted a symlink or a FIFO there, which count as no file.
fn definition(project: &Path, file: &str) -> Option<Vec<u8>> {
    crate::fs::Tree::open_exact(project).ok()?.read(Path::new(file), DEFINITION_CAP).ok()
}

/// The kind of environment `project` declares, if any.
pub fn detect(project: &Path) -> Option<Kind> {
    if definition(project, "devenv.nix").is_some() {
        return Some(Kind::Devenv);
    }
    let flake = String::from_utf8(definition(project, "flake.nix")?).ok()?;
    flake.contains("devShell").then_some(Kind::Nix)
}

/// A project's environment, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectEnv {
    pub kind: Kind,
    /// The exported variables, `PATH` already joined with the guest's own.
    pub variables: BTreeMap<String, String>,
    /// devenv's processes.
    pub processes: Vec<Process>,
}

/// The outcome of looking for a project's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The project declares none (or the VM has no project).
    Undeclared,
    /// Declared, but the tool is not on this host.
    ToolMissing(Kind),
    /// The tool failed; its message.
    Failed(Kind, String),
    /// Declared, but in a project the guest writes (`--mount rw`): mvm does not evaluate
    /// guest-written Nix on the host.
    GuestWritable(Kind),
    Ready(ProjectEnv),
}

impl Outcome {
    /// What to tell the user when the VM runs without its environment.
    pub fn warning(&self) -> Option<String> {
        match self {
            Outcome::ToolMissing(kind) => Some(format!(
                "the project has {} but {} is not installed on this host; the VM runs without its \
                 environment (install {}, or see docs/DEPLOYMENT.md)",
                kind.marker(),
                kind.program(),
                kind.program()
            )),
            Outcome::Failed(kind, message) => Some(format!(
                "`{}` failed, so the VM runs without the project's environment: {message}",
                command_line(*kind).join(" ")
            )),
            Outcome::GuestWritable(kind) => Some(format!(
                "the project has {} but is mounted rw, so the guest can rewrite it; mvm does not \
                 evaluate it on the host and the VM runs without its environment (use --mount overlay)",
                kind.marker()
            )),
            Outcome::Undeclared | Outcome::Ready(_) => None,
        }
    }
}

/// The command that prints the environment of a project of `kind`.
fn command_line(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::Devenv => vec!["devenv", "print-dev-env", "--json"],
        Kind::Nix => {
            vec!["nix", "--extra-experimental-features", "nix-command flakes", "print-dev-env", "--json"]
        }
    }
}

/// Runs the host's tools. The real one runs them as the owner of the project they
/// evaluate; tests give outputs in the tools' documented formats (devenv cannot be
/// installed on CI).
pub trait Tools {
    /// `program args` run in `dir`: `Ok(None)` when the program is not installed, its
    /// stdout on success, an error with its stderr otherwise.
    fn output(&self, program: &str, args: &[&str], dir: &Path) -> anyhow::Result<Option<String>>;
}

/// The tools on this host, run as the owner of the project: its Nix is their code,
/// never run with more rights than theirs (root starting a developer's VM included).
/// A project root owns runs as the invoking user, so only root runs root's Nix as root.
pub struct HostTools;

impl Tools for HostTools {
    fn output(&self, program: &str, args: &[&str], dir: &Path) -> anyhow::Result<Option<String>> {
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir)?);
        let runner = if owner == 0 { crate::host::user::invoking_user().uid } else { owner };
        let (user, home, search) = user_and_search_path(runner);
        let Ok(path) = which::which_in(program, Some(&search), dir) else { return Ok(None) };
        let mut command = Command::new(path);
        command.args(args).current_dir(dir).env("PATH", &search).stdin(std::process::Stdio::null());
        if nix::unistd::getuid().is_root() && user.uid != 0 {
            command.uid(user.uid).gid(user.gid);
            if let Some(home) = home {
                command.env("HOME", home);
            }
            command.env("USER", &user.name);
        }
        let output = command.output().with_context(|| format!("cannot run {program}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last: Vec<&str> = stderr.lines().rev().take(5).collect();
            anyhow::bail!("{}", last.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
    }
}

impl HostTools {
    /// Whether the program that makes `kind`'s environment is on this host.
    pub fn has(kind: Kind) -> bool {
        let (_, _, search) = user_and_search_path(crate::host::user::invoking_user().uid);
        which::which_in(kind.program(), Some(search), "/").is_ok()
    }
}

/// User `uid`, their home directory, and where their tools are looked for.
fn user_and_search_path(uid: u32) -> (InvokingUser, Option<PathBuf>, OsString) {
    let account = nix::unistd::User::from_uid(uid.into()).ok().flatten();
    let user = match &account {
        Some(account) => InvokingUser { name: account.name.clone(), uid, gid: account.gid.as_raw() },
        None => InvokingUser { name: uid.to_string(), uid, gid: uid },
    };
    let home = account.map(|account| account.dir);
    let search = tool_search_path(std::env::var_os("PATH"), home.as_deref(), &user.name);
    (user, home, search)
}

/// Where devenv and nix are looked for: `PATH`, then the Nix profiles of the invoking user
/// and of the system, which `sudo`'s `secure_path` leaves out.
fn tool_search_path(path: Option<OsString>, home: Option<&Path>, user: &str) -> OsString {
    let mut dirs: Vec<PathBuf> = path.map(|path| std::env::split_paths(&path).collect()).unwrap_or_default();
    if let Some(home) = home {
        dirs.push(home.join(".nix-profile/bin"));
        dirs.push(home.join(".local/state/nix/profile/bin"));
    }
    dirs.push(PathBuf::from(format!("/etc/profiles/per-user/{user}/bin")));
    dirs.push(PathBuf::from("/nix/var/nix/profiles/default/bin"));
    dirs.push(PathBuf::from("/run/current-system/sw/bin"));
    std::env::join_paths(dirs).unwrap_or_default()
}

/// The hash of the files that define the environment of `project`.
pub fn cache_key(project: &Path) -> String {
    let mut hasher = Sha256::new();
    for file in DEVENV_FILES {
        hasher.update(file.as_bytes());
        match definition(project, file) {
            Some(bytes) => {
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            None => hasher.update(u64::MAX.to_le_bytes()),
        }
    }
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

fn cache_file(vm_dir: &Path, key: &str) -> PathBuf {
    vm_dir.join(CACHE_DIR).join(format!("{key}.json"))
}

/// The cached environment of VM `config`, if its project's files have not changed since.
pub fn cached(vm_dir: &Path, config: &VmConfig) -> Option<ProjectEnv> {
    let project = &config.project.as_ref()?.path;
    detect(project)?;
    let text = std::fs::read_to_string(cache_file(vm_dir, &cache_key(project))).ok()?;
    serde_json::from_str(&text).ok()
}

/// The environment of VM `config`'s project: from the cache, else made by the tools and
/// cached (older entries are dropped).
pub fn resolve(vm_dir: &Path, config: &VmConfig, tools: &dyn Tools) -> Outcome {
    let Some(declared) = config.project.as_ref() else { return Outcome::Undeclared };
    let project = &declared.path;
    let Some(kind) = detect(project) else { return Outcome::Undeclared };
    if declared.mount == crate::config::vm::MountMode::Rw {
        return Outcome::GuestWritable(kind);
    }
    if let Some(env) = cached(vm_dir, config) {
        return Outcome::Ready(env);
    }
    let key = cache_key(project);
    // The tools run in the directory itself, open with no symlink on its path, whatever
    // its path turns into meanwhile.
    let directory = match crate::fs::Tree::open_exact(project) {
        Ok(directory) => directory,
        Err(error) => return Outcome::Failed(kind, format!("cannot open {}: {error}", project.display())),
    };
    let by_descriptor = PathBuf::from(format!("/proc/self/fd/{}", directory.as_fd().as_raw_fd()));
    let env = match make(kind, &by_descriptor, tools) {
        Ok(Some(env)) => env,
        Ok(None) => return Outcome::ToolMissing(kind),
        Err(error) => return Outcome::Failed(kind, format!("{error:#}")),
    };
    let dir = vm_dir.join(CACHE_DIR);
    let _ = std::fs::remove_dir_all(&dir);
    let stored = std::fs::create_dir_all(&dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| write_private(&cache_file(vm_dir, &key), &serde_json::to_vec(&env)?));
    if let Err(error) = stored {
        return Outcome::Failed(kind, format!("cannot cache it in {}: {error:#}", dir.display()));
    }
    Outcome::Ready(env)
}

fn make(kind: Kind, project: &Path, tools: &dyn Tools) -> anyhow::Result<Option<ProjectEnv>> {
    let command = command_line(kind);
    let Some(json) = tools.output(command[0], &command[1..], project)? else { return Ok(None) };
    let variables = parse_print_dev_env(&json)?;
    let processes = match kind {
        Kind::Devenv => match tools.output("devenv", &["info"], project)? {
            Some(info) => parse_devenv_info_processes(&info),
            None => Vec::new(),
        },
        Kind::Nix => Vec::new(),
    };
    Ok(Some(ProjectEnv { kind, variables, processes }))
}

/// The variables a shell should have from `nix print-dev-env --json` output: the exported
/// ones with string values, without the build's own, `PATH` followed by the guest's.
pub fn parse_print_dev_env(json: &str) -> anyhow::Result<BTreeMap<String, String>> {
    #[derive(Deserialize)]
    struct DevEnv {
        variables: BTreeMap<String, Variable>,
    }
    #[derive(Deserialize)]
    struct Variable {
        #[serde(rename = "type")]
        kind: String,
        value: serde_json::Value,
    }
    let env: DevEnv = serde_json::from_str(json).context("the environment is not print-dev-env's JSON")?;
    let mut variables: BTreeMap<String, String> = env
        .variables
        .into_iter()
        .filter(|(name, variable)| variable.kind == "exported" && !NOT_CARRIED.contains(&name.as_str()))
        .filter_map(|(name, variable)| Some((name, variable.value.as_str()?.to_string())))
        .collect();
    let path = match variables.get("PATH").filter(|path| !path.is_empty()) {
        Some(path) => format!("{path}:{GUEST_PATH}"),
        None => GUEST_PATH.to_string(),
    };
    variables.insert("PATH".into(), path);
    Ok(variables)
}

/// devenv's processes from the `# processes` section of `devenv info`, whose lines read
/// `- NAME: COMMAND` (`COMMAND` is `exec /nix/store/…-NAME` in current devenv).
pub fn parse_devenv_info_processes(info: &str) -> Vec<Process> {
    let mut in_section = false;
    let mut processes = Vec::new();
    for line in info.lines() {
        if let Some(heading) = line.strip_prefix("# ") {
            in_section = heading.trim() == "processes";
            continue;
        }
        let Some(entry) = line.strip_prefix("- ").filter(|_| in_section) else { continue };
        let Some((name, command)) = entry.split_once(": ") else { continue };
        let process = Process {
            name: name.trim().to_string(),
            command: command.trim().to_string(),
            workdir: None,
            env: BTreeMap::new(),
            restart: RestartPolicy::OnFailure,
        };
        if crate::config::vm::check_processes(std::slice::from_ref(&process)).is_ok() {
            processes.push(process);
        }
    }
    processes
}

impl ProjectEnv {
    /// Gives every process the environment (under its own variables) and adds devenv's
    /// processes that `processes` does not declare, with the VM's `env` and `workdir`.
    pub fn apply_to(&self, processes: &mut Vec<Process>, vm_env: &BTreeMap<String, String>, workdir: &str) {
        for process in processes.iter_mut() {
            let mut env = self.variables.clone();
            env.append(&mut process.env);
            process.env = env;
        }
        for process in &self.processes {
            if processes.iter().any(|declared| declared.name == process.name) {
                continue;
            }
            let mut env = self.variables.clone();
            env.extend(vm_env.clone());
            processes.push(Process { workdir: Some(workdir.to_string()), env, ..process.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let pairs: Vec<(&str, &str)> =
            processes.iter().map(|p| (p.name.as_str(), p.command.as_str())).collect();
        assert_eq!(pairs, [("web", "exec /nix/store/ccc-web"), ("worker", "npm run worker")]);
    }

    #[test]
    fn detects_devenv_and_flakes_with_dev_shells() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect(dir.path()), None);
        std::fs::write(dir.path().join("flake.nix"), "{ outputs = _: { packages = {}; }; }").unwrap();
        assert_eq!(detect(dir.path()), None, "a flake without a dev shell");
        std::fs::write(
            dir.path().join("flake.nix"),
            "{ outputs = _: { devShells.x86_64-linux.default = 1; }; }",
        )
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
        std::fs::write(
            dir.path().join("flake.nix"),
            "{ outputs = _: { devShells.x86_64-linux.default = 1; }; }",
        )
        .unwrap();
        let tools = FakeTools { installed: true, calls: RefCell::default() };
        let Outcome::Ready(env) = resolve(&dir.path().join("vm"), &vm_with_project(dir.path()), &tools)
        else {
            panic!("not ready")
        };
        assert_eq!((env.kind, env.processes.len()), (Kind::Nix, 0));
        assert_eq!(env.variables["GREETING"], "from devenv");
        let calls = tools.calls.borrow();
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0].starts_with("nix --extra-experimental-features nix-command flakes print-dev-env --json")
        );
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
        std::fs::write(dir.path().join("devenv.nix"), "{ env.LEAK = builtins.readFile /etc/shadow; }")
            .unwrap();
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
}
