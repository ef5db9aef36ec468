//! What backs `/dev/kvm`, if anything.
//!
//! Hardware virtualization comes from `kvm_intel` or `kvm_amd`. On some nested cloud
//! machines `/dev/kvm` is provided by `kvm_pvm` alone (no VMX/SVM in the CPU flags):
//! ordinary guest kernels hang or crash there, so mvm must fall back to QEMU with TCG
//! and say so. Modules show up under `/sys/module` whether loaded or built in.

use std::path::Path;

/// The kind of KVM the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmSupport {
    /// No `/dev/kvm`.
    Missing,
    /// `/dev/kvm` backed by hardware virtualization (`kvm_intel` or `kvm_amd`).
    Hardware { module: String },
    /// `/dev/kvm` backed only by `kvm_pvm`: ordinary guest kernels cannot run.
    PvmOnly,
    /// `/dev/kvm` exists but no known backing module is visible.
    Unknown,
    /// `/dev/kvm` can accelerate, but this process may not open it (a user outside its
    /// group, `kvm` on Debian).
    NoAccess,
}

impl KvmSupport {
    /// Whether ordinary guest kernels can run with KVM acceleration.
    pub fn can_accelerate(&self) -> bool {
        matches!(self, KvmSupport::Hardware { .. } | KvmSupport::Unknown)
    }
}

/// Inspects the host under `root` (`/` in production).
pub fn detect(root: &Path) -> KvmSupport {
    if !root.join("dev/kvm").exists() {
        return KvmSupport::Missing;
    }
    let module_present = |module: &str| root.join("sys/module").join(module).exists();
    if let Some(module) = ["kvm_intel", "kvm_amd"].into_iter().find(|m| module_present(m)) {
        return KvmSupport::Hardware { module: module.to_string() };
    }
    if module_present("kvm_pvm") {
        return KvmSupport::PvmOnly;
    }
    KvmSupport::Unknown
}

/// `kvm` as this process meets it: [`KvmSupport::NoAccess`] when it could accelerate
/// but `device` cannot be opened for reading and writing.
pub fn for_this_process(kvm: KvmSupport, device: &Path) -> KvmSupport {
    use nix::unistd::{access, AccessFlags};
    if kvm.can_accelerate() && access(device, AccessFlags::R_OK | AccessFlags::W_OK).is_err() {
        return KvmSupport::NoAccess;
    }
    kvm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_this_process_cannot_open_is_no_access() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("kvm");
        std::fs::write(&device, "").unwrap();
        let hardware = KvmSupport::Hardware { module: "kvm_intel".into() };
        assert_eq!(for_this_process(hardware.clone(), &device), hardware);
        assert_eq!(for_this_process(hardware, &dir.path().join("missing")), KvmSupport::NoAccess);
        assert_eq!(for_this_process(KvmSupport::PvmOnly, &dir.path().join("missing")), KvmSupport::PvmOnly);
    }

    fn host_with(entries: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for entry in entries {
            let path = root.path().join(entry);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            if entry.starts_with("dev/") {
                std::fs::write(&path, "").unwrap();
            } else {
                std::fs::create_dir_all(&path).unwrap();
            }
        }
        root
    }

    #[test]
    fn tells_the_kinds_apart() {
        assert_eq!(detect(host_with(&[]).path()), KvmSupport::Missing);
        assert_eq!(detect(host_with(&["sys/module/kvm_intel"]).path()), KvmSupport::Missing);
        assert_eq!(
            detect(host_with(&["dev/kvm", "sys/module/kvm", "sys/module/kvm_amd"]).path()),
            KvmSupport::Hardware { module: "kvm_amd".into() }
        );
        let pvm = detect(host_with(&["dev/kvm", "sys/module/kvm", "sys/module/kvm_pvm"]).path());
        assert_eq!(pvm, KvmSupport::PvmOnly);
        assert!(!pvm.can_accelerate());
        assert_eq!(detect(host_with(&["dev/kvm"]).path()), KvmSupport::Unknown);
    }
}
