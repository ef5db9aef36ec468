//! The kernel's socket tables, `/proc/net/{tcp,tcp6,udp,udp6}` of the calling thread's
//! network namespace: the guest agent reads its listeners from them, the host-side relay
//! of automatic forwards the uid of a local peer (a loopback socket's owner, which
//! `SO_PEERCRED` gives only for Unix sockets), and `net::ports` who holds a host port.
//!
//! Each line is `sl local_address rem_address st … uid …`, addresses as `HEXIP:HEXPORT`
//! with the IP printed word by word in the kernel's byte order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP's LISTEN state.
pub const TCP_LISTEN: u8 = 0x0A;
/// TCP's ESTABLISHED state.
pub const TCP_ESTABLISHED: u8 = 0x01;
/// The state of a UDP socket that is not connected (TCP's CLOSE).
pub const UDP_UNCONNECTED: u8 = 0x07;

/// One socket of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub uid: u32,
    pub inode: u64,
}

/// The sockets of the named tables (`tcp`, `udp6`, …; a missing table is empty).
pub fn read(tables: &[&str]) -> Vec<Socket> {
    tables
        .iter()
        .flat_map(|table| {
            parse(&std::fs::read_to_string(format!("/proc/thread-self/net/{table}")).unwrap_or_default())
        })
        .collect()
}

/// The sockets of one table's text; lines that do not parse are skipped.
pub fn parse(table: &str) -> Vec<Socket> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(Socket {
                local: address(fields.get(1)?)?,
                remote: address(fields.get(2)?)?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                uid: fields.get(7).and_then(|uid| uid.parse().ok()).unwrap_or(u32::MAX),
                inode: fields.get(9).and_then(|inode| inode.parse().ok()).unwrap_or(0),
            })
        })
        .collect()
}

/// `0100007F:0BB8` → 127.0.0.1:3000 (and the 32-hex-digit IPv6 form).
fn address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    if !matches!(ip.len(), 8 | 32) || port.len() != 4 {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in ip.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match <[u8; 4]>::try_from(bytes.as_slice()) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?)),
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:A1B2 0100007F:0BB8 01 00000000:00000000 00:00000000 00000000  1001        0 3 1 0000000000000000 20 4 30 10 -1
   garbage line
";

    #[test]
    fn parses_addresses_states_and_owners() {
        let sockets = parse(TCP);
        assert_eq!(sockets.len(), 3);
        assert_eq!(sockets[0].local, "0.0.0.0:8080".parse().unwrap());
        assert_eq!((sockets[0].state, sockets[0].uid, sockets[0].inode), (TCP_LISTEN, 0, 4242));
        assert_eq!(sockets[1].local, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(sockets[2].local, "127.0.0.1:41394".parse().unwrap());
        assert_eq!(sockets[2].remote, "127.0.0.1:3000".parse().unwrap());
        assert_eq!((sockets[2].state, sockets[2].uid), (TCP_ESTABLISHED, 1001));
    }

    #[test]
    fn parses_ipv6() {
        let v6 = "  sl  local_address                         remote_address                        st tx rx tr tm uid
   0: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A 0:0 0:0 0 70
";
        let sockets = parse(v6);
        assert_eq!(sockets[0].local, "[::1]:5432".parse().unwrap());
        assert_eq!(sockets[0].uid, 70);
    }

    /// The parser agrees with the kernel about a socket this test makes.
    #[test]
    fn finds_a_real_listener_and_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let found = read(&["tcp"]).into_iter().find(|socket| socket.local == local).unwrap();
        assert_eq!((found.state, found.uid), (TCP_LISTEN, nix::unistd::geteuid().as_raw()));
    }
}
