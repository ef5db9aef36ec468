//! Removing a stopped VM with its state, volumes (unless kept) and logs.

use crate::atomic::sync_dir;
use crate::config::vm::VmConfig;
use crate::error::UserError;
use crate::name::VmName;
use crate::privileged::client::Privileges;
use crate::state::lock::FileLock;
use crate::state::store::{self, RunState, TRASH_PREFIX};
use crate::state::Paths;
use anyhow::Context;
use std::path::Path;

/// Removes VM `name`, which must exist and not run; with `keep_volumes`, its volumes
/// move to [`Paths::kept_volumes`] first.
pub fn remove(
    paths: &Paths,
    privileges: &dyn Privileges,
    name: &VmName,
    keep_volumes: bool,
) -> anyhow::Result<()> {
    if !store::exists(paths, name) {
        return Err(store::no_such_vm(name).into());
    }
    let _lock = FileLock::exclusive(&paths.create_lock())?;
    if !store::exists(paths, name) {
        return Err(store::no_such_vm(name).into());
    }
    // No start meanwhile: a supervisor mounting the disk that goes below.
    let _lifecycle = FileLock::exclusive(&paths.vm_dir(name).join(".lifecycle.lock"))?;
    if store::run_state(paths, name)? == RunState::Running {
        return Err(UserError::conflict(format!("VM '{name}' is running"))
            .hint(format!("stop it first with `mvm stop {name}`, or use `mvm rm --force {name}`"))
            .into());
    }
    let kept = paths.kept_volumes(name);
    if keep_volumes && kept.exists() {
        return Err(UserError::conflict(format!(
            "volumes of an earlier VM '{name}' are already kept in {}",
            kept.display()
        ))
        .hint("move or delete them first")
        .into());
    }
    // First, while nothing is lost yet: a crashed supervisor may have left the project
    // bound in the runtime dir, which is emptied without ever recursing into a mount.
    let run_dir = paths.vm_run_dir(name);
    crate::runtime::remove_run_dir(&run_dir).map_err(|error| {
        UserError::new(
            crate::error::ExitCode::Failure,
            format!("cannot remove {}: {error}", run_dir.display()),
        )
        .hint("a mount there would not go away: see `mvm doctor`, then `mvm doctor --fix`")
    })?;
    let config = store::load(paths, name);
    take_network_down(privileges, name, &config);
    if keep_volumes {
        std::fs::create_dir_all(kept.parent().expect("kept volumes have a parent"))?;
        keep_the_volumes(paths, privileges, name, config.as_ref().ok(), &kept)
            .with_context(|| format!("cannot keep the volumes in {}", kept.display()))?;
    }
    // Before the directory goes: its files disk is mounted in it.
    match &config {
        Ok(config) => privileges.disk().remove(config)?,
        Err(error) => eprintln!("warning: VM '{name}''s disk, if it has one, is left behind: {error:#}"),
    }
    let trash = paths.state_dir.join(format!("{TRASH_PREFIX}{name}-{}", std::process::id()));
    std::fs::rename(paths.vm_dir(name), &trash)
        .with_context(|| format!("cannot move {} aside", paths.vm_dir(name).display()))?;
    sync_dir(&paths.state_dir)?;
    delete_trash(paths, &trash).with_context(|| format!("cannot delete {}", trash.display()))?;
    let _ = std::fs::remove_file(paths.up_lock(name));
    crate::state::claims::release(&paths.state_dir, name);
    Ok(())
}

/// Moves VM `name`'s volumes to `kept`: off its files disk (copied, then the disk goes),
/// or, for a VM never started, from beside its record.
fn keep_the_volumes(
    paths: &Paths,
    privileges: &dyn Privileges,
    name: &VmName,
    config: Option<&VmConfig>,
    kept: &Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let vm_dir = paths.vm_dir(name);
    let files =
        config.map(|config| crate::vm::files::Files::of_locked(paths, privileges, config)).transpose()?;
    let Some(volumes) = files.as_ref().map(|files| files.dir().join("volumes")).filter(|dir| dir.is_dir())
    else {
        let volumes = vm_dir.join("volumes");
        // Its owner's alone before it moves where the group can look (the VM's
        // directory, which held it, was).
        std::fs::set_permissions(&volumes, std::fs::Permissions::from_mode(0o700))?;
        return Ok(std::fs::rename(&volumes, kept)?);
    };
    // Copied into a directory of the owner's alone, made private, then moved where the
    // group can look: never open to others half-way.
    let staging = kept.with_file_name(format!(".{name}-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let copied = (|| -> anyhow::Result<()> {
        let namespace =
            crate::supervisor::disk::namespace_for(&crate::supervisor::launch::RunAs::this_process())?;
        crate::supervisor::disk::copy_tree(&volumes, &staging.join("volumes"), namespace.as_ref())?;
        std::fs::set_permissions(staging.join("volumes"), std::fs::Permissions::from_mode(0o700))?;
        std::fs::rename(staging.join("volumes"), kept)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir(&staging);
    copied
}

/// Deletes a removed VM's directory. The guest's trees are in it: removed beneath it,
/// never through a symlink; a user's VM's own trees hold files of the user's subordinate
/// ids (`host::subids`), which only the user's mapped namespace may remove.
fn delete_trash(paths: &Paths, trash: &std::path::Path) -> anyhow::Result<()> {
    let me = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    match crate::host::subids::SubIds::of_this_user().filter(|_| me.0 != 0) {
        Some(sub) => crate::supervisor::userns::MappedNamespace::make(me, sub)?.remove_tree(trash),
        None => Ok(crate::fs::Tree::open(&paths.state_dir)?
            .remove(trash.strip_prefix(&paths.state_dir).expect("the trash is in state"))?),
    }
}

/// Takes down what is left of VM `name`'s network (its supervisor died, or was killed, and
/// never did): its rules, tap and bridge, while its record and index claim still say they
/// are its own. Nothing of it up is no work; a failure is said and removal goes on, since
/// the next VM on the index removes what is left before it comes up (`net::host`).
fn take_network_down(privileges: &dyn Privileges, name: &VmName, config: &anyhow::Result<VmConfig>) {
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!(
                "warning: VM '{name}''s network, if it is up, is left to the next VM on its index: {error:#}"
            );
            return;
        }
    };
    // In this process's network namespace (sysfs shows its mounter's).
    if nix::net::if_::if_nametoindex(config.network.bridge.as_str()).is_err() {
        return;
    }
    if let Err(error) = privileges.network().down(config) {
        eprintln!("warning: VM '{name}''s network is left up: {error:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privileged::client::recording::Recorder;
    use crate::vm::fixtures::web;

    /// `rm` removes the VM's disk before its directory; a disk that cannot be removed
    /// keeps the VM.
    #[test]
    fn a_vm_goes_with_its_disk_and_stays_when_the_disk_cannot_go() {
        let (_dir, paths, name) = web();
        let refusing = Recorder::failing(&["disk-rm"]);
        assert!(remove(&paths, &refusing, &name, false).is_err());
        assert!(store::exists(&paths, &name));
        assert_eq!(refusing.calls(), ["disk-rm web"]);

        let recorder = Recorder::default();
        remove(&paths, &recorder, &name, false).unwrap();
        assert!(!store::exists(&paths, &name));
        assert_eq!(recorder.calls(), ["disk-rm web"]);
    }
}
