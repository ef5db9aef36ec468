//! Bringing a VM's host-side network up and down, under the network lock.
//!
//! Up: check the pool against the host's routes and the VM's claim on its index, remove
//! what an earlier holder of the index left (links, rules, tracked connections), enable
//! forwarding, make the bridge (named for the VM and its owner in its alias; gateway
//! address, no IPv6, `route_localnet` for localhost forwards), make the tap and enslave
//! it, converge the firewall. Every step looks before it acts, so `up` is idempotent and
//! finishes the job after a crash half-way. Down removes exactly that VM's links and
//! rules.

use std::path::PathBuf;

use anyhow::Context;
use mvm_base::error::UserError;
use mvm_base::lock::FileLock;

use crate::claims;
use crate::net::firewall::{self, FirewallBackend, FirewallState, Iptables};
use crate::net::kernel::{HostKernel, Kernel};
use crate::net::netlink::Link;
use crate::net::plan::{HostNetwork, VmFirewall};
use crate::record::{NetworkConfig, VmRecord};
use crate::roots::Roots;

/// Prefixes of the links mvm makes.
pub const LINK_PREFIXES: [&str; 2] = ["mvmbr", "mvmtap"];

/// The host side of VM networking.
pub struct HostNet {
    kernel: Box<dyn Kernel>,
    firewall: Box<dyn FirewallBackend>,
    host: HostNetwork,
    /// The user whose VM this is, when not root's: its tap is theirs, and no link of
    /// another user's is touched.
    tap_owner: Option<u32>,
    /// Where the index claims are (`claims`).
    state_dir: PathBuf,
    _lock: FileLock,
}

impl HostNet {
    /// Takes the network lock and opens netlink in the calling thread's namespace.
    pub fn open(roots: &Roots, network: &NetworkConfig) -> anyhow::Result<HostNet> {
        if !nix::unistd::geteuid().is_root() {
            return Err(UserError::needs_root("changing host networking needs root")
                .hint("run mvm with sudo")
                .into());
        }
        Self::with(roots, network, Box::new(HostKernel::open()?), Box::new(Iptables))
    }

    /// Like [`HostNet::open`] over another kernel and firewall (unit tests: fakes).
    pub(crate) fn with(
        roots: &Roots,
        network: &NetworkConfig,
        kernel: Box<dyn Kernel>,
        firewall: Box<dyn FirewallBackend>,
    ) -> anyhow::Result<HostNet> {
        let lock = FileLock::exclusive_private(&roots.network_lock())?;
        Ok(HostNet {
            kernel,
            firewall,
            host: HostNetwork { pool: network.pool, uplink: network.uplink.clone() },
            tap_owner: None,
            state_dir: roots.state_dir.clone(),
            _lock: lock,
        })
    }

    /// Acts for user `uid`'s VM: its tap becomes theirs, and a tap of the same name
    /// that belongs to someone else is neither used nor removed.
    pub fn for_user(mut self, uid: u32) -> HostNet {
        self.tap_owner = Some(uid);
        self
    }

    /// The uid the VM's links are made for: its owner's (0 for root's).
    fn owner(&self) -> u32 {
        self.tap_owner.unwrap_or(0)
    }

    /// Refuses VM `vm` unless its index is claimed for it by this caller (`claims`):
    /// what is on that index then is this VM's, or left by an earlier holder.
    fn check_claim(&self, vm: &VmRecord) -> anyhow::Result<()> {
        let index = vm.network.index;
        match claims::holder(&self.state_dir, index) {
            Some((holder, owner)) if holder == vm.name.as_str() && owner == self.owner() => Ok(()),
            _ => Err(UserError::conflict(format!(
                "VM '{}''s network index {index} is not claimed for it by you",
                vm.name
            ))
            .hint(format!("remove the VM and create it again: `mvm rm {}`", vm.name))
            .into()),
        }
    }

    /// Whether `link` was made for VM `vm` of this caller's (a bridge's alias, a tap's
    /// owner); `unnamed` is the answer for a bridge with no alias (made before aliases).
    fn is_for(&self, vm: &VmRecord, link: &Link, unnamed: bool) -> bool {
        if link.name == vm.network.tap {
            return link.tun_owner == self.tap_owner;
        }
        match &link.alias {
            Some(alias) => *alias == bridge_alias(vm, self.owner()),
            None => unnamed,
        }
    }

