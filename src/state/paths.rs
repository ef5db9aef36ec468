//! The filesystem roots mvm uses, injected everywhere so tests can point them at temp dirs.
//!
//! Defaults follow DESIGN §2; `MVM_STATE_DIR`, `MVM_RUN_DIR` and `MVM_CONFIG` override them.

use std::path::{Path, PathBuf};

use crate::name::VmName;
use crate::runtime::AGENT_SOCKET;

pub use mvm_privileged::roots::{Roots, DEFAULT_CONFIG, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR};

/// The roots of mvm's files (the privileged part's [`Roots`], with what mvm keeps under them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Persistent state: one directory per VM.
    pub state_dir: PathBuf,
    /// Runtime files: one directory per running VM.
    pub run_dir: PathBuf,
    /// The host config file.
    pub config_file: PathBuf,
}

impl From<Roots> for Paths {
    fn from(roots: Roots) -> Paths {
        Paths { state_dir: roots.state_dir, run_dir: roots.run_dir, config_file: roots.config_file }
    }
}

impl Paths {
    /// The roots from the environment, falling back to the defaults.
    pub fn from_env() -> Paths {
        let var = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Paths {
            state_dir: var("MVM_STATE_DIR", DEFAULT_STATE_DIR),
            run_dir: var("MVM_RUN_DIR", DEFAULT_RUN_DIR),
            config_file: var("MVM_CONFIG", DEFAULT_CONFIG),
        }
    }

    /// The installed roots, whatever the environment says.
    pub fn installed() -> Paths {
        Roots::installed().into()
    }

    /// Roots under one directory (for tests and benchmarks).
    pub fn under(root: &Path) -> Paths {
        Roots::under(root).into()
    }

    /// The same roots, as the privileged part takes them.
    pub fn roots(&self) -> Roots {
        Roots {
            state_dir: self.state_dir.clone(),
            run_dir: self.run_dir.clone(),
            config_file: self.config_file.clone(),
        }
    }

    /// The lock taken around index allocation in `create`.
    pub fn create_lock(&self) -> PathBuf {
        self.state_dir.join(".create.lock")
    }

    /// The lock `mvm up` holds while it creates and starts VM `name`.
    pub fn up_lock(&self, name: &VmName) -> PathBuf {
        self.run_dir.join(format!(".up-{name}.lock"))
    }

    /// This user's cache (the initramfs base): one per user, since each user's VMs
    /// must trust only what that user made.
    pub fn user_cache(&self) -> PathBuf {
        self.state_dir.join(".cache").join(format!("uid-{}", nix::unistd::geteuid()))
    }

    /// A VM's persistent directory.
    pub fn vm_dir(&self, name: &VmName) -> PathBuf {
        self.state_dir.join(name.as_str())
    }

    /// A VM's `vm.toml`.
    pub fn vm_config(&self, name: &VmName) -> PathBuf {
        self.vm_dir(name).join(crate::config::vm::VM_CONFIG_FILE)
    }

    /// Where `mvm rm --keep-volumes` keeps VM `name`'s volumes; `create` takes them back.
    pub fn kept_volumes(&self, name: &VmName) -> PathBuf {
        self.state_dir.join(".kept-volumes").join(name.as_str())
    }

    /// A VM's runtime directory.
    pub fn vm_run_dir(&self, name: &VmName) -> PathBuf {
        self.run_dir.join(name.as_str())
    }

    /// The lock a VM's supervisor holds for as long as it lives.
    pub fn run_lock(&self, name: &VmName) -> PathBuf {
        self.vm_run_dir(name).join(crate::runtime::LOCK_FILE)
    }

    /// The log a VM's supervisor writes (its stderr).
    pub fn supervisor_log(&self, name: &VmName) -> PathBuf {
        self.vm_dir(name).join("log/supervisor.log")
    }

    /// The hybrid vsock socket of a VM's guest agent (`agent::client`).
    pub fn agent_socket(&self, name: &VmName) -> PathBuf {
        self.vm_run_dir(name).join(AGENT_SOCKET)
    }
}

/// Makes one of mvm's roots if missing; a caller who may not is told how to get there.
pub fn ensure_root(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    match std::fs::create_dir_all(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(crate::error::UserError::needs_root(format!("cannot create {}: permission denied", dir.display()))
                .hint("run `sudo mvm setup` once (then join its group), or set MVM_STATE_DIR and MVM_RUN_DIR to directories you own")
                .into())
        }
        result => result.with_context(|| format!("cannot create {}", dir.display())),
    }
}

/// Makes directory `path` this user's own (mode `mode`) if missing; if it exists, it must
/// be a directory (not a symlink) that belongs to this user, since one user can make a
/// directory in a shared root under a name another user's VM will use.
pub fn own_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me {
        return Err(crate::error::UserError::conflict(format!(
            "{} is not a directory of yours (uid {me}); it belongs to uid {}",
            path.display(),
            meta.uid()
        ))
        .hint("someone made it in your VM's place; root can remove it")
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_vm_paths_hang_off_the_roots() {
        let paths = Paths::under(Path::new("/tmp/x"));
        let web: VmName = "web".parse().unwrap();
        assert_eq!(paths.vm_config(&web), Path::new("/tmp/x/state/web/vm.toml"));
        assert_eq!(paths.run_lock(&web), Path::new("/tmp/x/run/web/lock"));
        assert_eq!(paths.create_lock(), Path::new("/tmp/x/state/.create.lock"));
    }
}
