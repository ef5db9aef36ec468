//! Root tier: mvm's netlink client against the kernel, in a network namespace of its own.
//!
//! Every call of `Netlink` is checked against what `ip` then shows: a bridge made down,
//! named and addressed (twice: the second replaces), brought up; a veth attached to it;
//! the default route set twice (replaced, not doubled); taps with and without an owner;
//! a dump larger than one 32 KiB datagram; kernel errors with their errno and context;
//! deletion. No VM, and nothing outside the namespace.

mod support;

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;

use mvm::addr::Ipv4Net;
use mvm::net::netlink::{Link, Netlink, Route};
use support::netns::NetNs;

/// The errno under an error's contexts.
fn errno(error: &anyhow::Error) -> Option<i32> {
    error.root_cause().downcast_ref::<io::Error>().and_then(io::Error::raw_os_error)
}

#[test]
fn netlink_makes_names_addresses_attaches_routes_and_deletes() {
    if !support::require_root("netlink_makes_names_addresses_attaches_routes_and_deletes") {
        return;
    }
    let ns = NetNs::new("nl");
    ns.ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]);
    ns.ip(&["link", "set", "veth1", "up"]);

    let (bridge, duplicate) = ns.run(|| {
        let netlink = Netlink::open().unwrap();
        assert_eq!(netlink.link("mvmbr0").unwrap(), None);
        netlink.add_bridge("mvmbr0").unwrap();
        let bridge = netlink.link("mvmbr0").unwrap().expect("the new bridge");
        (bridge, netlink.add_bridge("mvmbr0").unwrap_err())
    });
    assert_eq!((bridge.controller, bridge.tun_owner, &bridge.alias), (None, None, &None));
    assert_eq!(duplicate.to_string(), "cannot create bridge mvmbr0");
    assert_eq!(errno(&duplicate), Some(nix::libc::EEXIST));
    let shown = ns.ip(&["-d", "-o", "link", "show", "mvmbr0"]);
    assert!(shown.contains("bridge") && !shown.contains(",UP") && shown.contains("state DOWN"), "{shown}");

    let index = bridge.index;
    let (named, addresses) = ns.run(move || {
        let netlink = Netlink::open().unwrap();
        netlink.set_alias(index, "vm one of 0").unwrap();
        let gateway = Ipv4Addr::new(10, 0, 0, 1);
        netlink.set_address(index, gateway, 24).unwrap();
        netlink.set_address(index, gateway, 24).unwrap();
        netlink.set_up(index).unwrap();
        (netlink.link("mvmbr0").unwrap().unwrap(), netlink.addresses(index).unwrap())
    });
    assert_eq!(named.alias.as_deref(), Some("vm one of 0"));
    assert_eq!(addresses, [(Ipv4Addr::new(10, 0, 0, 1), 24)]);
    let shown = ns.ip(&["-o", "-4", "addr", "show", "dev", "mvmbr0"]);
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.contains("inet 10.0.0.1/24 brd 10.0.0.255"), "{shown}");
    let shown = ns.ip(&["-o", "link", "show", "mvmbr0"]);
    assert!(shown.contains(",UP") && shown.contains("alias vm one of 0"), "{shown}");

    let (veth, routes, other_addresses) = ns.run(move || {
        let netlink = Netlink::open().unwrap();
        let veth = netlink.link("veth0").unwrap().expect("veth0");
        netlink.attach_and_up(veth.index, index).unwrap();
        netlink.set_default_route(Ipv4Addr::new(10, 0, 0, 254)).unwrap();
        netlink.set_default_route(Ipv4Addr::new(10, 0, 0, 253)).unwrap();
        let addresses = netlink.addresses(veth.index).unwrap();
        (netlink.link("veth0").unwrap().unwrap(), netlink.routes().unwrap(), addresses)
    });
    assert_eq!(veth.controller, Some(index));
    assert_eq!(other_addresses, []);
    let shown = ns.ip(&["-o", "link", "show", "veth0"]);
    assert!(shown.contains("master mvmbr0") && shown.contains(",UP"), "{shown}");
    let route =
        |network: &str| Route { destination: network.parse::<Ipv4Net>().unwrap(), device: Some(index) };
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert!(routes.contains(&route("0.0.0.0/0")) && routes.contains(&route("10.0.0.0/24")), "{routes:?}");
    let shown = ns.ip(&["route", "show", "default"]);
    assert_eq!(shown.trim(), "default via 10.0.0.253 dev mvmbr0 proto static");

    let (left, gone) = ns.run(move || {
        let netlink = Netlink::open().unwrap();
        netlink.delete(veth.index).unwrap();
        netlink.delete(index).unwrap();
        let names: Vec<String> = netlink.links().unwrap().into_iter().map(|link| link.name).collect();
        (names, netlink.delete(index).unwrap_err())
    });
    assert_eq!(left, ["lo"]);
    assert_eq!(gone.to_string(), format!("cannot delete link {index}"));
    assert_eq!(errno(&gone), Some(nix::libc::ENODEV));
    assert_eq!(ns.ip(&["route", "show"]), "");
}

#[test]
fn netlink_reports_tap_owners_and_dumps_larger_than_a_datagram() {
    if !support::require_root("netlink_reports_tap_owners_and_dumps_larger_than_a_datagram") {
        return;
    }
    let ns = NetNs::new("nldump");
    ns.ip(&["tuntap", "add", "dev", "tapmine", "mode", "tap", "user", "1000"]);
    ns.ip(&["tuntap", "add", "dev", "taproot", "mode", "tap"]);
    // Each link takes about 1.5 KiB in a dump: 60 veths take several datagrams.
    let batch: String = (0..30).map(|n| format!("link add va{n} type veth peer name vb{n}\n")).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), batch).unwrap();
    ns.ip(&["-batch", file.path().to_str().unwrap()]);

    let links: Vec<Link> = ns.run(|| Netlink::open().unwrap().links().unwrap());
    assert_eq!(links.len(), 63, "lo, two taps and 60 veths");
    let owner = |name: &str| links.iter().find(|link| link.name == name).unwrap().tun_owner;
    assert_eq!(owner("tapmine"), Some(1000));
    assert_eq!(owner("taproot"), None);
    assert_eq!(owner("va7"), None);
    let indices: HashSet<u32> = links.iter().map(|link| link.index).collect();
    assert_eq!(indices.len(), 63, "no link twice");
}
