//! Bringing a project's VM up: create it if missing, start it if stopped, lease it to
//! the calling shell. Idempotent and safe when shells race: everything happens under a
//! per-name lock, so the first caller creates and starts the VM and the others find it
//! running. A VM that `up` started stops by itself once no lease holder has been in the
//! project for the idle time (`state::lease`); one started some other way is left alone.

use crate::config::host::HostConfig;
use crate::error::UserError;
use crate::name::VmName;
use crate::state::lease;
use crate::state::lock::FileLock;
use crate::state::store;
use crate::state::Paths;
use crate::vm::create::{self, CreateArgs, HostLimits};
use crate::vm::start::{self, Started};
use std::path::Path;
use std::time::Duration;

/// What `up` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    Running,
    /// It was paused (idle), and runs again.
    Resumed,
    Started,
    Created,
}

/// The VM whose project is `project`, else a new name made from the directory's.
pub fn vm_for(paths: &Paths, project: &Path) -> anyhow::Result<VmName> {
    let owner = store::list(paths)?
        .into_iter()
        .filter_map(|entry| entry.config.ok())
        .find(|config| config.project.as_ref().is_some_and(|p| p.path == project));
    match owner {
        Some(config) => Ok(config.name),
        None => VmName::for_directory(project).ok_or_else(|| {
            UserError::usage(format!("no VM name can be made from {}", project.display()))
                .hint("give one: `mvm up NAME`")
                .into()
        }),
    }
}

/// Creates VM `name` if missing and starts it if stopped, then leases it to the calling shell.
/// How `up` brings a VM up.
#[derive(Debug, Clone)]
pub struct UpRequest {
    /// The template to create the VM from, if it does not exist yet.
    pub template: Option<String>,
    /// The idle time after which a VM `up` started pauses by itself.
    pub idle: Duration,
    /// The idle time after which it stops.
    pub stop_after: Duration,
    /// Whether to lease the VM to the calling shell.
    pub lease: bool,
    /// How long to wait for the guest agent.
    pub timeout: Duration,
}

pub fn up(paths: &Paths, name: &VmName, project: &Path, args: &UpRequest) -> anyhow::Result<Up> {
    crate::state::paths::ensure_root(&paths.run_dir)?;
    let _up = FileLock::exclusive(&paths.up_lock(name))?;
    let mut outcome = Up::Running;
    if !store::exists(paths, name) {
        let host = HostConfig::load(&paths.config_file)?;
        let request = CreateArgs {
            name: name.to_string(),
            template: args.template.clone(),
            via_up: true,
            project: Some(project.to_path_buf()),
            root: "host".into(),
            ..CreateArgs::default()
        };
        create::create(&request, paths, &host, HostLimits::of_this_host())?;
        outcome = Up::Created;
    }
    let run_dir = paths.vm_run_dir(name);
    match start::start(paths, name, true, args.timeout)? {
        Started::AlreadyRunning => {}
        Started::Resumed => outcome = Up::Resumed,
        Started::Spawned | Started::Ready => {
            lease::enable_auto_pause(&run_dir, args.idle)?;
            lease::enable_auto_stop(&run_dir, args.stop_after.max(args.idle))?;
            if outcome == Up::Running {
                outcome = Up::Started;
            }
        }
    }
    if args.lease {
        if let Some(shell) = lease::calling_shell() {
            lease::take(&run_dir, shell, lease::Scope::Project)?;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_vm_of_a_project_or_names_one_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let project = dir.path().join("Shop_Front");
        std::fs::create_dir(&project).unwrap();
        let project = project.canonicalize().unwrap();
        assert_eq!(vm_for(&paths, &project).unwrap().as_str(), "shop-front");
        let request = CreateArgs {
            name: "web".into(),
            project: Some(project.clone()),
            root: "host".into(),
            ..CreateArgs::default()
        };
        let limits = HostLimits { cpus: 2, memory_mib: None };
        create::create(&request, &paths, &HostConfig::default(), limits).unwrap();
        assert_eq!(vm_for(&paths, &project).unwrap().as_str(), "web");
    }
}
