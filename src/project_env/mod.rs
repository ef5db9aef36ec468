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

mod parse;
#[cfg(test)]
mod tests;
mod tools;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic::write_private;
use crate::config::vm::{Process, VmConfig};

pub use parse::{parse_devenv_info_processes, parse_print_dev_env};
use tools::command_line;
pub use tools::{HostTools, Tools};

/// The files whose contents decide a devenv project's environment.
const DEVENV_FILES: [&str; 5] = ["devenv.nix", "devenv.yaml", "devenv.lock", "flake.nix", "flake.lock"];
/// The directory of a VM's state that holds the cached environment.
const CACHE_DIR: &str = "devenv";
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
