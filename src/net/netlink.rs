//! Links, addresses and routes through rtnetlink, behind plain synchronous functions.
//!
//! This is the one module that knows rtnetlink is asynchronous: it owns a current-thread
//! tokio runtime that drives both the netlink connection and each request, so callers
//! (and the rest of mvm) stay synchronous. The socket lives in the network namespace of
//! the thread that created the [`Netlink`].

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoTun, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

use crate::addr::Ipv4Net;

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

/// A netlink connection with its own runtime.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> anyhow::Result<Netlink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("cannot start the netlink runtime")?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().context("cannot open a netlink socket")?;
            tokio::spawn(connection);
            anyhow::Ok(handle)
        })?;
        Ok(Netlink { runtime, handle })
    }

    /// Every link.
    pub fn links(&self) -> anyhow::Result<Vec<Link>> {
        let messages: Vec<LinkMessage> = self
            .runtime
            .block_on(self.handle.link().get().execute().try_collect())
            .context("cannot list links")?;
        Ok(messages.iter().map(link_of).collect())
    }

    /// The link named `name`, if any.
    pub fn link(&self, name: &str) -> anyhow::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|link| link.name == name))
    }

    /// Creates bridge `name` (down).
    pub fn add_bridge(&self, name: &str) -> anyhow::Result<()> {
        let message = LinkBridge::new(name).down().build();
        self.runtime
            .block_on(self.handle.link().add(message).execute())
            .with_context(|| format!("cannot create bridge {name}"))
    }

    /// Sets link `index`'s alias (which only root can change).
    pub fn set_alias(&self, index: u32, alias: &str) -> anyhow::Result<()> {
        let message = LinkUnspec::new_with_index(index).alias(alias).build();
        self.runtime
            .block_on(self.handle.link().set(message).execute())
            .with_context(|| format!("cannot name link {index} {alias:?}"))
    }

    /// Sets `address/prefix` on link `index`, replacing an identical one.
    pub fn set_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.handle.address().add(index, IpAddr::V4(address), prefix).replace().execute())
            .with_context(|| format!("cannot add {address}/{prefix} to link {index}"))
    }

    /// The IPv4 addresses of link `index`.
    pub fn addresses(&self, index: u32) -> anyhow::Result<Vec<(Ipv4Addr, u8)>> {
        let messages: Vec<_> = self
            .runtime
            .block_on(self.handle.address().get().set_link_index_filter(index).execute().try_collect())
            .context("cannot list addresses")?;
        Ok(messages
            .iter()
            .filter_map(|message| {
                message.attributes.iter().find_map(|attribute| match attribute {
                    AddressAttribute::Address(IpAddr::V4(address)) => {
                        Some((*address, message.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Enslaves link `index` to bridge `controller` and brings it up.
    pub fn attach_and_up(&self, index: u32, controller: u32) -> anyhow::Result<()> {
        let message = LinkUnspec::new_with_index(index).controller(controller).up().build();
        self.runtime
            .block_on(self.handle.link().set(message).execute())
            .with_context(|| format!("cannot attach link {index} to bridge {controller}"))
    }

    /// Brings link `index` up.
    pub fn set_up(&self, index: u32) -> anyhow::Result<()> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.runtime
            .block_on(self.handle.link().set(message).execute())
            .with_context(|| format!("cannot bring link {index} up"))
    }

    /// Deletes link `index`.
    pub fn delete(&self, index: u32) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.handle.link().del(index).execute())
            .with_context(|| format!("cannot delete link {index}"))
    }

    /// Adds (or replaces) the default route via `gateway`.
    pub fn set_default_route(&self, gateway: Ipv4Addr) -> anyhow::Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.runtime
            .block_on(self.handle.route().add(route).replace().execute())
            .with_context(|| format!("cannot add the default route via {gateway}"))
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> anyhow::Result<Vec<Route>> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let messages: Vec<_> = self
            .runtime
            .block_on(self.handle.route().get(request).execute().try_collect())
            .context("cannot list routes")?;
        Ok(messages
            .iter()
            .filter(|message| message.header.table == 254)
            .map(|message| {
                let mut destination = Ipv4Addr::UNSPECIFIED;
                let mut device = None;
                for attribute in &message.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(address)) => destination = *address,
                        RouteAttribute::Oif(index) => device = Some(*index),
                        _ => {}
                    }
                }
                let prefix = message.header.destination_prefix_length;
                Route {
                    destination: Ipv4Net::new(destination, prefix).unwrap_or_else(|_| {
                        Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("the default route is a valid network")
                    }),
                    device,
                }
            })
            .collect())
    }
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        controller: None,
        tun_owner: None,
        alias: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Controller(index) => link.controller = Some(*index),
            LinkAttribute::LinkInfo(infos) => link.tun_owner = tun_owner(infos),
            LinkAttribute::IfAlias(alias) => {
                link.alias = Some(alias.clone()).filter(|alias| !alias.is_empty())
            }
            _ => {}
        }
    }
    link
}

/// `IFLA_TUN_OWNER` of a tun/tap link's info, when it has an owner.
fn tun_owner(infos: &[LinkInfo]) -> Option<u32> {
    use rtnetlink::packet_core::Nla;
    const IFLA_TUN_OWNER: u16 = 1;
    infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Tun(attributes)) => attributes.iter().find_map(|attribute| {
            let InfoTun::Other(nla) = attribute else { return None };
            if nla.kind() != IFLA_TUN_OWNER || nla.value_len() != 4 {
                return None;
            }
            let mut value = [0u8; 4];
            nla.emit_value(&mut value);
            Some(u32::from_ne_bytes(value)).filter(|uid| *uid != u32::MAX)
        }),
        _ => None,
    })
}