    /// Brings VM `vm`'s bridge, tap and rules up (idempotent). Whatever an earlier holder
    /// of its index left there — a bridge made for another VM or owner, with the sockets
    /// bound to it; another user's tap; rules naming its links or addresses — goes first.
    pub fn up(&mut self, vm: &VmRecord) -> anyhow::Result<()> {
        self.check_pool()?;
        self.check_claim(vm)?;
        self.kernel.set_sysctl("net.ipv4.ip_forward", "1")?;
        let network = &vm.network;
        let left: Vec<Link> = [&network.bridge, &network.tap]
            .into_iter()
            .filter_map(|name| self.kernel.link(name).transpose())
            .collect::<anyhow::Result<_>>()?;
        let bridge_is_ours =
            left.iter().all(|link| link.name != network.bridge || self.is_for(vm, link, false));
        for link in &left {
            if !bridge_is_ours || !self.is_for(vm, link, false) {
                self.kernel
                    .delete(link.index)
                    .with_context(|| format!("cannot remove the leftover {}", link.name))?;
            }
        }
        // Before anything can reach the address again: connections of its last holder's.
        self.kernel.forget_connections(network)?;
        let bridge = match self.kernel.link(&network.bridge)? {
            Some(link) => link,
            None => {
                self.kernel.add_bridge(&network.bridge)?;
                let bridge = self.require_link(&network.bridge)?;
                self.kernel.set_alias(bridge.index, &bridge_alias(vm, self.owner()))?;
                bridge
            }
        };
        self.kernel.set_interface_sysctl("ipv6", &network.bridge, "disable_ipv6", "1")?;
        self.kernel.set_interface_sysctl("ipv4", &network.bridge, "route_localnet", "1")?;
        self.kernel.set_address(bridge.index, network.gateway, network.subnet.prefix())?;
        self.kernel.set_up(bridge.index)?;
        self.kernel.create_tap(&network.tap, self.tap_owner)?;
        let tap = self.require_link(&network.tap)?;
        self.kernel.set_interface_sysctl("ipv6", &network.tap, "disable_ipv6", "1")?;
        if tap.controller != Some(bridge.index) {
            self.kernel.attach_and_up(tap.index, bridge.index)?;
        } else {
            self.kernel.set_up(tap.index)?;
        }
        self.update_rules(vm)?;
        Ok(())
    }

    /// Refuses to act for VM `vm` unless its tap is this caller's, up and on a bridge
    /// made for it: what the DNS sockets (bound to that bridge) are handed out for.
    pub fn check_live(&self, vm: &VmRecord) -> anyhow::Result<()> {
        self.check_claim(vm)?;
        let bridge = self.kernel.link(&vm.network.bridge)?.filter(|link| self.is_for(vm, link, false));
        let tap = self.kernel.link(&vm.network.tap)?.filter(|link| self.is_for(vm, link, false));
        match (bridge, tap) {
            (Some(bridge), Some(tap)) if tap.controller == Some(bridge.index) => Ok(()),
            _ => Err(UserError::conflict(format!("VM '{}''s network is not up", vm.name))
                .hint(format!("start it: `mvm start {}`", vm.name))
                .into()),
        }
    }

    /// Converges VM `vm`'s firewall rules to its config (after a port change).
    pub fn update_rules(&mut self, vm: &VmRecord) -> anyhow::Result<bool> {
        self.check_claim(vm)?;
        // Two DNATs of one port would let the first VM take the other's connections.
        let state = FirewallState::read(self.firewall.as_mut())?;
        for forward in &vm.ports {
            if let Some(other) = state.forwarders(forward, vm.name.as_str()).first() {
                return Err(UserError::conflict(format!(
                    "host port {}/{} is forwarded to VM '{other}' already",
                    forward.host, forward.protocol
                ))
                .hint(format!(
                    "pick another host port: `mvm port {} --rm {}` and add a free one",
                    vm.name, forward.host
                ))
                .into());
            }
        }
        let rules = VmFirewall { owner: self.tap_owner, ..VmFirewall::of(vm) };
        firewall::converge_vm(self.firewall.as_mut(), &state, &self.host, &rules)
            .with_context(|| format!("cannot set up firewall rules for VM '{}'", vm.name))
    }

    /// Removes VM `vm`'s rules, and its tap and bridge when they were made for it (a link
    /// of another VM's or user's on its index is left alone); whatever is already gone is
    /// skipped.
    pub fn down(&mut self, vm: &VmRecord) -> anyhow::Result<()> {
        self.check_claim(vm)?;
        self.remove_rules(vm.name.as_str())?;
        self.kernel.forget_connections(&vm.network)?;
        for name in [&vm.network.tap, &vm.network.bridge] {
            if let Some(link) = self.kernel.link(name)?.filter(|link| self.is_for(vm, link, true)) {
                self.kernel.delete(link.index)?;
            }
        }
        Ok(())
    }

