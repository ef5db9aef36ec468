//! The host config, `/etc/mvm/config.toml` (optional; `MVM_CONFIG` overrides the path).
//!
//! ```toml
//! [network]
//! pool = "10.200.0.0/16"   # where VM subnets come from
//! subnet_prefix = 24       # one /24 per VM
//! uplink = "eth0"          # default: the interface of the default route
//!
//! [defaults]
//! hypervisor = "auto"      # or "cloud-hypervisor", "qemu"
//! cpus = 2
//! memory = "1G"
//! disk = "20G"             # each VM's disk limit: everything its guest writes on the host
//! accel = "auto"           # QEMU: auto, kvm or tcg
//!
//! [paths]                  # default: found on PATH
//! cloud_hypervisor = "/usr/local/bin/cloud-hypervisor"
//! qemu = "/usr/bin/qemu-system-x86_64"
//! virtiofsd = "/usr/libexec/virtiofsd"
//! vhost_device_vsock = "/usr/local/bin/vhost-device-vsock"
//! kernel = "/boot/vmlinuz-6.1.0-28-amd64"
//! ```
//!
//! Unknown keys are errors, so a typo does not silently fall back to a default.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::addr::AddressPool;
use crate::config::vm::Hypervisor;
use crate::error::UserError;
use crate::host::binaries::BinaryPaths;
use crate::spec::{DiskSize, MemorySize, PortRange};
use mvm_privileged::disk::layout::DEFAULT_DISK_MIB;
use mvm_privileged::record::NetworkConfig;

/// The parsed host config; every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    pub network: NetworkConfig,
    pub defaults: Defaults,
    pub paths: BinaryPaths,
}

/// `[defaults]`: what `create` uses when a flag is not given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub hypervisor: Hypervisor,
    pub cpus: u32,
    #[serde(deserialize_with = "deserialize_memory")]
    pub memory: MemorySize,
    /// Each new VM's disk limit (`state::disk`).
    #[serde(deserialize_with = "deserialize_disk")]
    pub disk: DiskSize,
    /// QEMU acceleration: `auto` (KVM where it can run ordinary kernels), `kvm` or `tcg`.
    pub accel: Option<String>,
    /// Forward every port a guest listens on from the host's loopback by itself.
    pub auto_ports: bool,
    /// Guest ports never forwarded by themselves, on every VM.
    pub auto_ports_ignore: Vec<PortRange>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            hypervisor: Hypervisor::Auto,
            cpus: 2,
            memory: MemorySize::from_mib(1024),
            disk: DiskSize::from_mib(DEFAULT_DISK_MIB),
            accel: None,
            auto_ports: true,
            auto_ports_ignore: Vec::new(),
        }
    }
}

fn deserialize_disk<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<DiskSize, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn deserialize_memory<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<MemorySize, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl HostConfig {
    /// Reads the config at `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> anyhow::Result<HostConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(HostConfig::default()),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read host config {}", path.display()))
            }
        };
        Self::parse(&text).with_context(|| format!("invalid host config {}", path.display()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> anyhow::Result<HostConfig> {
        let config: HostConfig = mvm_privileged::record::parse_toml(text).map_err(|error| {
            error.hint("fix the file, or see the [network], [defaults] and [paths] keys in `man mvm`")
        })?;
        config.address_pool()?;
        if let Some(accel) = config.defaults.accel.as_deref().filter(|a| !["auto", "kvm", "tcg"].contains(a))
        {
            return Err(UserError::usage(format!(
                "defaults.accel is {accel:?}; it must be auto, kvm or tcg"
            ))
            .into());
        }
        Ok(config)
    }

    /// The address pool VM subnets are cut from.
    pub fn address_pool(&self) -> Result<AddressPool, UserError> {
        self.network.address_pool()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let config = HostConfig::parse("").unwrap();
        assert_eq!(config, HostConfig::default());
        assert_eq!(config.address_pool().unwrap().capacity(), 256);
        assert_eq!(config.defaults.memory.mib(), 1024);
    }

    /// Every section `mvm` reads; the helper reads the same file (`record::HostRecord`).
    const EVERY_SECTION: &str = r#"
            [network]
            pool = "172.30.0.0/16"
            subnet_prefix = 28
            uplink = "enp1s0"
            [defaults]
            hypervisor = "qemu"
            cpus = 4
            memory = "2G"
            [paths]
            virtiofsd = "/usr/libexec/virtiofsd"
            "#;

    #[test]
    fn reads_every_section() {
        let config = HostConfig::parse(EVERY_SECTION).unwrap();
        assert_eq!(config.network.pool.to_string(), "172.30.0.0/16");
        assert_eq!(config.address_pool().unwrap().capacity(), 4096);
        assert_eq!(config.network.uplink.as_deref(), Some("enp1s0"));
        assert_eq!(config.defaults.hypervisor, Hypervisor::Qemu);
        assert_eq!((config.defaults.cpus, config.defaults.memory.mib()), (4, 2048));
        assert_eq!(config.paths.virtiofsd.as_deref(), Some(Path::new("/usr/libexec/virtiofsd")));
    }

    /// The helper reads the network `mvm` reads, from any file `mvm` accepts (the default
    /// one `mvm setup` writes included), and refuses a misspelt section `mvm` refuses.
    #[test]
    fn the_helper_reads_the_same_network() {
        for text in ["", EVERY_SECTION, crate::setup::DEFAULT_CONFIG, "[defaults]\ncpus = 8\n"] {
            let helper = mvm_privileged::record::HostRecord::parse(text).unwrap();
            assert_eq!(helper.network, HostConfig::parse(text).unwrap().network, "{text}");
        }
        assert!(mvm_privileged::record::HostRecord::parse("[netwrok]\npool = \"10.9.0.0/16\"\n").is_err());
        assert!(HostConfig::parse("[netwrok]\npool = \"10.9.0.0/16\"\n").is_err());
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        for (text, why) in [
            ("[network]\npoll = \"10.0.0.0/8\"", "unknown field"),
            ("[network]\npool = \"10.0.0.1/8\"", "host bits"),
            ("[network]\nsubnet_prefix = 31", "/30"),
            ("[defaults]\nmemory = \"1X\"", "invalid memory size"),
            ("[defaults]\ndisk = \"1G\"", "below the minimum"),
            ("[defaults]\nhypervisor = \"firecracker\"", "unknown variant"),
        ] {
            let error = format!("{:#}", HostConfig::parse(text).unwrap_err());
            assert!(error.contains(why), "{text:?}: {error}");
        }
    }

    #[test]
    fn missing_file_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HostConfig::load(&dir.path().join("none.toml")).unwrap(), HostConfig::default());
    }
}
