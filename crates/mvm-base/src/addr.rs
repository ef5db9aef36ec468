//! Address arithmetic: the pool of VM subnets and what each VM index gets from it.
//!
//! The pool (default `10.200.0.0/16`) is cut into equal subnets (default `/24`). VM index
//! `i` owns subnet `i`: the host side of its bridge is the first address (the guest's
//! gateway), the guest the second. Interface names and the MAC derive from `i` alone.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::UserError;

/// An IPv4 network in CIDR form, with host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// A network; fails if `prefix > 32` or `addr` has host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix /{prefix} is larger than 32"));
        }
        let net = Ipv4Net { network: addr, prefix };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(format!(
                "{addr}/{prefix} has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(addr) & net.mask())
            ));
        }
        Ok(net)
    }

    /// The network address.
    pub fn network(self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// The netmask as a bit pattern.
    pub fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// The netmask in dotted form.
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The number of addresses in the network.
    pub fn size(self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// Whether `addr` lies inside the network.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(self, other: Ipv4Net) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The `n`-th address of the network (0 is the network address).
    pub fn nth(self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + n as u32))
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not in CIDR form (like 10.200.0.0/16)"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        Ipv4Net::new(addr, prefix)
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(net: Ipv4Net) -> String {
        net.to_string()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The pool VM subnets are cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    pool: Ipv4Net,
    subnet_prefix: u8,
}

impl AddressPool {
    /// A pool of `/subnet_prefix` subnets inside `pool`.
    pub fn new(pool: Ipv4Net, subnet_prefix: u8) -> Result<Self, UserError> {
        if subnet_prefix < pool.prefix() || subnet_prefix > 30 {
            return Err(UserError::usage(format!(
                "the per-VM subnet /{subnet_prefix} must lie between the pool's /{} and /30",
                pool.prefix()
            ))
            .hint("set network.subnet_prefix in the host config, e.g. 24"));
        }
        Ok(AddressPool { pool, subnet_prefix })
    }

    /// The whole pool.
    pub fn network(self) -> Ipv4Net {
        self.pool
    }

    /// How many VM subnets the pool holds (capped at 65536, the interface-name limit).
    pub fn capacity(self) -> u32 {
        (1u32 << (self.subnet_prefix - self.pool.prefix()).min(16)).min(MAX_VMS)
    }

    /// The addresses of VM index `index`, or `None` past the pool's end.
    pub fn vm(self, index: u32) -> Option<VmNetwork> {
        if index >= self.capacity() {
            return None;
        }
        let subnet_size = 1u64 << (32 - self.subnet_prefix);
        let base = self.pool.nth(u64::from(index) * subnet_size)?;
        let subnet = Ipv4Net::new(base, self.subnet_prefix).ok()?;
        Some(VmNetwork {
            index,
            subnet,
            gateway: subnet.nth(1)?,
            address: subnet.nth(2)?,
            mac: mac_for(index),
            bridge: format!("mvmbr{index}"),
            tap: format!("mvmtap{index}"),
        })
    }
}

/// The most VMs one host can hold: interface names `mvmtap65535` still fit 15 bytes.
pub const MAX_VMS: u32 = 65536;

/// The guest MAC for VM index `index`: locally administered, `02:6d:76` ("mv") then the index.
pub fn mac_for(index: u32) -> String {
    let [_, a, b, c] = index.to_be_bytes();
    format!("02:6d:76:{a:02x}:{b:02x}:{c:02x}")
}

/// A VM's network identity, fixed at create time and kept in `vm.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNetwork {
    /// The VM's index: the lowest free one when it was created.
    pub index: u32,
    /// The VM's subnet.
    pub subnet: Ipv4Net,
    /// The host side of the bridge; the guest's gateway.
    pub gateway: Ipv4Addr,
    /// The guest's address.
    pub address: Ipv4Addr,
    /// The guest's MAC address.
    pub mac: String,
    /// The host bridge's name.
    pub bridge: String,
    /// The tap device's name.
    pub tap: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_pool() -> AddressPool {
        AddressPool::new("10.200.0.0/16".parse().unwrap(), 24).unwrap()
    }

    #[test]
    fn index_maps_to_subnet_addresses_and_names() {
        let vm = default_pool().vm(3).unwrap();
        assert_eq!(vm.subnet.to_string(), "10.200.3.0/24");
        assert_eq!(vm.gateway, Ipv4Addr::new(10, 200, 3, 1));
        assert_eq!(vm.address, Ipv4Addr::new(10, 200, 3, 2));
        assert_eq!(vm.mac, "02:6d:76:00:00:03");
        assert_eq!((vm.bridge.as_str(), vm.tap.as_str()), ("mvmbr3", "mvmtap3"));
    }

    #[test]
    fn pool_capacity_and_end() {
        let pool = default_pool();
        assert_eq!(pool.capacity(), 256);
        assert_eq!(pool.vm(255).unwrap().address, Ipv4Addr::new(10, 200, 255, 2));
        assert!(pool.vm(256).is_none());
        let small = AddressPool::new("192.168.50.0/24".parse().unwrap(), 30).unwrap();
        assert_eq!(small.capacity(), 64);
        assert_eq!(small.vm(1).unwrap().gateway, Ipv4Addr::new(192, 168, 50, 5));
        let huge = AddressPool::new("10.0.0.0/8".parse().unwrap(), 30).unwrap();
        assert_eq!(huge.capacity(), MAX_VMS);
        let last = huge.vm(MAX_VMS - 1).unwrap();
        assert!(last.tap.len() <= 15 && last.bridge.len() <= 15);
        assert_eq!(last.mac, "02:6d:76:00:ff:ff");
    }

    #[test]
    fn parses_and_compares_networks() {
        let net: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        assert!(net.contains(Ipv4Addr::new(10, 200, 9, 9)));
        assert!(!net.contains(Ipv4Addr::new(10, 201, 0, 0)));
        assert!(net.overlaps("10.0.0.0/8".parse().unwrap()));
        assert!(net.overlaps("10.200.5.0/24".parse().unwrap()));
        assert!(!net.overlaps("192.168.0.0/16".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!("10.200.0.1/16".parse::<Ipv4Net>().unwrap_err().contains("host bits"));
        assert!("10.200.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.200.0.0/33".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn refuses_subnets_outside_the_pool_or_too_small() {
        let pool: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        assert!(AddressPool::new(pool, 15).is_err());
        assert!(AddressPool::new(pool, 31).is_err());
    }
}
