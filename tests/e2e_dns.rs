//! End-to-end tier: the guest resolves what the host resolves. A name only a test-made
//! "VPN" resolver knows (on the host's loopback, where the guest could never send) and a
//! name only in the host's hosts file both resolve in the guest; a change on the host
//! applies without a restart; an answer too big for UDP comes over TCP; an offline VM is
//! refused.

mod support;

use support::dns::{vpn_resolver, MANY_COUNT, MANY_NAME, VPN_ADDRESS, VPN_NAME, VPN_RESOLVER};
use support::e2e::begin;

#[test]
fn the_guest_resolves_what_the_host_resolves() {
    let Some((_serial, lab)) = begin("the_guest_resolves_what_the_host_resolves") else { return };
    vpn_resolver(&lab.host);
    let hosts = lab.sandbox.root().join("hosts");
    let resolv = lab.sandbox.root().join("resolv.conf");
    std::fs::write(&hosts, "10.77.0.7 intranet.corp.test\n").unwrap();
    std::fs::write(&resolv, format!("nameserver {VPN_RESOLVER}\n")).unwrap();
    let with_host_resolver = |args: &[&str]| {
        let mut command = lab.command(args);
        command.env("MVM_HOSTS", &hosts).env("MVM_RESOLV_CONF", &resolv);
        support::Run::from_output(command.output().unwrap())
    };
    lab.mvm(&["create", "d"]).ok();
    lab.mvm(&["create", "off", "--offline"]).ok();
    with_host_resolver(&["start", "d"]).ok();
    let lookup =
        |vm: &str, name: &str| lab.sh(vm, &format!("getent ahostsv4 {name} | head -1 | cut -d' ' -f1"));
    assert_eq!(lookup("d", VPN_NAME).ok().trim(), VPN_ADDRESS, "the VPN-only name");
    assert_eq!(lookup("d", "intranet.corp.test").ok().trim(), "10.77.0.7", "the host's hosts file");
    assert_eq!(lab.sh("d", "cat /etc/resolv.conf").ok().trim(), "nameserver 10.200.0.1");
    // The host's resolver changes: the guest follows, with no restart.
    std::fs::write(&hosts, "10.77.0.9 intranet.corp.test\n").unwrap();
    assert_eq!(lookup("d", "intranet.corp.test").ok().trim(), "10.77.0.9", "a change on the host");
    // Too many addresses for a UDP answer: the guest's glibc gets "truncated" and asks
    // again over TCP, which the gateway relays to the host's resolver over TCP.
    let many = lab
        .sh("d", &format!("getent ahostsv4 {MANY_NAME} | cut -d' ' -f1 | sort -u | wc -l"))
        .ok()
        .trim()
        .to_string();
    assert_eq!(many, MANY_COUNT.to_string(), "a large answer (DNS over TCP)");
    // A name neither knows does not resolve.
    assert_ne!(lab.sh("d", "getent ahostsv4 nowhere.corp.test").code, 0);

    // An offline VM gets REFUSED (and still nothing else).
    with_host_resolver(&["start", "off"]).ok();
    let refused = lab.sh("off", &format!("getent ahostsv4 {VPN_NAME}"));
    assert_ne!(refused.code, 0, "an offline VM resolved a name: {}", refused.stdout);
    lab.mvm(&["stop", "off"]).ok();
    lab.mvm(&["stop", "d"]).ok();
    lab.assert_nothing_left();
}
