//! Who is on the other end of a loopback connection: the uid owning the peer's socket, from
//! the kernel's socket tables (`proc_net`; `SO_PEERCRED` exists for Unix sockets only). A
//! user's VM's automatic forwards take their owner's programs (and root's), as the
//! `-m owner` rules do for its DNAT'ed ports; the loopback is every local user's.

use std::net::SocketAddr;

use crate::proc_net;
use crate::spec::Protocol;

/// Whether the program at `peer`, talking to our socket at `local`, may use a forward
/// that is `owner`'s (anyone's when `None`).
pub(super) fn admitted(owner: Option<u32>, protocol: Protocol, local: SocketAddr, peer: SocketAddr) -> bool {
    let Some(owner) = owner else { return true };
    let uids = uids_of(protocol, local, peer);
    !uids.is_empty() && uids.iter().all(|&uid| uid == owner || uid == 0)
}

/// The uids owning the local sockets at `peer` that talk to `local`: one for TCP; for UDP
/// every socket that could have sent the datagram (with `SO_REUSEADDR`, several users'
/// sockets may share an address, and any of them gets the answers).
fn uids_of(protocol: Protocol, local: SocketAddr, peer: SocketAddr) -> Vec<u32> {
    let tables: &[&str] = match protocol {
        Protocol::Tcp => &["tcp", "tcp6"],
        Protocol::Udp => &["udp", "udp6"],
    };
    let canonical = |address: SocketAddr| SocketAddr::new(address.ip().to_canonical(), address.port());
    // A dual-stack socket's IPv4 peer shows as `::ffff:a.b.c.d` in the IPv6 table.
    let sockets = proc_net::read(tables).into_iter().map(|socket| proc_net::Socket {
        local: canonical(socket.local),
        remote: canonical(socket.remote),
        ..socket
    });
    let found = sockets.filter(|socket| match protocol {
        // The peer's end of the connection we accepted.
        Protocol::Tcp => socket.local == peer && socket.remote == local,
        // The socket the datagram came from: bound to its address (or the wildcard), and
        // connected to us or to nobody.
        Protocol::Udp => {
            socket.local.port() == peer.port()
                && (socket.local.ip() == peer.ip() || socket.local.ip().is_unspecified())
                && (socket.remote == local || socket.remote.port() == 0)
        }
    });
    found.map(|socket| socket.uid).collect()
}
