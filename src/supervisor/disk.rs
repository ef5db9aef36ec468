//! The supervisor's side of a VM's files disk (`state::disk`): at every start, the disk
//! mounted on the VM's `files/` (made at the first), and the trees a VM kept beside its
//! record before it had a disk moved onto it.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::config::vm::VmConfig;
use crate::privileged::client::Privileges;
use crate::state::disk::{files_dir, TREES};
use crate::state::Paths;
use crate::supervisor::launch::{RunAs, SCRATCH_LAYERS};
use crate::supervisor::userns::MappedNamespace;

/// Mounts `config`'s files disk (as `run_as`), then moves what it kept beside its record
/// onto it; says what it moved.
pub fn bring_up(
    paths: &Paths,
    privileges: &dyn Privileges,
    config: &VmConfig,
    run_as: &RunAs,
) -> anyhow::Result<Vec<&'static str>> {
    let vm_dir = paths.vm_dir(&config.name);
    let files = files_dir(&vm_dir);
    crate::state::paths::own_dir(&files, 0o700)?;
    privileges.disk().up(config)?;
    move_onto_disk(&vm_dir, &files, run_as).context("cannot move the VM's files onto its disk")
}

/// What the trees a VM made before limits kept beside its record take (MiB, as far as
/// this user can see them): its first limit must hold them.
pub fn kept_trees_mib(vm_dir: &Path) -> u64 {
    let found: Vec<_> = TREES.iter().map(|tree| vm_dir.join(tree)).filter(|tree| tree.exists()).collect();
    if found.is_empty() {
        return 0;
    }
    let output = Command::new("du").args(["-s", "-x", "-m", "-c", "--"]).args(&found).output();
    output
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines().last()?.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Moves each of [`TREES`] found in `vm_dir` onto the disk at `files` (copied whole, with
/// owners, modes and extended attributes, never following a symlink nor leaving the
/// tree's file system; then removed), and drops an old scratch layer.
fn move_onto_disk(vm_dir: &Path, files: &Path, run_as: &RunAs) -> anyhow::Result<Vec<&'static str>> {
    let found: Vec<&'static str> =
        TREES.iter().copied().filter(|tree| std::fs::symlink_metadata(vm_dir.join(tree)).is_ok()).collect();
    let vm = crate::fs::Tree::open(vm_dir)?;
    vm.remove(Path::new(SCRATCH_LAYERS))?;
    if found.is_empty() {
        return Ok(found);
    }
    let namespace = namespace_for(run_as)?;
    // Every tree copied before any goes: a copy that fails (a disk too small) loses nothing,
    // and the next start copies again over what it left.
    for tree in &found {
        copy_tree(&vm_dir.join(tree), &files.join(tree), namespace.as_ref()).with_context(|| {
            format!("cannot copy {tree}: give the VM a larger disk (`disk_mib` in its vm.toml) and start it again")
        })?;
    }
    for tree in &found {
        let from = vm_dir.join(tree);
        match &namespace {
            Some(namespace) => namespace.remove_tree(&from)?,
            None => vm.remove(Path::new(tree))?,
        }
    }
    Ok(found)
}

/// The namespace a user with subordinate ids copies and removes their VM's trees in: they
/// may hold files of those ids, which only it may touch.
pub fn namespace_for(run_as: &RunAs) -> anyhow::Result<Option<MappedNamespace>> {
    Ok(match run_as {
        RunAs::User { uid, gid, sub: Some(sub) } => Some(MappedNamespace::make((*uid, *gid), *sub)?),
        _ => None,
    })
}

/// Copies tree `from` to `to` (a new name) whole, with owners, modes and extended
/// attributes, never following a symlink nor leaving `from`'s file system; inside
/// `namespace` when given.
pub fn copy_tree(from: &Path, to: &Path, namespace: Option<&MappedNamespace>) -> anyhow::Result<()> {
    let mut copy = Command::new("cp");
    copy.args(["-a", "--one-file-system", "--no-target-directory", "--"]).arg(from).arg(to);
    match namespace {
        Some(namespace) => namespace.run(copy),
        None => {
            let output = copy.output().context("cannot run cp")?;
            if !output.status.success() {
                anyhow::bail!("cp: {}", String::from_utf8_lossy(&output.stderr).trim());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trees beside the record move whole, links as links, and an old scratch layer goes.
    #[test]
    fn kept_trees_move_onto_the_disk_and_nothing_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (vm_dir, files) = (dir.path().join("vm"), dir.path().join("vm/files"));
        std::fs::create_dir_all(vm_dir.join("etc")).unwrap();
        std::fs::create_dir_all(vm_dir.join("volumes/data/pg")).unwrap();
        std::fs::create_dir_all(vm_dir.join("scratch/upper")).unwrap();
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(vm_dir.join("etc/hostname"), "web").unwrap();
        std::fs::write(vm_dir.join("volumes/data/pg/PG_VERSION"), "15").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "host").unwrap();
        std::os::unix::fs::symlink(&outside, vm_dir.join("etc/planted")).unwrap();

        let moved = move_onto_disk(&vm_dir, &files, &RunAs::this_process()).unwrap();
        assert_eq!(moved, ["etc", "volumes"]);
        assert_eq!(std::fs::read_to_string(files.join("etc/hostname")).unwrap(), "web");
        assert_eq!(std::fs::read_to_string(files.join("volumes/data/pg/PG_VERSION")).unwrap(), "15");
        assert_eq!(std::fs::read_link(files.join("etc/planted")).unwrap(), outside);
        for gone in ["etc", "volumes", "scratch"] {
            assert!(std::fs::symlink_metadata(vm_dir.join(gone)).is_err(), "{gone} is still there");
        }
        // Nothing left: a second start moves nothing.
        assert!(move_onto_disk(&vm_dir, &files, &RunAs::this_process()).unwrap().is_empty());
    }
}
