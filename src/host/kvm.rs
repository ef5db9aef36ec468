//! What backs `/dev/kvm`, if anything.
//!
//! Hardware virtualization comes from `kvm_intel` or `kvm_amd`. On some nested cloud
//! machines `/dev/kvm` is provided by `kvm_pvm` alone (no VMX/SVM in the CPU flags):
//! ordinary guest kernels hang or crash there, so mvm must fall back to QEMU with TCG
//! and say so. Modules show up under `/sys/module` whether loaded or built in.

use std::path::Path;

use crate::config::vm::Hypervisor;
use crate::error::UserError;
use crate::vmm::Vmm;

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

/// The hypervisor a VM asking for `requested` runs on this host, and one line saying
/// which and why. An explicit cloud-hypervisor on a host whose KVM cannot run it fails at
/// once (exit 5) rather than booting a guest that hangs.
pub fn choose_hypervisor(
    requested: Hypervisor,
    kvm: &KvmSupport,
    cloud_hypervisor_installed: bool,
) -> Result<(Vmm, String), UserError> {
    let no_kvm = match kvm {
        KvmSupport::PvmOnly => Some("/dev/kvm is backed only by kvm_pvm, which cannot run ordinary kernels"),
        KvmSupport::Missing => Some("there is no /dev/kvm"),
        KvmSupport::NoAccess => Some(
            "you may not open /dev/kvm (join its group: `sudo usermod -aG kvm $USER`, then log in again)",
        ),
        KvmSupport::Hardware { .. } | KvmSupport::Unknown => None,
    };
    match (requested, no_kvm) {
        (Hypervisor::Qemu, _) => Ok((Vmm::Qemu, "hypervisor: qemu, as configured".into())),
        (Hypervisor::CloudHypervisor, Some(why)) => Err(UserError::missing_dependency(format!(
            "cloud-hypervisor needs hardware KVM, and {why}"
        ))
        .hint("use --hypervisor auto (QEMU with TCG here) or qemu, or set defaults.hypervisor in /etc/mvm/config.toml")),
        (Hypervisor::CloudHypervisor, None) => {
            Ok((Vmm::CloudHypervisor, "hypervisor: cloud-hypervisor, as configured".into()))
        }
        (Hypervisor::Auto, None) if cloud_hypervisor_installed => {
            Ok((Vmm::CloudHypervisor, "hypervisor: cloud-hypervisor (auto: hardware KVM works)".into()))
        }
        (Hypervisor::Auto, None) => {
            Ok((Vmm::Qemu, "hypervisor: qemu (auto: cloud-hypervisor is not installed)".into()))
        }
        (Hypervisor::Auto, Some(why)) => Ok((Vmm::Qemu, format!("hypervisor: qemu with TCG (auto: {why})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_cloud_hypervisor_only_where_it_can_run() {
        let hardware = KvmSupport::Hardware { module: "kvm_intel".into() };
        let pick = |requested, kvm: &KvmSupport, installed| choose_hypervisor(requested, kvm, installed);
        assert_eq!(pick(Hypervisor::Auto, &hardware, true).unwrap().0, Vmm::CloudHypervisor);
        let (qemu, why) = pick(Hypervisor::Auto, &hardware, false).unwrap();
        assert_eq!(qemu, Vmm::Qemu);
        assert!(why.contains("cloud-hypervisor is not installed"), "{why}");
        let (tcg, why) = pick(Hypervisor::Auto, &KvmSupport::PvmOnly, true).unwrap();
        assert_eq!(tcg, Vmm::Qemu);
        assert!(why.contains("TCG") && why.contains("kvm_pvm"), "{why}");
        let refused = pick(Hypervisor::CloudHypervisor, &KvmSupport::PvmOnly, true).unwrap_err();
        assert_eq!(refused.kind(), crate::error::ExitCode::MissingDependency);
        assert!(refused.to_string().contains("needs hardware KVM"), "{refused}");
        assert_eq!(pick(Hypervisor::Qemu, &KvmSupport::Missing, false).unwrap().0, Vmm::Qemu);
        // A member outside /dev/kvm's group: QEMU emulates, and cloud-hypervisor says why.
        let (tcg, why) = pick(Hypervisor::Auto, &KvmSupport::NoAccess, true).unwrap();
        assert_eq!(tcg, Vmm::Qemu);
        assert!(why.contains("may not open /dev/kvm"), "{why}");
        let refused = pick(Hypervisor::CloudHypervisor, &KvmSupport::NoAccess, true).unwrap_err();
        assert!(refused.to_string().contains("usermod -aG kvm"), "{refused}");
    }

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
