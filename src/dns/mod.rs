//! DNS for the guests that follows the host (issue 14, part 2). Each VM's supervisor
//! answers DNS on port 53 of the VM's gateway address — a privileged port, so no local
//! user can take it first and answer the guest in its place (root's supervisor binds it
//! itself; a user's gets the sockets from the setuid helper) — to the VM's own guest
//! address alone, with what the host itself resolves:
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
mod framing;
mod tcp;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use answer::answer;
pub use mvm_privileged::dns_sockets::{bind, Sockets, GATEWAY_DNS_PORT};

/// How a query came, and how it goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

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

/// A VM's DNS being served; it stops (and its sockets close) when this is dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How often a server's threads look whether to stop.
const STOP_POLL: Duration = Duration::from_millis(250);

/// Answers every query from `guest` arriving on `sockets` (a query from anywhere else is
/// dropped), each on a thread of its own, until the returned [`Server`] is dropped.
pub fn serve(
    sockets: Sockets,
    guest: Ipv4Addr,
    resolver: HostResolver,
    offline: bool,
) -> std::io::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    nix::sys::socket::setsockopt(
        &sockets.tcp,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, STOP_POLL.as_micros() as _),
    )?;
    tcp::serve(sockets.tcp, guest, resolver.clone(), offline, stop.clone());
    sockets.udp.set_read_timeout(Some(STOP_POLL))?;
    let socket = Arc::new(sockets.udp);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while !stopped.load(Ordering::SeqCst) {
            let Ok((length, client)) = socket.recv_from(&mut buffer) else { continue };
            if client.ip() != guest {
                continue;
            }
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
    Ok(Server { stop })
}
