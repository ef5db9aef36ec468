//! What the host tells the guest init about the VM: shares to mount, the root model,
//! the hostname, the processes. Written by the supervisor into each boot's initramfs as
//! `/mvm/guest.json`; the network comes on the kernel command line (`mvm.net=`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The serial of the disk that holds a VM's system layer (`state::system_disk`).
pub const SYSTEM_DISK_SERIAL: &str = "mvm-system";

/// The serial of the read-only disk that holds an image's tree (`image`).
pub const IMAGE_DISK_SERIAL: &str = "mvm-image";

/// The guest's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    pub hostname: String,
    pub root: GuestRoot,
    /// Shares mounted after the root is assembled, in order (project, volumes).
    pub mounts: Vec<GuestMount>,
    /// Processes to start at boot, with their working directory and environment resolved.
    #[serde(default)]
    pub processes: Vec<crate::config::vm::Process>,
}

/// How the guest's root is assembled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestRoot {
    /// The host's `/usr` (tag `usr`, read-only) under the VM's system layer (the disk
    /// with serial [`SYSTEM_DISK_SERIAL`], which also holds `/` itself), the VM's own
    /// `/etc` and `/var` (tags `etc`, `var`), the host's package database under the
    /// VM's (tag `dpkg`) when `dpkg` is set, and `/nix/store` (tag `nix`) when `nix` is.
    Host { nix: bool, dpkg: bool },
    /// A whole tree (tag `root`), assembled on the host.
    Dir,
    /// An image's tree (the read-only disk with serial [`IMAGE_DISK_SERIAL`]) under the
    /// VM's system layer, which is the whole root; the VM's `var` share serves only
    /// `/var/log/mvm`.
    Image,
}

/// Where the guest mounts a share that its own overlay takes as a layer
/// (`SHARES_MOUNT/TAG`).
pub const SHARES_MOUNT: &str = "/run/mvm/shares";

/// A virtio-fs share and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMount {
    pub tag: String,
    pub path: String,
    pub read_only: bool,
    /// The tag of the share holding `upper/` and `work/` of an overlay the guest mounts
    /// at `path`, with this share (read-only, at `SHARES_MOUNT/TAG`) beneath them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
}

impl GuestMount {
    /// Where the guest mounts the share itself: at `path`, or beneath its overlay.
    pub fn share_path(&self) -> String {
        match self.layer {
            Some(_) => format!("{SHARES_MOUNT}/{}", self.tag),
            None => self.path.clone(),
        }
    }
}

/// The guest's network, as carried by `mvm.net=ADDRESS/PREFIX,GATEWAY[,DNS…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
}

impl GuestNetwork {
    /// The kernel command-line parameter.
    pub fn to_cmdline(&self) -> String {
        let mut text = format!("mvm.net={}/{},{}", self.address, self.prefix, self.gateway);
        for dns in &self.dns {
            text.push_str(&format!(",{dns}"));
        }
        text
    }

    /// Finds and parses `mvm.net=` in a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Option<GuestNetwork> {
        let value = cmdline.split_whitespace().find_map(|word| word.strip_prefix("mvm.net="))?;
        let mut parts = value.split(',');
        let (address, prefix) = parts.next()?.split_once('/')?;
        Some(GuestNetwork {
            address: address.parse().ok()?,
            prefix: prefix.parse().ok()?,
            gateway: parts.next()?.parse().ok()?,
            dns: parts.filter_map(|dns| dns.parse().ok()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_round_trips_through_the_cmdline() {
        let network = GuestNetwork {
            address: Ipv4Addr::new(10, 200, 3, 2),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 200, 3, 1),
            dns: vec![Ipv4Addr::new(9, 9, 9, 9)],
        };
        let cmdline = format!("console=ttyS0 {} quiet", network.to_cmdline());
        assert!(cmdline.contains("mvm.net=10.200.3.2/24,10.200.3.1,9.9.9.9"));
        assert_eq!(GuestNetwork::from_cmdline(&cmdline), Some(network));
        assert_eq!(GuestNetwork::from_cmdline("console=ttyS0"), None);
    }
}
