//! The roots the helper works under. The installed ones are fixed (DESIGN §2): the helper
//! never takes them from its caller. `mvm`'s `state::Paths` holds the same three, taken
//! from the environment for the unprivileged side and its tests.

use std::path::{Path, PathBuf};

use mvm_base::name::VmName;

use crate::record::VM_CONFIG_FILE;

/// Default root of persistent per-VM state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/microvms";
/// Default root of per-VM runtime files.
pub const DEFAULT_RUN_DIR: &str = "/run/mvm";
/// Default host config file.
pub const DEFAULT_CONFIG: &str = "/etc/mvm/config.toml";

/// The roots of mvm's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// Persistent state: one directory per VM.
    pub state_dir: PathBuf,
    /// Runtime files: one directory per running VM.
    pub run_dir: PathBuf,
    /// The host config file.
    pub config_file: PathBuf,
}

impl Roots {
    /// The installed roots, whatever the environment says (for the setuid helper).
    pub fn installed() -> Roots {
        Roots {
            state_dir: DEFAULT_STATE_DIR.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
            config_file: DEFAULT_CONFIG.into(),
        }
    }

    /// Roots under one directory (for tests and benchmarks).
    pub fn under(root: &Path) -> Roots {
        Roots {
            state_dir: root.join("state"),
            run_dir: root.join("run"),
            config_file: root.join("config.toml"),
        }
    }

    /// A VM's persistent directory.
    pub fn vm_dir(&self, name: &VmName) -> PathBuf {
        self.state_dir.join(name.as_str())
    }

    /// A VM's `vm.toml`.
    pub fn vm_config(&self, name: &VmName) -> PathBuf {
        self.vm_dir(name).join(VM_CONFIG_FILE)
    }

    /// The network lock: beside the runtime root, not in it (`/run/mvm-network.lock`),
    /// where root alone can make files. Group members make entries in the runtime root,
    /// and one who made the lock file first would keep every VM's network from coming up.
    pub fn network_lock(&self) -> PathBuf {
        let name = self.run_dir.file_name().map_or_else(|| "mvm".into(), |name| name.to_string_lossy());
        self.run_dir.with_file_name(format!("{name}-network.lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock sits where root alone makes files (`/run`), not in the runtime root that
    /// group members write into.
    #[test]
    fn the_network_lock_is_beside_the_runtime_root() {
        let installed = Roots::installed();
        assert_eq!(installed.network_lock(), Path::new("/run/mvm-network.lock"));
        assert!(!installed.network_lock().starts_with(&installed.run_dir));
    }
}
