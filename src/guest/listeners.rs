//! The guest's listeners: TCP sockets in LISTEN and unconnected UDP sockets, from the
//! kernel's socket tables (`proc_net`). The agent polls them for automatic port
//! forwarding every [`POLL`], much faster than Lima's 3 s.

use std::time::Duration;

use crate::contract::protocol::Listening;
use crate::proc_net::{self, Socket, TCP_LISTEN, UDP_UNCONNECTED};

/// How often the agent looks.
pub const POLL: Duration = Duration::from_millis(200);

/// What the guest listens on now.
pub fn listening() -> Listening {
    from_tables(&proc_net::read(&["tcp", "tcp6"]), &proc_net::read(&["udp", "udp6"]))
}

/// Whether some IPv4 socket (the loopback's `127.0.0.1` reaches it) serves UDP `port`;
/// otherwise an IPv6 one does, reached at `::1`.
pub fn udp_on_ipv4(port: u16) -> bool {
    proc_net::read(&["udp"]).iter().any(|socket| socket.local.port() == port)
}

fn from_tables(tcp: &[Socket], udp: &[Socket]) -> Listening {
    Listening {
        tcp: tcp
            .iter()
            .filter(|socket| socket.state == TCP_LISTEN)
            .map(|socket| socket.local.port())
            .collect(),
        // A UDP socket that is bound and connected to nobody receives from anyone: a
        // server. A connected one (a client's, a resolver's query) is not.
        udp: udp
            .iter()
            .filter(|socket| socket.state == UDP_UNCONNECTED && socket.remote.port() == 0)
            .map(|socket| socket.local.port())
            .filter(|&port| port != 0)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn finds_tcp_listeners_and_udp_servers_and_nothing_else() {
        let tcp = proc_net::parse(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000
   2: 0100007F:0BB8 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000  1000
",
        );
        let udp = proc_net::parse(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0
   1: 0200C80A:A0B1 0100C80A:0035 01 00000000:00000000 00:00000000 00000000     0
   2: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0
",
        );
        let found = from_tables(&tcp, &udp);
        assert_eq!(found.tcp, BTreeSet::from([8080, 3000]));
        assert_eq!(found.udp, BTreeSet::from([5353]));
    }

    /// What the kernel shows for sockets this test opens.
    #[test]
    fn sees_real_sockets() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(udp.local_addr().unwrap()).unwrap();
        let now = listening();
        assert!(now.tcp.contains(&tcp.local_addr().unwrap().port()));
        assert!(now.udp.contains(&udp.local_addr().unwrap().port()));
        assert!(!now.udp.contains(&client.local_addr().unwrap().port()));
        assert!(udp_on_ipv4(udp.local_addr().unwrap().port()));
    }
}
