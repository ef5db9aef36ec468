//! Who is on the other end of a loopback TCP connection: the uid owning the peer's socket,
//! from the kernel's socket tables (`proc_net`; `SO_PEERCRED` exists for Unix sockets
//! only). A user's VM's automatic forwards take their owner's programs (and root's), as the
//! `-m owner` rules do for its DNAT'ed ports; the loopback is every local user's. (A UDP
//! datagram cannot be tied to its sender's socket this way — a closed or shared port
//! passes for another's — so a user's VM forwards no UDP port by itself.)

use std::net::SocketAddr;

use crate::proc_net;

/// Whether a program of `uid` (`None`: unknown) may use a forward that is `owner`'s
/// (anyone's when `None`).
pub(super) fn admitted(owner: Option<u32>, uid: Option<u32>) -> bool {
    let Some(owner) = owner else { return true };
    uid.is_some_and(|uid| uid == owner || uid == 0)
}

/// The uid owning the local socket at `peer` connected to `local`. A socket the kernel
/// shows without an inode (one closed already, waiting out its FIN or TIME-WAIT) is
/// nobody's: the table prints uid 0 for it, which must not pass for root's.
pub(super) fn uid_of(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let canonical = |address: SocketAddr| SocketAddr::new(address.ip().to_canonical(), address.port());
    // A dual-stack socket's IPv4 peer shows as `::ffff:a.b.c.d` in the IPv6 table.
    proc_net::read(&["tcp", "tcp6"])
        .into_iter()
        .find(|socket| {
            socket.inode != 0 && canonical(socket.local) == peer && canonical(socket.remote) == local
        })
        .map(|socket| socket.uid)
}
