//! Which hypervisor a VM runs on this host: cloud-hypervisor where hardware KVM works and
//! it is installed, else QEMU (with TCG where KVM cannot run ordinary kernels).

use crate::config::vm::Hypervisor;
use crate::error::UserError;
use crate::host::kvm::KvmSupport;
use crate::vmm::Vmm;

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
}
