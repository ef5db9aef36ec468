//! The catalogue of VMs on disk: which exist, their configs, and whether they run.
//!
//! Every directory under the state root whose name does not start with `.` is a VM.
//! Hidden entries belong to mvm's own machinery: the create lock, half-built VMs being
//! staged by `create` and VMs being deleted by `rm`; they are never listed.

use std::io::ErrorKind;

use anyhow::Context;

use crate::config::vm::VmConfig;
use crate::error::UserError;
use crate::name::VmName;
use crate::state::lock::RunLock;
use crate::state::Paths;

/// Prefix of a VM directory that `create` is still filling.
pub const STAGING_PREFIX: &str = ".staging-";
/// Prefix of a VM directory that `rm` is deleting.
pub const TRASH_PREFIX: &str = ".trash-";

/// One VM directory: its name and its config, or why the config cannot be read.
#[derive(Debug)]
pub struct VmEntry {
    pub name: String,
    pub config: Result<VmConfig, String>,
}

/// All VMs, sorted by name. A broken `vm.toml` makes a broken entry, not an error.
pub fn list(paths: &Paths) -> anyhow::Result<Vec<VmEntry>> {
    let entries = match std::fs::read_dir(&paths.state_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", paths.state_dir.display()))
        }
    };
    let mut vms = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", paths.state_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // Another user's VM is theirs alone: not even its name is listed.
        use std::os::unix::fs::MetadataExt;
        if !entry.metadata().is_ok_and(|meta| may_manage(meta.uid())) {
            continue;
        }
        let config = match name.parse::<VmName>() {
            Ok(vm_name) => {
                VmConfig::load(&paths.vm_config(&vm_name), &vm_name).map_err(|error| format!("{error:#}"))
            }
            Err(error) => Err(error.to_string()),
        };
        vms.push(VmEntry { name, config });
    }
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vms)
}

/// Whether a VM directory exists for `name` (broken or not).
pub fn exists(paths: &Paths, name: &VmName) -> bool {
    paths.vm_dir(name).exists()
}

pub use mvm_privileged::record::no_such_vm;

/// The uid VM `name` belongs to (its directory's owner), if it exists.
pub fn owner(paths: &Paths, name: &VmName) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(paths.vm_dir(name)).ok().filter(|meta| meta.is_dir()).map(|meta| meta.uid())
}

/// Whether this process may act on a VM that `owner` owns: root on any, a user on theirs.
pub fn may_manage(owner: u32) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    me == 0 || me == owner
}

/// Loads the config of VM `name`, with a not-found error if there is no such VM, and a
/// needs-root one if it is another user's.
pub fn load(paths: &Paths, name: &VmName) -> anyhow::Result<VmConfig> {
    let Some(owner) = owner(paths, name) else {
        return Err(no_such_vm(name).into());
    };
    if !may_manage(owner) {
        let user = crate::host::user::name_of(owner);
        return Err(UserError::needs_root(format!("VM '{name}' belongs to {user}, not to you"))
            .hint("only its owner (or root) can use it")
            .into());
    }
    VmConfig::load(&paths.vm_config(name), name).with_context(|| format!("VM '{name}' is broken")).map_err(
        |error| {
            let hint = format!("fix or restore its vm.toml, or remove the VM with `mvm rm {name}`");
            anyhow::Error::from(UserError::usage(format!("{error:#}")).hint(hint))
        },
    )
}

/// Whether a VM is running or stopped, judged by its supervisor's run lock alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
}

/// The run state of VM `name`.
pub fn run_state(paths: &Paths, name: &VmName) -> anyhow::Result<RunState> {
    // A supervisor makes its runtime dir a directory: a symlink there runs nothing.
    if std::fs::symlink_metadata(paths.vm_run_dir(name)).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Ok(RunState::Stopped);
    }
    Ok(if RunLock::is_held(&paths.run_lock(name))? { RunState::Running } else { RunState::Stopped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_sorted_skipping_hidden_and_keeping_broken() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        for entry in ["zeta", "alpha", ".staging-x", ".trash-y", "Bad.Name"] {
            std::fs::create_dir_all(paths.state_dir.join(entry)).unwrap();
        }
        std::fs::write(paths.state_dir.join(".create.lock"), "").unwrap();
        std::fs::write(paths.state_dir.join("alpha/vm.toml"), "not = [toml").unwrap();
        let names: Vec<_> = list(&paths).unwrap().into_iter().map(|vm| vm.name).collect();
        assert_eq!(names, ["Bad.Name", "alpha", "zeta"]);
        assert!(list(&paths).unwrap().iter().all(|vm| vm.config.is_err()));
    }

    #[test]
    fn missing_state_dir_is_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(&Paths::under(&dir.path().join("none"))).unwrap().is_empty());
    }

    #[test]
    fn load_says_not_found_or_broken() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let name: VmName = "web".parse().unwrap();
        let error = load(&paths, &name).unwrap_err();
        assert_eq!(crate::error::exit_code_of(&error), crate::error::ExitCode::NotFound);
        std::fs::create_dir_all(paths.vm_dir(&name)).unwrap();
        std::fs::write(paths.vm_config(&name), "garbage").unwrap();
        let error = format!("{:#}", load(&paths, &name).unwrap_err());
        assert!(error.contains("VM 'web' is broken"), "{error}");
    }
}
