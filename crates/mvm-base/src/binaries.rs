//! Finding the external programs mvm runs: the config's explicit path, else `PATH`, else
//! the places distributions install them outside `PATH`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::UserError;

/// `[paths]`: explicit locations of the binaries and kernel mvm uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BinaryPaths {
    pub cloud_hypervisor: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
    pub virtiofsd: Option<PathBuf>,
    pub vhost_device_vsock: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
}

/// An external program mvm depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    CloudHypervisor,
    Qemu,
    Virtiofsd,
    VhostDeviceVsock,
    Iptables,
    /// `mkfs.ext4`, which formats each VM's system disk.
    MkfsExt4,
    /// mmdebstrap, which builds images.
    Mmdebstrap,
    /// conntrack-tools' `conntrack`, which forgets a VM subnet's tracked connections.
    Conntrack,
}

impl Tool {
    /// Every tool, in the order `doctor` reports them.
    pub const ALL: [Tool; 8] = [
        Tool::CloudHypervisor,
        Tool::Qemu,
        Tool::Virtiofsd,
        Tool::VhostDeviceVsock,
        Tool::Iptables,
        Tool::Conntrack,
        Tool::MkfsExt4,
        Tool::Mmdebstrap,
    ];

    /// The program name looked up on `PATH`.
    pub fn program(self) -> &'static str {
        match self {
            Tool::CloudHypervisor => "cloud-hypervisor",
            Tool::Qemu => "qemu-system-x86_64",
            Tool::Virtiofsd => "virtiofsd",
            Tool::VhostDeviceVsock => "vhost-device-vsock",
            Tool::Iptables => "iptables",
            Tool::MkfsExt4 => "mkfs.ext4",
            Tool::Mmdebstrap => "mmdebstrap",
            Tool::Conntrack => "conntrack",
        }
    }

    /// Where distributions put the program outside `PATH`.
    fn fallbacks(self) -> &'static [&'static str] {
        match self {
            Tool::Virtiofsd => &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"],
            Tool::Iptables => &["/usr/sbin/iptables", "/sbin/iptables"],
            Tool::MkfsExt4 => &["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"],
            Tool::Conntrack => &["/usr/sbin/conntrack", "/sbin/conntrack"],
            _ => &[],
        }
    }

    fn configured(self, paths: &BinaryPaths) -> Option<&Path> {
        match self {
            Tool::CloudHypervisor => paths.cloud_hypervisor.as_deref(),
            Tool::Qemu => paths.qemu.as_deref(),
            Tool::Virtiofsd => paths.virtiofsd.as_deref(),
            Tool::VhostDeviceVsock => paths.vhost_device_vsock.as_deref(),
            Tool::Iptables | Tool::MkfsExt4 | Tool::Mmdebstrap | Tool::Conntrack => None,
        }
    }

    /// How to install the program.
    pub fn install_hint(self) -> &'static str {
        match self {
            Tool::CloudHypervisor => {
                "install cloud-hypervisor from its release page or your distribution, \
                 or use --hypervisor qemu"
            }
            Tool::Qemu => "apt-get install qemu-system-x86",
            Tool::Virtiofsd => "cargo install virtiofsd (needs libseccomp-dev and libcap-ng-dev)",
            Tool::VhostDeviceVsock => "cargo install vhost-device-vsock (needed by the QEMU backend)",
            Tool::Iptables => "apt-get install iptables",
            Tool::MkfsExt4 => "apt-get install e2fsprogs",
            Tool::Mmdebstrap => "apt-get install mmdebstrap (needed by `mvm image build` alone)",
            Tool::Conntrack => "apt-get install conntrack",
        }
    }

    /// Finds the program, or says what is missing and how to install it.
    pub fn find(self, paths: &BinaryPaths) -> Result<PathBuf, UserError> {
        self.find_in(paths, std::env::var_os("PATH"))
    }

    /// Like [`Tool::find`], searching `search_path` instead of the environment's `PATH`.
    pub fn find_in(self, paths: &BinaryPaths, search_path: Option<OsString>) -> Result<PathBuf, UserError> {
        if let Some(path) = self.configured(paths) {
            return if path.is_file() {
                Ok(path.to_path_buf())
            } else {
                Err(UserError::missing_dependency(format!(
                    "{} is configured at {}, which does not exist",
                    self.program(),
                    path.display()
                ))
                .hint("fix [paths] in /etc/mvm/config.toml"))
            };
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        which::which_in(self.program(), search_path, cwd)
            .ok()
            .or_else(|| self.fallbacks().iter().map(PathBuf::from).find(|path| path.is_file()))
            .ok_or_else(|| {
                UserError::missing_dependency(format!("{} not found on PATH", self.program()))
                    .hint(self.install_hint())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_wins_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("qemu");
        std::fs::write(&fake, "").unwrap();
        let mut paths = BinaryPaths { qemu: Some(fake.clone()), ..BinaryPaths::default() };
        assert_eq!(Tool::Qemu.find(&paths).unwrap(), fake);
        paths.qemu = Some(dir.path().join("missing"));
        let error = Tool::Qemu.find(&paths).unwrap_err();
        assert_eq!(error.kind(), crate::error::ExitCode::MissingDependency);
        assert!(error.to_string().contains("does not exist"));
    }

    #[test]
    fn finds_on_the_search_path_or_names_itself_and_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let search_path = Some(dir.path().as_os_str().to_owned());
        let error = Tool::CloudHypervisor.find_in(&BinaryPaths::default(), search_path.clone()).unwrap_err();
        assert!(error.to_string().contains("cloud-hypervisor not found on PATH"), "{error}");
        assert!(error.hint_text().unwrap().contains("--hypervisor qemu"));
        let binary = dir.path().join("cloud-hypervisor");
        std::fs::write(&binary, "").unwrap();
        std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(Tool::CloudHypervisor.find_in(&BinaryPaths::default(), search_path).unwrap(), binary);
    }
}
