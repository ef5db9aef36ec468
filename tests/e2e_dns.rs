//! End-to-end tier: the guest resolves what the host resolves. A name only a test-made
//! "VPN" resolver knows (on the host's loopback, where the guest could never send) and a
//! name only in the host's hosts file both resolve in the guest; a change on the host
//! applies without a restart; an offline VM is refused.

mod support;

use std::net::UdpSocket;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use support::e2e::begin;

/// A resolver only the host knows: on 127.0.0.77:53 of the lab's host namespace, it
/// answers `vpn-only.corp.test` with 10.77.0.8 and nothing else.
fn vpn_resolver(lab: &support::e2e::Lab) {
    let socket = lab.host.run(|| {
        let _ = std::process::Command::new("ip").args(["addr", "add", "127.0.0.77/8", "dev", "lo"]).status();
        UdpSocket::bind("127.0.0.77:53").unwrap()
    });
    std::thread::spawn(move || loop {
        let mut buffer = [0u8; 512];
        let Ok((length, client)) = socket.recv_from(&mut buffer) else { continue };
        let Ok(mut reply) = Message::from_vec(&buffer[..length]) else { continue };
        let name = reply.queries()[0].name().clone();
        reply.set_message_type(MessageType::Response);
        if name.to_ascii() == "vpn-only.corp.test." {
            reply.add_answer(Record::from_rdata(name, 5, RData::A(A("10.77.0.8".parse().unwrap()))));
        } else {
            reply.set_response_code(hickory_proto::op::ResponseCode::NXDomain);
        }
        let _ = socket.send_to(&reply.to_vec().unwrap(), client);
    });
}

#[test]
fn the_guest_resolves_what_the_host_resolves() {
    let Some((_serial, lab)) = begin("the_guest_resolves_what_the_host_resolves") else { return };
    vpn_resolver(&lab);
    let hosts = lab.sandbox.root().join("hosts");
    let resolv = lab.sandbox.root().join("resolv.conf");
    std::fs::write(&hosts, "10.77.0.7 intranet.corp.test\n").unwrap();
    std::fs::write(&resolv, "nameserver 127.0.0.77\n").unwrap();
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
    assert_eq!(lookup("d", "vpn-only.corp.test").ok().trim(), "10.77.0.8", "the VPN-only name");
    assert_eq!(lookup("d", "intranet.corp.test").ok().trim(), "10.77.0.7", "the host's hosts file");
    assert_eq!(lab.sh("d", "cat /etc/resolv.conf").ok().trim(), "nameserver 10.200.0.1");
    // The host's resolver changes: the guest follows, with no restart.
    std::fs::write(&hosts, "10.77.0.9 intranet.corp.test\n").unwrap();
    assert_eq!(lookup("d", "intranet.corp.test").ok().trim(), "10.77.0.9", "a change on the host");
    // A name neither knows does not resolve.
    assert_ne!(lab.sh("d", "getent ahostsv4 nowhere.corp.test").code, 0);

    // An offline VM gets REFUSED (and still nothing else).
    with_host_resolver(&["start", "off"]).ok();
    let refused = lab.sh("off", "getent ahostsv4 vpn-only.corp.test");
    assert_ne!(refused.code, 0, "an offline VM resolved a name: {}", refused.stdout);
    lab.mvm(&["stop", "off"]).ok();
    lab.mvm(&["stop", "d"]).ok();
    lab.assert_nothing_left();
}