    fn remove_rules(&mut self, name: &str) -> anyhow::Result<()> {
        firewall::remove_vm(self.firewall.as_mut(), name)
            .with_context(|| format!("cannot remove firewall rules of VM '{name}'"))
            .map(drop)
    }

    fn delete_links(&mut self, names: &[&str]) -> anyhow::Result<()> {
        for name in names {
            if let Some(link) = self.kernel.link(name)? {
                self.kernel.delete(link.index)?;
            }
        }
        Ok(())
    }

    fn require_link(&self, name: &str) -> anyhow::Result<Link> {
        self.kernel.link(name)?.with_context(|| format!("link {name} vanished right after it was made"))
    }

    /// Refuses a pool that overlaps a route of the host's that is not mvm's own.
    pub fn check_pool(&self) -> anyhow::Result<()> {
        let links = self.kernel.links()?;
        let name_of = |index: Option<u32>| {
            index
                .and_then(|index| links.iter().find(|link| link.index == index))
                .map(|link| link.name.clone())
        };
        for route in self.kernel.routes()? {
            let device = name_of(route.device).unwrap_or_default();
            if route.destination.prefix() == 0 || is_mvm_link(&device) {
                continue;
            }
            if route.destination.overlaps(self.host.pool) {
                return Err(UserError::conflict(format!(
                    "the VM address pool {} overlaps the host route {} on {}",
                    self.host.pool,
                    route.destination,
                    if device.is_empty() { "an unknown device" } else { &device }
                ))
                .hint("set network.pool in /etc/mvm/config.toml to an unused range, e.g. 10.201.0.0/16")
                .into());
            }
        }
        Ok(())
    }

    /// The interface of the default route, if any.
    pub fn default_uplink(&self) -> anyhow::Result<Option<String>> {
        let links = self.kernel.links()?;
        Ok(self
            .kernel
            .routes()?
            .into_iter()
            .find(|route| route.destination.prefix() == 0)
            .and_then(|route| route.device)
            .and_then(|index| links.into_iter().find(|link| link.index == index))
            .map(|link| link.name))
    }

    /// mvm's links and rule owners that belong to no running VM.
    pub fn orphans(&mut self, running: &[VmRecord]) -> anyhow::Result<Orphans> {
        let links = self
            .kernel
            .links()?
            .into_iter()
            .map(|link| link.name)
            .filter(|name| is_mvm_link(name))
            .filter(|name| !running.iter().any(|vm| vm.network.bridge == *name || vm.network.tap == *name))
            .collect();
        let rule_owners = FirewallState::read(self.firewall.as_mut())?
            .vm_names()
            .into_iter()
            .filter(|name| !running.iter().any(|vm| vm.name.as_str() == name))
            .collect();
        Ok(Orphans { links, rule_owners })
    }

    /// Removes what [`HostNet::orphans`] found.
    pub fn remove_orphans(&mut self, orphans: &Orphans) -> anyhow::Result<()> {
        for name in &orphans.rule_owners {
            self.remove_rules(name)?;
        }
        let links: Vec<&str> = orphans.links.iter().map(String::as_str).collect();
        self.delete_links(&links)
    }
}

/// Leftovers of VMs that are not running.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Orphans {
    pub links: Vec<String>,
    pub rule_owners: Vec<String>,
}

impl Orphans {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.rule_owners.is_empty()
    }
}

