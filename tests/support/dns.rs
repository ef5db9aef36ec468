//! A resolver only the host knows, as a VPN's would be: on `VPN_RESOLVER` (the loopback
//! of a namespace the test made), it answers `VPN_NAME` with `VPN_ADDRESS` and any other
//! name with NXDOMAIN.

use std::net::UdpSocket;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};

use super::netns::NetNs;

/// Where it listens, in the namespace.
pub const VPN_RESOLVER: &str = "127.0.0.77";
/// The one name it knows, and its address.
pub const VPN_NAME: &str = "vpn-only.corp.test";
pub const VPN_ADDRESS: &str = "10.77.0.8";

/// Starts it in `namespace`; it answers for as long as the test process lives.
pub fn vpn_resolver(namespace: &NetNs) {
    let socket = namespace.run(|| {
        let _ = std::process::Command::new("ip")
            .args(["addr", "add", &format!("{VPN_RESOLVER}/8"), "dev", "lo"])
            .status();
        UdpSocket::bind((VPN_RESOLVER, 53)).unwrap()
    });
    std::thread::spawn(move || loop {
        let mut buffer = [0u8; 512];
        let Ok((length, client)) = socket.recv_from(&mut buffer) else { continue };
        let Ok(mut reply) = Message::from_vec(&buffer[..length]) else { continue };
        let Some(name) = reply.queries().first().map(|query| query.name().clone()) else { continue };
        reply.set_message_type(MessageType::Response);
        if name.to_ascii().trim_end_matches('.') == VPN_NAME {
            reply.add_answer(Record::from_rdata(name, 5, RData::A(A(VPN_ADDRESS.parse().unwrap()))));
        } else {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        let _ = socket.send_to(&reply.to_vec().unwrap(), client);
    });
}
