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

/// The caller's VM whose project is `project`, else a new name made from the directory's.
/// Only the caller's own VMs are looked at, and a made name that is another user's VM is
/// refused: `sudo mvm up` never picks a member's VM by a project path or a name the member
/// chose (root acts on a member's VM only when named, and then as that member).
pub fn vm_for(paths: &Paths, project: &Path) -> anyhow::Result<VmName> {
    let me = nix::unistd::geteuid().as_raw();
    let mine = store::list(paths)?.into_iter().filter(|entry| {
        entry.name.parse::<VmName>().is_ok_and(|name| store::owner(paths, &name) == Some(me))
    });
    let found = mine
        .filter_map(|entry| entry.config.ok())
        .find(|config| config.project.as_ref().is_some_and(|p| p.path == project));
    if let Some(config) = found {
        return Ok(config.name);
    }
    let name = VmName::for_directory(project).ok_or_else(|| {
        UserError::usage(format!("no VM name can be made from {}", project.display()))
            .hint("give one: `mvm up NAME`")
    })?;
    match store::owner(paths, &name) {
        Some(owner) if owner != me => Err(UserError::conflict(format!(
            "VM '{name}' (named after {}) belongs to {}",
            project.display(),
            crate::host::user::name_of(owner)
        ))
        .hint("give yours another name: `mvm up NAME`")
        .into()),
        _ => Ok(name),
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
    let _up = FileLock::exclusive_private(&paths.up_lock(name))?;
    // Made by someone else while this waited for the lock: not this caller's to bring up.
    let me = nix::unistd::geteuid().as_raw();
    if let Some(owner) = store::owner(paths, name).filter(|owner| *owner != me) {
        return Err(UserError::conflict(format!(
            "VM '{name}' belongs to {}",
            crate::host::user::name_of(owner)
        ))
        .hint("give yours another name: `mvm up NAME`")
        .into());
    }
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

    /// Another user's VM is never picked by its project path, nor by a made name.
    #[test]
    fn another_users_vm_is_not_picked() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP another_users_vm_is_not_picked: needs root to give a VM to a test user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let project = dir.path().join("shop");
        std::fs::create_dir(&project).unwrap();
        let project = project.canonicalize().unwrap();
        for name in ["alices", "shop"] {
            let request = CreateArgs {
                name: name.into(),
                project: Some(project.clone()),
                root: "host".into(),
                ..CreateArgs::default()
            };
            let limits = HostLimits { cpus: 2, memory_mib: None };
            create::create(&request, &paths, &HostConfig::default(), limits).unwrap();
            std::os::unix::fs::chown(paths.vm_dir(&name.parse().unwrap()), Some(4242), Some(4242)).unwrap();
        }
        let error = format!("{:#}", vm_for(&paths, &project).unwrap_err());
        assert!(error.contains("VM 'shop'") && error.contains("belongs to"), "{error}");
    }
}
