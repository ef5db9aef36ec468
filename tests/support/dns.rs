//! A resolver only the host knows, as a VPN's would be: on `VPN_RESOLVER` (the loopback
//! of a namespace the test made), over UDP and TCP, it answers `VPN_NAME` with
//! `VPN_ADDRESS`, `MANY_NAME` with `MANY_COUNT` addresses (too many for a UDP answer:
//! over UDP it says "truncated", as real servers do, and only TCP gets them), and any
//! other name with NXDOMAIN.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};

use super::netns::NetNs;

/// Where it listens, in the namespace.
pub const VPN_RESOLVER: &str = "127.0.0.77";
/// The one name it knows, and its address.
pub const VPN_NAME: &str = "vpn-only.corp.test";
pub const VPN_ADDRESS: &str = "10.77.0.8";
/// A name with more addresses than a UDP answer holds: `10.77.1.0` and up.
pub const MANY_NAME: &str = "many.corp.test";
pub const MANY_COUNT: u8 = 60;

/// The reply to `query`; over UDP, a name with many addresses gets a truncated one.
fn reply(query: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
    let mut reply = Message::from_vec(query).ok()?;
    let name = reply.queries().first()?.name().clone();
    // A recursive resolver's answer (glibc takes one without RA and without records for a
    // lame server's, and asks the next).
    reply.set_message_type(MessageType::Response).set_recursion_available(true);
    match name.to_ascii().trim_end_matches('.') {
        VPN_NAME => {
            reply.add_answer(Record::from_rdata(name, 5, RData::A(A(VPN_ADDRESS.parse().unwrap()))));
        }
        MANY_NAME if over_tcp => {
            for i in 0..MANY_COUNT {
                reply.add_answer(Record::from_rdata(name.clone(), 5, RData::A(A([10, 77, 1, i].into()))));
            }
        }
        MANY_NAME => {
            reply.set_truncated(true);
        }
        _ => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    reply.to_vec().ok()
}

/// The host's resolver files, written in `dir`: no hosts, and this resolver alone as the
/// nameserver (as a VPN client sets them).
pub fn host_files_naming_it(dir: &std::path::Path) -> mvm::dns::HostResolver {
    std::fs::write(dir.join("resolv.conf"), format!("nameserver {VPN_RESOLVER}\n")).unwrap();
    std::fs::write(dir.join("hosts"), "").unwrap();
    mvm::dns::HostResolver { resolv_conf: dir.join("resolv.conf"), hosts: dir.join("hosts") }
}

/// Starts it in `namespace`; it answers for as long as the test process lives.
pub fn vpn_resolver(namespace: &NetNs) {
    let (udp, tcp) = namespace.run(|| {
        let _ = std::process::Command::new("ip")
            .args(["addr", "add", &format!("{VPN_RESOLVER}/8"), "dev", "lo"])
            .status();
        (UdpSocket::bind((VPN_RESOLVER, 53)).unwrap(), TcpListener::bind((VPN_RESOLVER, 53)).unwrap())
    });
    std::thread::spawn(move || loop {
        let mut buffer = [0u8; 512];
        let Ok((length, client)) = udp.recv_from(&mut buffer) else { continue };
        if let Some(answer) = reply(&buffer[..length], false) {
            let _ = udp.send_to(&answer, client);
        }
    });
    std::thread::spawn(move || {
        for connection in tcp.incoming() {
            let Ok(mut connection) = connection else { continue };
            std::thread::spawn(move || {
                let mut length = [0u8; 2];
                while connection.read_exact(&mut length).is_ok() {
                    let mut query = vec![0u8; u16::from_be_bytes(length) as usize];
                    if connection.read_exact(&mut query).is_err() {
                        return;
                    }
                    let Some(answer) = reply(&query, true) else { return };
                    let framed = [&(answer.len() as u16).to_be_bytes()[..], &answer].concat();
                    if connection.write_all(&framed).is_err() {
                        return;
                    }
                }
            });
        }
    });
}
