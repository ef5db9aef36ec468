//! The firewall plan: pure data computed from a VM's config and the host config.
//!
//! mvm touches only its own chains, each hooked by one jump from a built-in chain, and
//! tags every rule: `mvm` for the shared rules, `mvm:NAME` for a VM's. The shared rules
//! are constant whatever the VM count; isolation is one of them:
//!
//! - filter `MVM-FORWARD`: drop bridge → bridge (isolation); accept replies to and from
//!   VMs; then drop everything else from or to a VM. A VM's own rules (egress, forwarded
//!   ports) are inserted at the top and written so that their order never matters.
//! - filter `MVM-INPUT`: VM → host only replies, unless the VM has `--host-access`
//!   (never to the host's loopback).
//! - filter `MVM-OUTPUT`: a user's VM takes new connections from the host only from its
//!   owner's programs (other users of the host do not reach its services).
//! - nat `MVM-POSTROUTING`: masquerade the pool to anything outside it, and host
//!   `localhost` sources that a port forward sends into a bridge.
//! - nat `MVM-PREROUTING` / `MVM-OUTPUT`: DNAT of forwarded host ports, for traffic
//!   from outside and from the host itself.
//! - raw `MVM-PREROUTING`: a bridge takes packets from its guest's address only. The raw
//!   table comes before the connection tracker, so a forged source never reaches it: a
//!   guest can neither answer nor refresh a connection that is not its own (another VM's,
//!   a host user's, the last holder's of its index), which the filter's later drop of the
//!   packet would not undo.
//!
//! Rules are spelled the way `iptables-save` prints them, so that comparing the plan with
//! the kernel's state is a comparison of strings.

use std::fmt;

use crate::forward::PortForward;
use crate::record::VmRecord;
use mvm_base::addr::{Ipv4Net, VmNetwork};

/// An iptables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Nat,
    Raw,
}

impl Table {
    /// The tables mvm uses.
    pub const ALL: [Table; 3] = [Table::Filter, Table::Nat, Table::Raw];

    /// The table's name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    /// The table iptables spells `name`, if mvm uses it.
    pub fn named(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|table| table.as_str() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// mvm's chains: (table, chain, the built-in chain that jumps to it).
pub const CHAINS: [(Table, &str, &str); 7] = [
    (Table::Filter, "MVM-FORWARD", "FORWARD"),
    (Table::Filter, "MVM-INPUT", "INPUT"),
    (Table::Filter, "MVM-OUTPUT", "OUTPUT"),
    (Table::Nat, "MVM-PREROUTING", "PREROUTING"),
    (Table::Nat, "MVM-OUTPUT", "OUTPUT"),
    (Table::Nat, "MVM-POSTROUTING", "POSTROUTING"),
    (Table::Raw, "MVM-PREROUTING", "PREROUTING"),
];

/// The comment on shared rules and jumps.
pub const SHARED_TAG: &str = "mvm";

/// The comment on VM `name`'s rules, quoted as `iptables-save` prints it (the `:`
/// makes it quote the value).
pub fn vm_tag(name: &str) -> String {
    format!("\"mvm:{name}\"")
}

/// One rule: its table, chain and match/target arguments (without `-A CHAIN`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    pub spec: String,
}

impl Rule {
    fn new(table: Table, chain: &str, spec: String) -> Rule {
        Rule { table, chain: chain.to_string(), spec }
    }

    /// The rule as `iptables-save` prints it: `-A CHAIN SPEC`.
    pub fn save_line(&self) -> String {
        format!("-A {} {}", self.chain, self.spec)
    }
}

fn comment(tag: &str) -> String {
    format!("-m comment --comment {tag}")
}

/// Host-wide inputs to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    /// The pool VM subnets come from.
    pub pool: Ipv4Net,
    /// An uplink the host config pins egress to; `None` lets VMs egress anywhere but
    /// another VM (works across VPNs and changing default routes).
    pub uplink: Option<String>,
}

/// The jumps from built-in chains into mvm's chains, inserted first in each.
pub fn jump_rules() -> Vec<Rule> {
    CHAINS
        .iter()
        .map(|(table, chain, builtin)| {
            Rule::new(*table, builtin, format!("{} -j {chain}", comment(SHARED_TAG)))
        })
        .collect()
}

