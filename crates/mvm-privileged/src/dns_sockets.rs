//! A VM's DNS sockets: port 53 on its gateway, bound to its bridge. Binding them needs
//! root, so a member's supervisor gets them from the helper (`helper`), which passes them
//! back over a socket pair; the supervisor answers on them (`mvm`'s `dns`).

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// The port the guests' DNS queries are sent to, on each VM's gateway address: below
/// 1024, so only a privileged process can bind it.
pub const GATEWAY_DNS_PORT: u16 = 53;

/// A VM's DNS sockets on its gateway.
pub struct Sockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

/// Binds the DNS sockets of a VM whose gateway is `gateway` on bridge `bridge` (needs root,
/// or `CAP_NET_BIND_SERVICE` and `CAP_NET_RAW`). They are bound to the bridge itself
/// (`SO_BINDTODEVICE`, which their holder cannot change without `CAP_NET_RAW`): sockets
/// someone kept from an earlier VM on the same gateway belong to a bridge that is gone,
/// and neither take this VM's queries nor stand in the way of its sockets (a bridge is
/// made anew for each VM and owner: `net::host`). `SO_REUSEADDR` lets them share port 53
/// with a host DNS server on the wildcard address that allows it (dnsmasq's default), the
/// more specific address winning; on a port this low, only privileged sockets can share.
/// Either socket failing to bind is an error: a guest whose DNS half works is worse off
/// than one told why it has none.
pub fn bind(gateway: Ipv4Addr, bridge: &str) -> std::io::Result<Sockets> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    let address = SockaddrIn::from(std::net::SocketAddrV4::new(gateway, GATEWAY_DNS_PORT));
    let device = std::ffi::OsString::from(bridge);
    let open = |kind: SockType| -> std::io::Result<std::os::fd::OwnedFd> {
        let fd = socket(AddressFamily::Inet, kind, SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&fd, sockopt::BindToDevice, &device)?;
        setsockopt(&fd, sockopt::IpFreebind, &true)?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &address)?;
        Ok(fd)
    };
    let failed = |kind: &'static str| {
        move |error: std::io::Error| {
            std::io::Error::new(
                error.kind(),
                format!("cannot bind {kind} port 53 on {gateway} ({bridge}): {error}"),
            )
        }
    };
    let udp = UdpSocket::from(open(SockType::Datagram).map_err(failed("UDP"))?);
    let tcp = open(SockType::Stream)
        .and_then(|fd| {
            listen(&fd, Backlog::new(16).expect("a valid backlog"))?;
            Ok(TcpListener::from(fd))
        })
        .map_err(failed("TCP"))?;
    Ok(Sockets { udp, tcp })
}
