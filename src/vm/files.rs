//! A VM's files (the trees on its files disk, `state::disk`) for the commands that read
//! them: `diff`, `apply`, `discard`, `logs` of a process, `rm --keep-volumes`. A running
//! VM's disk is mounted already; a stopped VM's is mounted for as long as the command
//! needs it, under the VM's lifecycle lock (so no start mounts or unmounts it meanwhile),
//! and unmounted after.

use std::path::{Path, PathBuf};

use crate::config::vm::VmConfig;
use crate::privileged::client::{HostDisk, Privileges};
use crate::state::disk::{files_dir, image_exists, is_mounted};
use crate::state::lock::FileLock;
use crate::state::Paths;

/// A VM's files, mounted for as long as this lives.
pub struct Files {
    dir: PathBuf,
    /// Set when this mounted the disk: it unmounts it when dropped (unless the VM runs by
    /// then: its supervisor found it mounted and boots on it).
    mounted: Option<Mounted>,
}

/// A disk this mounted, with what unmounts it, and the lifecycle lock held meanwhile.
struct Mounted {
    paths: Paths,
    vm: VmConfig,
    disk: Box<dyn HostDisk>,
    _lock: Option<FileLock>,
}

impl Files {
    /// `vm`'s files. A VM never started has no disk: its (empty) `files/` is all there is.
    pub fn of(paths: &Paths, privileges: &dyn Privileges, vm: &VmConfig) -> anyhow::Result<Files> {
        let vm_dir = paths.vm_dir(&vm.name);
        if is_mounted(&vm_dir) || !image_exists(paths, vm) {
            return Ok(Files { dir: files_dir(&vm_dir), mounted: None });
        }
        let lock = FileLock::exclusive(&lifecycle_lock(paths, vm))?;
        Self::mount(paths, privileges, vm, Some(lock))
    }

    /// Like [`Files::of`], for a caller that holds the VM's lifecycle lock
    /// ([`lifecycle_lock`]) already.
    pub fn of_locked(paths: &Paths, privileges: &dyn Privileges, vm: &VmConfig) -> anyhow::Result<Files> {
        Self::mount(paths, privileges, vm, None)
    }

    fn mount(
        paths: &Paths,
        privileges: &dyn Privileges,
        vm: &VmConfig,
        lock: Option<FileLock>,
    ) -> anyhow::Result<Files> {
        let vm_dir = paths.vm_dir(&vm.name);
        let dir = files_dir(&vm_dir);
        // Started meanwhile (its supervisor mounted it), or never started.
        if is_mounted(&vm_dir) || !image_exists(paths, vm) {
            return Ok(Files { dir, mounted: None });
        }
        let mut disk = privileges.disk();
        disk.up(vm)?;
        Ok(Files { dir, mounted: Some(Mounted { paths: paths.clone(), vm: vm.clone(), disk, _lock: lock }) })
    }

    /// Where they are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The lock a VM's `start`, `stop` and these mounts take around changing its state.
pub fn lifecycle_lock(paths: &Paths, vm: &VmConfig) -> PathBuf {
    paths.vm_dir(&vm.name).join(".lifecycle.lock")
}

impl Drop for Files {
    fn drop(&mut self) {
        if let Some(Mounted { paths, vm, mut disk, _lock }) = self.mounted.take() {
            let running = crate::state::lock::RunLock::is_held(&paths.run_lock(&vm.name)).unwrap_or(true);
            if running {
                return;
            }
            if let Err(error) = disk.down(&vm) {
                eprintln!("warning: VM '{}''s disk stays mounted: {error:#}", vm.name);
            }
        }
    }
}
