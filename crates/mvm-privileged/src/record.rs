//! What the helper reads: the parts of a VM's `vm.toml` and of the host config that its
//! requests act on, and nothing else. Both files are `mvm`'s (`config::vm::VmConfig`,
//! `config::host::HostConfig`), which hold these same fields with these same types, so
//! the two sides cannot read a file differently; the helper skips every other key.
//! A `vm.toml` is its owner's, who may write it by hand: the helper still bounds what
//! it makes from one ([`MAX_FORWARDS`]) and derives the VM's links from its index
//! (`helper::verified_record`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use mvm_base::addr::{AddressPool, Ipv4Net, VmNetwork};
use mvm_base::binaries::BinaryPaths;
use mvm_base::error::UserError;
use mvm_base::name::VmName;

use crate::forward::PortForward;

/// The file name of a VM's config inside its state directory.
pub const VM_CONFIG_FILE: &str = "vm.toml";

/// The most port forwards a VM has: each is firewall rules the setuid helper makes from
/// `vm.toml`, which its owner may write by hand.
pub const MAX_FORWARDS: usize = 256;

/// Refuses more than [`MAX_FORWARDS`] port forwards.
pub fn check_forward_count(count: usize) -> Result<(), UserError> {
    if count > MAX_FORWARDS {
        return Err(UserError::usage(format!("{count} port forwards; a VM has at most {MAX_FORWARDS}"))
            .hint("forward a range of ports to one service through the guest instead"));
    }
    Ok(())
}

/// `text` read as the TOML of a `T`; what is wrong with it is a usage error (the file is
/// the user's to fix). `mvm`'s own configs read theirs the same way.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, UserError> {
    toml::from_str(text).map_err(|error| UserError::usage(error.to_string().trim_end().to_string()))
}

/// The error for a VM that does not exist.
pub fn no_such_vm(name: &VmName) -> UserError {
    UserError::not_found(format!("no VM named '{name}'"))
        .hint(format!("`mvm list` shows the VMs; `mvm create {name}` makes this one"))
}

/// A VM as the helper sees it: its name, network, forwards, egress switches and disk limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: VmName,
    /// The disk limit in MiB (`disk::layout`); `None` for a VM made before limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// No egress at all.
    #[serde(default)]
    pub offline: bool,
    /// The guest may reach services on the host.
    #[serde(default)]
    pub host_access: bool,
    pub network: VmNetwork,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortForward>,
}

impl VmRecord {
    /// Parses `vm.toml` text, skipping what the helper does not use.
    pub fn parse(text: &str) -> Result<VmRecord, UserError> {
        let record: VmRecord = parse_toml(text)?;
        check_forward_count(record.ports.len())?;
        Ok(record)
    }
}

/// `[network]` of the host config: the address pool and the uplink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub pool: Ipv4Net,
    pub subnet_prefix: u8,
    pub uplink: Option<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            pool: Ipv4Net::new(std::net::Ipv4Addr::new(10, 200, 0, 0), 16).expect("valid default pool"),
            subnet_prefix: 24,
            uplink: None,
        }
    }
}

impl NetworkConfig {
    /// The address pool VM subnets are cut from.
    pub fn address_pool(&self) -> Result<AddressPool, UserError> {
        AddressPool::new(self.pool, self.subnet_prefix)
    }
}

/// The host config as the helper sees it: `[network]` and `[paths]`. Any other section
/// but mvm's `[defaults]` is an error, as it is for `mvm`: a mistyped `[network]` never
/// leaves the helper on the default pool.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostRecord {
    pub network: NetworkConfig,
    pub paths: BinaryPaths,
    /// `mvm`'s `[defaults]` (for new VMs), which the helper does not read.
    pub defaults: Option<toml::Table>,
}

impl HostRecord {
    /// Parses host config text, skipping the sections the helper does not use.
    pub fn parse(text: &str) -> Result<HostRecord, UserError> {
        let record: HostRecord = parse_toml(text)?;
        record.network.address_pool()?;
        Ok(record)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// VM `web` on index 4 of the default pool, forwarding 8080 to 3000 and 53/udp.
    pub(crate) fn sample() -> VmRecord {
        let pool = AddressPool::new("10.200.0.0/16".parse().unwrap(), 24).unwrap();
        VmRecord {
            name: "web".parse().unwrap(),
            disk_mib: Some(8192),
            offline: false,
            host_access: true,
            network: pool.vm(4).unwrap(),
            ports: vec!["8080:3000".parse().unwrap(), "53:53/udp".parse().unwrap()],
        }
    }

    /// Writes `record` as the `vm.toml` at `path`.
    pub(crate) fn save(record: &VmRecord, path: &std::path::Path) {
        std::fs::write(path, toml::to_string(record).unwrap()).unwrap();
    }

    #[test]
    fn a_record_skips_what_the_helper_does_not_use_but_bounds_the_forwards() {
        let text = "name = \"web\"\ncpus = 2\nmystery = true\n\n[network]\nindex = 4\nbridge = \"mvmbr4\"\n\
                    tap = \"mvmtap4\"\nsubnet = \"10.200.4.0/24\"\ngateway = \"10.200.4.1\"\n\
                    address = \"10.200.4.2\"\nmac = \"52:54:00:00:00:04\"\n";
        let record = VmRecord::parse(text).unwrap();
        assert_eq!((record.name.as_str(), record.network.index, record.offline), ("web", 4, false));
        let many: String = (1..=MAX_FORWARDS + 1)
            .map(|port| format!("[[ports]]\nhost = {}\nguest = 80\n", 10000 + port))
            .collect();
        let error = VmRecord::parse(&format!("{text}{many}")).unwrap_err();
        assert!(error.to_string().contains("at most 256"), "{error}");
    }

    #[test]
    fn the_host_record_reads_network_and_paths_and_checks_the_pool() {
        let record = HostRecord::parse("[defaults]\ncpus = 4\n[network]\npool = \"10.9.0.0/16\"\n").unwrap();
        assert_eq!(record.network.pool.to_string(), "10.9.0.0/16");
        assert!(HostRecord::parse("[network]\npoll = \"10.0.0.0/8\"").is_err(), "a typo in [network]");
        assert!(HostRecord::parse("[netwrok]\npool = \"10.9.0.0/16\"").is_err(), "a mistyped section");
        assert!(HostRecord::parse("[network]\nsubnet_prefix = 31").is_err(), "a pool that cuts no subnet");
    }
}