/// Whether `name` is one of the links mvm makes.
pub fn is_mvm_link(name: &str) -> bool {
    LINK_PREFIXES.iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The alias of the bridge made for VM `vm` of user `owner`'s: a bridge of an earlier
/// holder of the index (another VM, or the same name under another owner) is not this
/// VM's, and neither are DNS sockets that were bound to it.
pub fn bridge_alias(vm: &VmRecord, owner: u32) -> String {
    format!("mvm:{}:{owner}", vm.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::firewall::tests::FakeFirewall;
    use crate::net::kernel::fake::FakeKernel;
    use crate::net::netlink::Route;
    use mvm_base::addr::AddressPool;

    /// Roots in a temp dir, a kernel in memory, and the caller (this test's uid).
    struct Rig {
        _dir: tempfile::TempDir,
        roots: Roots,
        kernel: FakeKernel,
        me: u32,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        std::fs::create_dir_all(&roots.state_dir).unwrap();
        Rig { _dir: dir, roots, kernel: FakeKernel::default(), me: nix::unistd::geteuid().as_raw() }
    }

    impl Rig {
        /// VM `name` on `index` of the default pool, forwarding `ports`, its index claimed.
        fn vm(&self, name: &str, index: u32, ports: &[&str]) -> VmRecord {
            let name = name.parse().unwrap();
            claims::claim(&self.roots.state_dir, index, &name).unwrap();
            VmRecord {
                name,
                disk_mib: None,
                offline: false,
                host_access: false,
                network: AddressPool::new("10.200.0.0/16".parse().unwrap(), 24).unwrap().vm(index).unwrap(),
                ports: ports.iter().map(|port| port.parse().unwrap()).collect(),
            }
        }

        /// Host networking for this caller, as the helper opens it, over the fakes.
        fn net(&self) -> HostNet {
            let kernel = Box::new(self.kernel.clone());
            let net =
                HostNet::with(&self.roots, &NetworkConfig::default(), kernel, Box::new(FakeFirewall::new()))
                    .unwrap();
            if self.me == 0 {
                net
            } else {
                net.for_user(self.me)
            }
        }

        /// The owner the kernel reports for this caller's taps.
        fn tap_owner(&self) -> Option<u32> {
            (self.me != 0).then_some(self.me)
        }

        fn link(&self, name: &str) -> Option<Link> {
            self.kernel.state.borrow().named(name).cloned()
        }

        fn changes(&self) -> Vec<String> {
            self.kernel.state.borrow().changes.clone()
        }
    }

    fn rule_owners(net: &mut HostNet) -> Vec<String> {
        FirewallState::read(net.firewall.as_mut()).unwrap().vm_names()
    }

    #[test]
    fn up_makes_the_bridge_and_the_callers_tap_once() {
        let rig = rig();
        let web = rig.vm("web", 4, &["8080:3000"]);
        let mut net = rig.net();
        net.up(&web).unwrap();
        let bridge = rig.link("mvmbr4").expect("no bridge");
        assert_eq!(bridge.alias.as_deref(), Some(format!("mvm:web:{}", rig.me).as_str()));
        let tap = rig.link("mvmtap4").expect("no tap");
        assert_eq!((tap.tun_owner, tap.controller), (rig.tap_owner(), Some(bridge.index)));
        let state = rig.kernel.state.borrow();
        assert!(state.addresses.contains(&(bridge.index, web.network.gateway, 24)));
        assert!(state.up.contains(&bridge.index) && state.up.contains(&tap.index));
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.mvmbr4.disable_ipv6", "1"),
            ("net.ipv4.conf.mvmbr4.route_localnet", "1"),
            ("net.ipv6.conf.mvmtap4.disable_ipv6", "1"),
        ] {
            assert_eq!(state.sysctls.get(key).map(String::as_str), Some(value), "{key}");
        }
        assert_eq!(state.forgotten, [web.network.address], "an earlier holder's connections");
        drop(state);
        assert_eq!(rule_owners(&mut net), ["web"]);
        // Idempotent: a second bring-up changes nothing.
        let before = rig.changes();
        net.up(&web).unwrap();
        assert_eq!(rig.changes(), before);
        net.check_live(&web).unwrap();
    }

    #[test]
    fn up_removes_what_an_earlier_holder_of_the_index_left() {
        let rig = rig();
        let web = rig.vm("web", 4, &[]);
        {
            let mut state = rig.kernel.state.borrow_mut();
            state.add_link("mvmbr4", None, Some(&format!("mvm:api:{}", rig.me)));
            state.add_link("mvmtap4", Some(4242), None);
        }
        rig.net().up(&web).unwrap();
        let changes = rig.changes();
        assert_eq!(changes[..2], ["delete mvmbr4", "delete mvmtap4"], "{changes:?}");
        assert_eq!(rig.link("mvmbr4").unwrap().alias, Some(format!("mvm:web:{}", rig.me)));
        assert_eq!(rig.link("mvmtap4").unwrap().tun_owner, rig.tap_owner());
    }

    #[test]
    fn down_removes_this_vms_links_and_rules_and_nothing_else() {
        let rig = rig();
        let web = rig.vm("web", 4, &["8080:3000"]);
        let mut net = rig.net();
        net.up(&web).unwrap();
        net.down(&web).unwrap();
        assert!(rig.link("mvmbr4").is_none() && rig.link("mvmtap4").is_none());
        assert!(rule_owners(&mut net).is_empty());
        // Links on its index that someone else made stay.
        {
            let mut state = rig.kernel.state.borrow_mut();
            state.add_link("mvmbr4", None, Some("mvm:web:4242"));
            state.add_link("mvmtap4", Some(4242), None);
        }
        let before = rig.changes();
        net.down(&web).unwrap();
        assert_eq!(rig.changes(), before);
        assert!(rig.link("mvmbr4").is_some() && rig.link("mvmtap4").is_some());
    }

    #[test]
    fn a_vm_without_its_claim_gets_nothing() {
        let rig = rig();
        let web = rig.vm("web", 4, &[]);
        let api = rig.vm("api", 5, &[]);
        let on_apis_index = VmRecord { network: api.network.clone(), ..web };
        let mut net = rig.net();
        for error in [net.up(&on_apis_index).unwrap_err(), net.down(&on_apis_index).unwrap_err()] {
            assert!(format!("{error:#}").contains("not claimed for it by you"), "{error:#}");
        }
        assert!(rig.changes().is_empty());
    }

    #[test]
    fn a_pool_overlapping_a_host_route_is_refused() {
        let rig = rig();
        let web = rig.vm("web", 4, &[]);
        {
            let mut state = rig.kernel.state.borrow_mut();
            let uplink = state.add_link("uplink0", None, None);
            let mvm = state.add_link("mvmbr9", None, Some("mvm:old:0"));
            // A default route and mvm's own routes are no overlap.
            for (destination, device) in [("0.0.0.0/0", uplink), ("10.200.9.0/24", mvm)] {
                state.routes.push(Route { destination: destination.parse().unwrap(), device: Some(device) });
            }
        }
        rig.net().up(&web).unwrap();
        let uplink = rig.link("uplink0").map(|link| link.index);
        rig.kernel
            .state
            .borrow_mut()
            .routes
            .push(Route { destination: "10.200.7.0/24".parse().unwrap(), device: uplink });
        let error = format!("{:#}", rig.net().up(&web).unwrap_err());
        assert!(error.contains("overlaps the host route 10.200.7.0/24 on uplink0"), "{error}");
    }

    #[test]
    fn dns_sockets_are_handed_out_only_for_a_live_network() {
        let rig = rig();
        let web = rig.vm("web", 4, &[]);
        let mut net = rig.net();
        assert!(format!("{:#}", net.check_live(&web).unwrap_err()).contains("is not up"));
        net.up(&web).unwrap();
        net.check_live(&web).unwrap();
        // A tap taken off its bridge is no live network.
        rig.kernel.state.borrow_mut().links.iter_mut().for_each(|link| link.controller = None);
        assert!(net.check_live(&web).is_err());
    }

    #[test]
    fn a_host_port_another_vm_forwards_is_refused() {
        let rig = rig();
        let (api, web) = (rig.vm("api", 5, &["8080:80"]), rig.vm("web", 4, &["8080:3000"]));
        let mut net = rig.net();
        net.up(&api).unwrap();
        let error = format!("{:#}", net.up(&web).unwrap_err());
        assert!(error.contains("host port 8080/tcp is forwarded to VM 'api' already"), "{error}");
        assert_eq!(rule_owners(&mut net), ["api"]);
    }

    #[test]
    fn orphans_are_what_no_running_vm_holds() {
        let rig = rig();
        let (web, api) = (rig.vm("web", 4, &[]), rig.vm("api", 5, &[]));
        let mut net = rig.net();
        net.up(&web).unwrap();
        net.up(&api).unwrap();
        let orphans = net.orphans(std::slice::from_ref(&web)).unwrap();
        assert_eq!(orphans.links, ["mvmbr5", "mvmtap5"]);
        assert_eq!(orphans.rule_owners, ["api"]);
        net.remove_orphans(&orphans).unwrap();
        assert!(net.orphans(std::slice::from_ref(&web)).unwrap().is_empty());
        assert!(rig.link("mvmbr4").is_some() && rig.link("mvmtap4").is_some());
    }

    #[test]
    fn recognizes_only_mvm_links() {
        for name in ["mvmbr0", "mvmbr255", "mvmtap65535"] {
            assert!(is_mvm_link(name), "{name}");
        }
        for name in ["mvmbr", "mvmbrx", "eth0", "mvmtap1a", "xmvmbr0"] {
            assert!(!is_mvm_link(name), "{name}");
        }
    }
}
