//! DNS for the guests that follows the host (issue 14, part 2). Each VM's supervisor
//! answers DNS on the VM's gateway address (`GATEWAY_DNS_PORT`; the guest's port 53 is
//! DNAT'ed there, and only its own VM may reach it) with what the host itself resolves:
//! names in the host's `/etc/hosts` first, then whatever the nameservers of the host's
//! `/etc/resolv.conf` answer — loopback stubs (systemd-resolved, a VPN client's resolver)
//! included, which the guest could never reach itself. Both files are read per query, so a
//! VPN that comes up or a changed resolver applies at once, with no VM restart. An
//! `--offline` VM gets `REFUSED`.
//!
//! Queries come over UDP and TCP (a truncated UDP answer makes the guest ask again over
//! TCP, and a TCP query goes upstream over TCP). Messages are parsed and built with
//! `hickory-proto`; a forwarded query's answer is relayed as the upstream sent it.

mod answer;
mod tcp;

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use answer::answer;

/// How a query came, and how it goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The host port the guests' DNS queries are sent to, on each VM's gateway address.
pub const GATEWAY_DNS_PORT: u16 = 6300;

/// Where the host's own resolver configuration is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResolver {
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
}

impl HostResolver {
    /// The host's files (`MVM_RESOLV_CONF` and `MVM_HOSTS` name others, for tests).
    pub fn from_env() -> HostResolver {
        let var = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map_or_else(|| default.into(), PathBuf::from)
        };
        HostResolver {
            resolv_conf: var("MVM_RESOLV_CONF", "/etc/resolv.conf"),
            hosts: var("MVM_HOSTS", "/etc/hosts"),
        }
    }
}

/// The most queries answered at once; more are dropped (the guest asks again).
const MAX_IN_FLIGHT: usize = 64;

/// A VM's DNS sockets on its gateway.
pub struct Sockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

/// Answers every query arriving on `sockets`, each on a thread of its own, for as long as
/// the process lives.
pub fn serve(sockets: Sockets, resolver: HostResolver, offline: bool) {
    tcp::serve(sockets.tcp, resolver.clone(), offline);
    let socket = Arc::new(sockets.udp);
    let in_flight = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            let Ok((length, client)) = socket.recv_from(&mut buffer) else { continue };
            if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (query, socket, resolver, in_flight) =
                (buffer[..length].to_vec(), socket.clone(), resolver.clone(), in_flight.clone());
            std::thread::spawn(move || {
                if let Some(reply) = answer(&query, &resolver, offline, Transport::Udp) {
                    let _ = socket.send_to(&reply, client);
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

/// Binds the DNS sockets of a VM whose gateway is `gateway`, before the gateway address
/// exists (`IP_FREEBIND`): they outlive the bridge across a guest's reboot.
pub fn bind(gateway: std::net::Ipv4Addr) -> std::io::Result<Sockets> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    let address = SockaddrIn::from(std::net::SocketAddrV4::new(gateway, GATEWAY_DNS_PORT));
    let open = |kind: SockType| -> std::io::Result<std::os::fd::OwnedFd> {
        let fd = socket(AddressFamily::Inet, kind, SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&fd, sockopt::IpFreebind, &true)?;
        // For TCP, so a restarted supervisor binds past its old connections' TIME_WAIT
        // (never for UDP: there it would let another socket share the port).
        if kind == SockType::Stream {
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        }
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &address)?;
        Ok(fd)
    };
    let udp = UdpSocket::from(open(SockType::Datagram)?);
    let tcp = open(SockType::Stream)?;
    listen(&tcp, Backlog::new(16).expect("a valid backlog"))?;
    Ok(Sockets { udp, tcp: TcpListener::from(tcp) })
}
