//! Links, addresses and routes through NETLINK_ROUTE, behind plain synchronous functions.
//!
//! A small client of its own, so that the setuid helper carries no async runtime:
//! `message` builds requests and reads replies as bytes, `socket` carries them. Each call
//! sends one request and reads until the kernel acknowledges it or ends its dump; a
//! kernel error becomes the matching `io::Error`. The socket lives in the network
//! namespace of the thread that created the [`Netlink`].

mod message;
mod socket;
#[cfg(all(test, target_endian = "little"))]
mod tests;

use std::cell::Cell;
use std::net::Ipv4Addr;

use anyhow::Context;
use nix::libc;

use message::Request;
use mvm_base::addr::Ipv4Net;
use socket::Socket;

/// A link as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The index of the bridge this link is enslaved to.
    pub controller: Option<u32>,
    /// The user a tap belongs to (`TUNSETOWNER`), as the kernel reports it.
    pub tun_owner: Option<u32>,
    /// The link's alias (`IFLA_IFALIAS`): mvm names the VM a bridge was made for there.
    pub alias: Option<String>,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Net,
    pub device: Option<u32>,
}

/// A NETLINK_ROUTE connection. Not `Sync`: a request reads the socket until its own
/// reply, which another thread's request on the same socket could take.
pub struct Netlink {
    socket: Socket,
    /// The sequence number of the last request.
    seq: Cell<u32>,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> anyhow::Result<Netlink> {
        let socket = Socket::open().context("cannot open a netlink socket")?;
        Ok(Netlink { socket, seq: Cell::new(0) })
    }

    /// Every link.
    pub fn links(&self) -> anyhow::Result<Vec<Link>> {
        let mut links = Vec::new();
        self.exchange(message::get_links(), libc::RTM_NEWLINK, |payload| {
            links.push(message::link(payload)?);
            Ok(())
        })
        .context("cannot list links")?;
        Ok(links)
    }

    /// The link named `name`, if any.
    pub fn link(&self, name: &str) -> anyhow::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|link| link.name == name))
    }

    /// Creates bridge `name` (down).
    pub fn add_bridge(&self, name: &str) -> anyhow::Result<()> {
        self.request(message::add_bridge(name)).with_context(|| format!("cannot create bridge {name}"))
    }

    /// Sets link `index`'s alias (which only root can change).
    pub fn set_alias(&self, index: u32, alias: &str) -> anyhow::Result<()> {
        self.request(message::set_alias(index, alias))
            .with_context(|| format!("cannot name link {index} {alias:?}"))
    }

    /// Sets `address/prefix` on link `index`, replacing an identical one.
    pub fn set_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
        self.request(message::set_address(index, address, prefix))
            .with_context(|| format!("cannot add {address}/{prefix} to link {index}"))
    }

    /// The IPv4 addresses of link `index`.
    pub fn addresses(&self, index: u32) -> anyhow::Result<Vec<(Ipv4Addr, u8)>> {
        let mut addresses = Vec::new();
        self.exchange(message::get_addresses(), libc::RTM_NEWADDR, |payload| {
            match message::address(payload)? {
                Some((link, address, prefix)) if link == index => addresses.push((address, prefix)),
                _ => {}
            }
            Ok(())
        })
        .context("cannot list addresses")?;
        Ok(addresses)
    }

    /// Enslaves link `index` to bridge `controller` and brings it up.
    pub fn attach_and_up(&self, index: u32, controller: u32) -> anyhow::Result<()> {
        self.request(message::set_up(index, Some(controller)))
            .with_context(|| format!("cannot attach link {index} to bridge {controller}"))
    }

    /// Brings link `index` up.
    pub fn set_up(&self, index: u32) -> anyhow::Result<()> {
        self.request(message::set_up(index, None)).with_context(|| format!("cannot bring link {index} up"))
    }

    /// Deletes link `index`.
    pub fn delete(&self, index: u32) -> anyhow::Result<()> {
        self.request(message::delete_link(index)).with_context(|| format!("cannot delete link {index}"))
    }

    /// Adds (or replaces) the default route via `gateway`.
    pub fn set_default_route(&self, gateway: Ipv4Addr) -> anyhow::Result<()> {
        self.request(message::set_default_route(gateway))
            .with_context(|| format!("cannot add the default route via {gateway}"))
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> anyhow::Result<Vec<Route>> {
        let mut routes = Vec::new();
        self.exchange(message::get_routes(), libc::RTM_NEWROUTE, |payload| {
            routes.extend(message::route(payload)?);
            Ok(())
        })
        .context("cannot list routes")?;
        Ok(routes)
    }

    /// Sends `request`, which has no reply but its acknowledgement.
    fn request(&self, request: Request) -> anyhow::Result<()> {
        self.exchange(request, 0, |_| Ok(()))
    }

    /// Sends `request` and hands the payload of each reply message of type `kind` to
    /// `each`, until the acknowledgement or the end of the dump. Datagrams from anyone
    /// but the kernel are dropped; once `each` fails, the rest of the reply is read (so
    /// that the next request does not find a dump still running) and dropped.
    fn exchange(
        &self,
        request: Request,
        kind: u16,
        mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        self.socket.send(&request.finish(seq)?)?;
        let mut buffer = Vec::new();
        let mut failure = None;
        loop {
            let (len, from_kernel) = self.socket.receive(&mut buffer)?;
            let answered = from_kernel
                && message::replies(&buffer[..len], seq, kind, |payload| {
                    if failure.is_none() {
                        failure = each(payload).err();
                    }
                })?;
            if answered {
                return failure.map_or(Ok(()), Err);
            }
        }
    }
}