/// The shared rules, in the order they are appended to fresh chains.
pub fn shared_rules(host: &HostNetwork) -> Vec<Rule> {
    let tag = comment(SHARED_TAG);
    let pool = host.pool;
    let uplink = host.uplink.as_ref().map(|uplink| format!(" -o {uplink}")).unwrap_or_default();
    vec![
        Rule::new(Table::Filter, "MVM-FORWARD", format!("-i mvmbr+ -o mvmbr+ {tag} -j DROP")),
        Rule::new(
            Table::Filter,
            "MVM-FORWARD",
            format!("-i mvmbr+ -m conntrack --ctstate RELATED,ESTABLISHED {tag} -j ACCEPT"),
        ),
        Rule::new(
            Table::Filter,
            "MVM-FORWARD",
            format!("-o mvmbr+ -m conntrack --ctstate RELATED,ESTABLISHED {tag} -j ACCEPT"),
        ),
        Rule::new(Table::Filter, "MVM-FORWARD", format!("-i mvmbr+ {tag} -j DROP")),
        Rule::new(Table::Filter, "MVM-FORWARD", format!("-o mvmbr+ {tag} -j DROP")),
        Rule::new(
            Table::Filter,
            "MVM-INPUT",
            format!("-i mvmbr+ -m conntrack --ctstate RELATED,ESTABLISHED {tag} -j ACCEPT"),
        ),
        Rule::new(Table::Filter, "MVM-INPUT", format!("-i mvmbr+ {tag} -j DROP")),
        Rule::new(
            Table::Nat,
            "MVM-POSTROUTING",
            format!("-s {pool} ! -d {pool}{uplink} {tag} -j MASQUERADE"),
        ),
        Rule::new(Table::Nat, "MVM-POSTROUTING", format!("-s 127.0.0.0/8 -o mvmbr+ {tag} -j MASQUERADE")),
        // After every VM's own exception (its guest's address on its bridge).
        Rule::new(Table::Raw, "MVM-PREROUTING", format!("-i mvmbr+ {tag} -j DROP")),
    ]
}

/// What the firewall needs to know about one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFirewall {
    pub name: String,
    pub network: VmNetwork,
    pub offline: bool,
    pub host_access: bool,
    pub ports: Vec<PortForward>,
    /// The user whose VM this is, when not root's: only their processes reach its
    /// forwards through the host's own addresses (`localhost`), so no one else's
    /// connection to a port can be taken by another user's VM.
    pub owner: Option<u32>,
}

impl VmFirewall {
    /// The firewall inputs of a VM config.
    pub fn of(config: &VmRecord) -> VmFirewall {
        VmFirewall {
            name: config.name.to_string(),
            network: config.network.clone(),
            offline: config.offline,
            host_access: config.host_access,
            ports: config.ports.clone(),
            owner: None,
        }
    }
}

