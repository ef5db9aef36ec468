//! Host ports: is one already taken by a host process (and by whom), which is free, and
//! whether a VM may forward one (`check_host_port`, which the setuid helper checks too).
//!
//! A port is taken when binding it on `0.0.0.0` fails; the owner is found through the
//! socket tables of the caller's network namespace (`proc_net`) and the
//! socket inodes in `/proc/PID/fd`.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use crate::forward::PortForward;
use crate::forward::Protocol;
use crate::proc_net;
use mvm_base::error::UserError;

/// The process holding a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortOwner {
    pub pid: u32,
    pub command: String,
}

/// Why a host port cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortUse {
    Free,
    /// Taken, with the owner when it could be found.
    Taken(Option<PortOwner>),
}

/// Whether a host process holds `port`/`protocol`.
pub fn host_port_use(port: u16, protocol: Protocol) -> PortUse {
    let address = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let bound = match protocol {
        Protocol::Tcp => TcpListener::bind(address).map(drop),
        Protocol::Udp => UdpSocket::bind(address).map(drop),
    };
    match bound {
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            PortUse::Taken(owner_of(port, protocol))
        }
        _ => PortUse::Free,
    }
}

/// A host port the kernel considers free right now.
pub fn free_port(protocol: Protocol) -> std::io::Result<u16> {
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    Ok(match protocol {
        Protocol::Tcp => TcpListener::bind(any)?.local_addr()?.port(),
        Protocol::Udp => UdpSocket::bind(any)?.local_addr()?.port(),
    })
}

fn owner_of(port: u16, protocol: Protocol) -> Option<PortOwner> {
    let tables: &[&str] = match protocol {
        Protocol::Tcp => &["tcp", "tcp6"],
        Protocol::Udp => &["udp", "udp6"],
    };
    let inodes: Vec<u64> = proc_net::read(tables)
        .into_iter()
        .filter(|socket| socket.local.port() == port)
        .filter(|socket| protocol == Protocol::Udp || socket.state == proc_net::TCP_LISTEN)
        .map(|socket| socket.inode)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            let inode = target.strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']'));
            if inode.and_then(|inode| inode.parse().ok()).is_some_and(|inode: u64| inodes.contains(&inode)) {
                let command = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(PortOwner { pid, command: command.trim().to_string() });
            }
        }
    }
    None
}

/// The lowest host port a caller that is not really root may forward (the kernel's
/// `ip_unprivileged_port_start` default).
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Refuses `forward`'s host port when it is privileged and `allow_privileged` is not
/// set, or when a host process listens on it (naming the process).
pub fn check_host_port(forward: &PortForward, allow_privileged: bool) -> Result<(), UserError> {
    if forward.host < FIRST_UNPRIVILEGED_PORT && !allow_privileged {
        return Err(UserError::usage(format!(
            "host port {}/{} is below {FIRST_UNPRIVILEGED_PORT}: only root may forward it, and not through `mvm up`",
            forward.host, forward.protocol
        ))
        .hint(format!("pick a host port of {FIRST_UNPRIVILEGED_PORT} or more, e.g. 8080:{}", forward.guest)));
    }
    if let PortUse::Taken(owner) = host_port_use(forward.host, forward.protocol) {
        let by = owner.map_or("a host process".to_string(), |o| format!("process {} ({})", o.pid, o.command));
        return Err(UserError::conflict(format!(
            "host port {}/{} is already in use by {by}",
            forward.host, forward.protocol
        ))
        .hint("stop that process, or pick another host port (0 picks a free one)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_holding_a_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        match host_port_use(port, Protocol::Tcp) {
            PortUse::Taken(Some(owner)) => assert_eq!(owner.pid, std::process::id()),
            other => panic!("expected this process as owner, got {other:?}"),
        }
        drop(listener);
        assert_eq!(host_port_use(port, Protocol::Tcp), PortUse::Free);
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(matches!(host_port_use(port, Protocol::Udp), PortUse::Taken(Some(_))));
        assert_ne!(free_port(Protocol::Tcp).unwrap(), 0);
    }
}