/// VM `vm`'s own rules. Every VM has at least one (its egress verdict), so the presence of
/// any `mvm:*` rule tells that some VM's network is up.
pub fn vm_rules(vm: &VmFirewall, host: &HostNetwork) -> Vec<Rule> {
    let tag = comment(&vm_tag(&vm.name));
    let bridge = &vm.network.bridge;
    let guest = vm.network.address;
    let mut rules = Vec::new();
    let egress = if vm.offline {
        // Only what the guest starts: replies to forwarded ingress (ESTABLISHED) still
        // pass the shared rules, from outside the host as from its localhost.
        format!("-i {bridge} -m conntrack --ctstate NEW {tag} -j DROP")
    } else {
        match &host.uplink {
            // From the guest's own address only: guest root forging another source
            // meets the shared drop.
            Some(uplink) => format!("-s {guest}/32 -i {bridge} -o {uplink} {tag} -j ACCEPT"),
            None => format!("-s {guest}/32 -i {bridge} ! -o mvmbr+ {tag} -j ACCEPT"),
        }
    };
    rules.push(Rule::new(Table::Filter, "MVM-FORWARD", egress));
    // DNS: port 53 on its gateway is the supervisor's resolver (`dns`), which only this
    // VM reaches.
    let gateway = vm.network.gateway;
    let dns_port = crate::dns_sockets::GATEWAY_DNS_PORT;
    for proto in ["udp", "tcp"] {
        rules.push(Rule::new(
            Table::Filter,
            "MVM-INPUT",
            format!("-s {guest}/32 -d {gateway}/32 -i {bridge} -p {proto} -m {proto} --dport {dns_port} {tag} -j ACCEPT"),
        ));
    }
    if let Some(uid) = vm.owner {
        rules.push(Rule::new(
            Table::Filter,
            "MVM-OUTPUT",
            format!("-o {bridge} -m owner ! --uid-owner {uid} -m conntrack --ctstate NEW {tag} -j DROP"),
        ));
    }
    if vm.host_access {
        // Never the host's loopback: `route_localnet` (which forwards from the host's
        // localhost need) would otherwise let the guest route 127.0.0.1 to its gateway and
        // reach services bound to loopback alone (CVE-2020-8558).
        rules.push(Rule::new(
            Table::Filter,
            "MVM-INPUT",
            format!("-s {guest}/32 ! -d 127.0.0.0/8 -i {bridge} {tag} -j ACCEPT"),
        ));
    }
    for port in &vm.ports {
        let proto = port.protocol;
        let (host_port, guest_port) = (port.host, port.guest);
        rules.push(Rule::new(
            Table::Filter,
            "MVM-FORWARD",
            format!(
                "-d {guest}/32 ! -i mvmbr+ -o {bridge} -p {proto} -m {proto} --dport {guest_port} \
                 -m conntrack --ctstate DNAT {tag} -j ACCEPT"
            ),
        ));
        let dnat = |owner: &str| {
            format!(
                "-p {proto} -m addrtype --dst-type LOCAL -m {proto} --dport {host_port}{owner} {tag} \
                 -j DNAT --to-destination {guest}:{guest_port}"
            )
        };
        rules.push(Rule::new(Table::Nat, "MVM-PREROUTING", format!("! -i mvmbr+ {}", dnat(""))));
        let owner = vm.owner.map_or(String::new(), |uid| format!(" -m owner --uid-owner {uid}"));
        rules.push(Rule::new(Table::Nat, "MVM-OUTPUT", dnat(&owner)));
    }
    // The one source its bridge takes (the shared raw rule drops the rest).
    rules.push(Rule::new(Table::Raw, "MVM-PREROUTING", format!("-s {guest}/32 -i {bridge} {tag} -j RETURN")));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_base::addr::AddressPool;

    fn host() -> HostNetwork {
        HostNetwork { pool: "10.200.0.0/16".parse().unwrap(), uplink: None }
    }

    fn vm(index: u32) -> VmFirewall {
        let pool = AddressPool::new(host().pool, 24).unwrap();
        VmFirewall {
            name: "web".into(),
            network: pool.vm(index).unwrap(),
            offline: false,
            host_access: false,
            ports: vec!["8080:3000".parse().unwrap(), "5353:53/udp".parse().unwrap()],
            owner: None,
        }
    }

    #[test]
    fn vm_rules_are_exactly_these() {
        let lines: Vec<String> = vm_rules(&vm(3), &host()).iter().map(Rule::save_line).collect();
        let tag = "-m comment --comment \"mvm:web\"";
        assert_eq!(
            lines,
            [
                format!("-A MVM-FORWARD -s 10.200.3.2/32 -i mvmbr3 ! -o mvmbr+ {tag} -j ACCEPT"),
                format!("-A MVM-INPUT -s 10.200.3.2/32 -d 10.200.3.1/32 -i mvmbr3 -p udp -m udp --dport 53 {tag} -j ACCEPT"),
                format!("-A MVM-INPUT -s 10.200.3.2/32 -d 10.200.3.1/32 -i mvmbr3 -p tcp -m tcp --dport 53 {tag} -j ACCEPT"),
                format!("-A MVM-FORWARD -d 10.200.3.2/32 ! -i mvmbr+ -o mvmbr3 -p tcp -m tcp --dport 3000 -m conntrack --ctstate DNAT {tag} -j ACCEPT"),
                format!("-A MVM-PREROUTING ! -i mvmbr+ -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 {tag} -j DNAT --to-destination 10.200.3.2:3000"),
                format!("-A MVM-OUTPUT -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 {tag} -j DNAT --to-destination 10.200.3.2:3000"),
                format!("-A MVM-FORWARD -d 10.200.3.2/32 ! -i mvmbr+ -o mvmbr3 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT {tag} -j ACCEPT"),
                format!("-A MVM-PREROUTING ! -i mvmbr+ -p udp -m addrtype --dst-type LOCAL -m udp --dport 5353 {tag} -j DNAT --to-destination 10.200.3.2:53"),
                format!("-A MVM-OUTPUT -p udp -m addrtype --dst-type LOCAL -m udp --dport 5353 {tag} -j DNAT --to-destination 10.200.3.2:53"),
                format!("-A MVM-PREROUTING -s 10.200.3.2/32 -i mvmbr3 {tag} -j RETURN"),
            ]
        );
    }

    #[test]
    fn offline_drops_egress_and_host_access_accepts_input() {
        let mut offline = vm(1);
        offline.offline = true;
        offline.host_access = true;
        offline.ports.clear();
        let lines: Vec<String> = vm_rules(&offline, &host()).iter().map(Rule::save_line).collect();
        assert_eq!(
            lines,
            [
                "-A MVM-FORWARD -i mvmbr1 -m conntrack --ctstate NEW -m comment --comment \"mvm:web\" -j DROP",
                "-A MVM-INPUT -s 10.200.1.2/32 -d 10.200.1.1/32 -i mvmbr1 -p udp -m udp --dport 53 -m comment --comment \"mvm:web\" -j ACCEPT",
                "-A MVM-INPUT -s 10.200.1.2/32 -d 10.200.1.1/32 -i mvmbr1 -p tcp -m tcp --dport 53 -m comment --comment \"mvm:web\" -j ACCEPT",
                "-A MVM-INPUT -s 10.200.1.2/32 ! -d 127.0.0.0/8 -i mvmbr1 -m comment --comment \"mvm:web\" -j ACCEPT",
                "-A MVM-PREROUTING -s 10.200.1.2/32 -i mvmbr1 -m comment --comment \"mvm:web\" -j RETURN",
            ]
        );
    }

    #[test]
    fn a_configured_uplink_pins_egress_and_masquerade() {
        let host = HostNetwork { uplink: Some("eth0".into()), ..host() };
        assert_eq!(
            vm_rules(&vm(0), &host)[0].save_line(),
            "-A MVM-FORWARD -s 10.200.0.2/32 -i mvmbr0 -o eth0 -m comment --comment \"mvm:web\" -j ACCEPT"
        );
        assert!(shared_rules(&host).iter().any(|rule| rule.spec
            == "-s 10.200.0.0/16 ! -d 10.200.0.0/16 -o eth0 -m comment --comment mvm -j MASQUERADE"));
    }

    /// A user's VM: only its owner's programs open connections to it from the host, and
    /// its localhost forwards match only theirs; from outside, the forwards are as root's.
    #[test]
    fn a_users_vm_is_reached_from_the_host_by_its_owner_only() {
        let owned = VmFirewall { owner: Some(4242), ..vm(1) };
        let rules = vm_rules(&owned, &host());
        let output: Vec<_> = rules.iter().filter(|rule| rule.chain == "MVM-OUTPUT").collect();
        assert!(output.iter().any(|rule| rule.table == Table::Filter
            && rule.spec.starts_with("-o mvmbr1 -m owner ! --uid-owner 4242 -m conntrack --ctstate NEW")));
        assert!(output
            .iter()
            .filter(|rule| rule.table == Table::Nat)
            .all(|rule| rule.spec.contains("-m owner --uid-owner 4242 ")));
        assert!(rules
            .iter()
            .filter(|rule| rule.table == Table::Nat && rule.chain == "MVM-PREROUTING")
            .all(|rule| !rule.spec.contains("owner")));
        assert!(
            vm_rules(&vm(1), &host()).iter().all(|rule| !rule.spec.contains("owner")),
            "root's VM changed"
        );
    }

    #[test]
    fn shared_rules_do_not_grow_with_vms_and_isolation_is_one_rule() {
        let shared = shared_rules(&host());
        let isolation: Vec<_> =
            shared.iter().filter(|rule| rule.spec.contains("-i mvmbr+ -o mvmbr+")).collect();
        assert_eq!(isolation.len(), 1);
        assert_eq!(jump_rules().len(), 7);
        assert!(jump_rules().iter().all(|rule| rule.spec.starts_with("-m comment --comment mvm -j MVM-")));
    }

    /// Before the connection tracker (the raw table), a bridge lets through its own
    /// guest's address and nothing else: the VM's exception, then the shared drop.
    #[test]
    fn a_bridge_takes_only_its_guests_source_before_connections_are_tracked() {
        let raw = |rules: Vec<Rule>| -> Vec<String> {
            rules.into_iter().filter(|rule| rule.table == Table::Raw).map(|rule| rule.save_line()).collect()
        };
        assert_eq!(
            raw(shared_rules(&host())),
            ["-A MVM-PREROUTING -i mvmbr+ -m comment --comment mvm -j DROP"]
        );
        for offline in [false, true] {
            let vm = VmFirewall { offline, ..vm(2) };
            assert_eq!(
                raw(vm_rules(&vm, &host())),
                ["-A MVM-PREROUTING -s 10.200.2.2/32 -i mvmbr2 -m comment --comment \"mvm:web\" -j RETURN"]
            );
        }
        assert!(jump_rules().contains(&Rule::new(
            Table::Raw,
            "PREROUTING",
            "-m comment --comment mvm -j MVM-PREROUTING".into()
        )));
    }
}
