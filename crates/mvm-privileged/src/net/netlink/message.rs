//! NETLINK_ROUTE messages as bytes, with no I/O: the requests mvm sends, built into a
//! byte vector, and the replies it reads, split into messages and attributes.
//!
//! Layouts are those of `<linux/netlink.h>` and `<linux/rtnetlink.h>`, in host byte
//! order: a 16-byte `nlmsghdr`, a family header (`ifinfomsg`, `ifaddrmsg`, `rtmsg`), then
//! attributes, each a 4-byte `nlattr` and a value padded to 4 bytes. Every length a
//! reply states is checked against the bytes there: a malformed reply is an error.

use std::io;
use std::net::Ipv4Addr;

use anyhow::{bail, ensure, Context};
use nix::libc;

use super::{Link, Route};
use mvm_base::addr::Ipv4Net;

/// `sizeof(struct nlmsghdr)`.
const HEADER_LEN: usize = 16;
/// `sizeof(struct ifinfomsg)`, `sizeof(struct ifaddrmsg)`, `sizeof(struct rtmsg)`.
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;
/// `sizeof(struct nlattr)`.
const ATTRIBUTE_HEADER_LEN: usize = 4;
/// `IFLA_TUN_OWNER` of `<linux/if_link.h>`, which libc lacks.
const IFLA_TUN_OWNER: u16 = 1;

/// `len` rounded up to the 4-byte alignment of messages and attributes.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A request being built: header, family header, attributes.
pub struct Request {
    bytes: Vec<u8>,
    /// An attribute too long for its 16-bit length, reported by [`Request::finish`].
    too_long: bool,
}

impl Request {
    /// A request of type `kind`, flagged NLM_F_REQUEST|NLM_F_ACK and `flags`.
    fn new(kind: u16, flags: i32) -> Request {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16;
        let mut bytes = vec![0; HEADER_LEN];
        bytes[4..6].copy_from_slice(&kind.to_ne_bytes());
        bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
        Request { bytes, too_long: false }
    }

    /// Appends an `ifinfomsg` for link `index` (0: none), setting `flags` of `change`.
    fn link(mut self, index: u32, flags: i32, change: i32) -> Request {
        self.bytes.extend([libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, ifi_type
        self.bytes.extend(index.to_ne_bytes());
        self.bytes.extend((flags as u32).to_ne_bytes());
        self.bytes.extend((change as u32).to_ne_bytes());
        self
    }

    /// Appends an IPv4 `ifaddrmsg` for link `index`: no flags, universe scope.
    fn address(mut self, prefix: u8, index: u32) -> Request {
        self.bytes.extend([libc::AF_INET as u8, prefix, 0, libc::RT_SCOPE_UNIVERSE]);
        self.bytes.extend(index.to_ne_bytes());
        self
    }

    /// Appends an IPv4 `rtmsg` for destination 0.0.0.0/0 (a dump's: every route).
    fn route(mut self, table: u8, protocol: u8, kind: u8) -> Request {
        // family, dst_len, src_len, tos, table, protocol, scope, type, then 4 bytes of flags
        self.bytes.extend([libc::AF_INET as u8, 0, 0, 0, table, protocol, libc::RT_SCOPE_UNIVERSE, kind]);
        self.bytes.extend([0; 4]);
        self
    }

    /// Appends attribute `kind` holding `value`, padded.
    fn attribute(mut self, kind: u16, value: &[u8]) -> Request {
        let Ok(len) = u16::try_from(ATTRIBUTE_HEADER_LEN + value.len()) else {
            self.too_long = true;
            return self;
        };
        self.bytes.extend(len.to_ne_bytes());
        self.bytes.extend(kind.to_ne_bytes());
        self.bytes.extend(value);
        self.bytes.resize(align(self.bytes.len()), 0);
        self
    }

    /// Appends a NUL-terminated string attribute.
    fn string(self, kind: u16, value: &str) -> Request {
        self.attribute(kind, &[value.as_bytes(), &[0]].concat())
    }

    /// Appends attribute `kind` (flagged NLA_F_NESTED) holding what `inner` appends.
    fn nested(mut self, kind: u16, inner: impl FnOnce(Request) -> Request) -> Request {
        let start = self.bytes.len();
        self = inner(self.attribute(kind | libc::NLA_F_NESTED as u16, &[]));
        match u16::try_from(self.bytes.len() - start) {
            Ok(len) => self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes()),
            Err(_) => self.too_long = true,
        }
        self
    }

    /// The request's bytes, with its length and sequence number `seq` in its header.
    pub fn finish(mut self, seq: u32) -> anyhow::Result<Vec<u8>> {
        ensure!(!self.too_long, "a netlink attribute is too long");
        let len = u32::try_from(self.bytes.len()).context("a netlink request is too long")?;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes[8..12].copy_from_slice(&seq.to_ne_bytes());
        Ok(self.bytes)
    }
}

/// Dumps every link.
pub fn get_links() -> Request {
    Request::new(libc::RTM_GETLINK, libc::NLM_F_DUMP).link(0, 0, 0)
}

/// Creates bridge `name`, down; never takes an existing link.
pub fn add_bridge(name: &str) -> Request {
    Request::new(libc::RTM_NEWLINK, libc::NLM_F_CREATE | libc::NLM_F_EXCL)
        .link(0, 0, libc::IFF_UP)
        .string(libc::IFLA_IFNAME, name)
        .nested(libc::IFLA_LINKINFO, |info| info.string(libc::IFLA_INFO_KIND, "bridge"))
}

/// Sets link `index`'s alias.
pub fn set_alias(index: u32, alias: &str) -> Request {
    Request::new(libc::RTM_SETLINK, 0).link(index, 0, 0).string(libc::IFLA_IFALIAS, alias)
}

/// Brings link `index` up, enslaved to `controller` when given.
pub fn set_up(index: u32, controller: Option<u32>) -> Request {
    let request = Request::new(libc::RTM_SETLINK, 0).link(index, libc::IFF_UP, libc::IFF_UP);
    match controller {
        Some(controller) => request.attribute(libc::IFLA_MASTER, &controller.to_ne_bytes()),
        None => request,
    }
}

/// Deletes link `index`.
pub fn delete_link(index: u32) -> Request {
    Request::new(libc::RTM_DELLINK, 0).link(index, 0, 0)
}

/// Sets `address/prefix` on link `index` (replacing an identical one), with the
/// subnet's broadcast address below /31.
pub fn set_address(index: u32, address: Ipv4Addr, prefix: u8) -> Request {
    let request = Request::new(libc::RTM_NEWADDR, libc::NLM_F_REPLACE | libc::NLM_F_CREATE)
        .address(prefix, index)
        .attribute(libc::IFA_ADDRESS, &address.octets())
        .attribute(libc::IFA_LOCAL, &address.octets());
    if prefix >= 31 {
        return request;
    }
    let broadcast = Ipv4Addr::from(u32::from(address) | u32::MAX >> prefix);
    request.attribute(libc::IFA_BROADCAST, &broadcast.octets())
}

/// Dumps the IPv4 addresses of every link.
pub fn get_addresses() -> Request {
    Request::new(libc::RTM_GETADDR, libc::NLM_F_DUMP).address(0, 0)
}

/// Adds the default route via `gateway` (main table, static, universe scope, unicast),
/// or replaces it.
pub fn set_default_route(gateway: Ipv4Addr) -> Request {
    Request::new(libc::RTM_NEWROUTE, libc::NLM_F_REPLACE | libc::NLM_F_CREATE)
        .route(libc::RT_TABLE_MAIN, libc::RTPROT_STATIC, libc::RTN_UNICAST)
        .attribute(libc::RTA_GATEWAY, &gateway.octets())
}

/// Dumps the IPv4 routes of every table.
pub fn get_routes() -> Request {
    Request::new(libc::RTM_GETROUTE, libc::NLM_F_DUMP).route(0, 0, 0)
}

/// Reads a datagram of replies to request `seq`: hands the payload of each message of
/// type `kind` (0: none) to `each` and says whether the request is answered (acknowledged,
/// or its dump done). A kernel error is the `io::Error` of its errno. Messages with
/// another sequence number (late parts of an earlier request) are skipped.
pub fn replies(datagram: &[u8], seq: u32, kind: u16, mut each: impl FnMut(&[u8])) -> anyhow::Result<bool> {
    for message in records(datagram, HEADER_LEN)? {
        let (message_kind, payload) = (u16_at(message, 4)?, &message[HEADER_LEN..]);
        match i32::from(message_kind) {
            _ if u32_at(message, 8)? != seq => {}
            libc::NLMSG_ERROR | libc::NLMSG_DONE => {
                // An NLMSG_DONE may come without its status.
                let code = if payload.is_empty() { 0 } else { u32_at(payload, 0)? as i32 };
                ensure!(code <= 0, "malformed netlink reply: error code {code}");
                if code < 0 {
                    return Err(io::Error::from_raw_os_error(code.saturating_neg()).into());
                }
                return Ok(true);
            }
            libc::NLMSG_OVERRUN => bail!("netlink lost part of a reply"),
            _ if message_kind == kind && kind != 0 => each(payload),
            _ => {}
        }
    }
    Ok(false)
}

/// The attributes in `bytes`, as (type without flags, value).
fn attributes(bytes: &[u8]) -> anyhow::Result<Vec<(u16, &[u8])>> {
    let attributes = records(bytes, ATTRIBUTE_HEADER_LEN)?.into_iter();
    attributes
        .map(|attribute| Ok((u16_at(attribute, 2)? & libc::NLA_TYPE_MASK as u16, &attribute[4..])))
        .collect()
}

/// `bytes` split into messages (`header_len` 16: a u32 length first) or attributes (4: a
/// u16 length first), each as long as its length says, header included; each starts
/// 4-byte aligned.
fn records(bytes: &[u8], header_len: usize) -> anyhow::Result<Vec<&[u8]>> {
    let mut rest = bytes;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let len =
            if header_len == HEADER_LEN { u32_at(rest, 0)? as usize } else { usize::from(u16_at(rest, 0)?) };
        ensure!(
            (header_len..=rest.len()).contains(&len),
            "malformed netlink reply: {len} bytes stated where {} are left",
            rest.len()
        );
        records.push(&rest[..len]);
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(records)
}

/// The link an `RTM_NEWLINK` message describes.
pub fn link(payload: &[u8]) -> anyhow::Result<Link> {
    let (header, attributes_bytes) = split(payload, IFINFOMSG_LEN, "ifinfomsg")?;
    let mut link = Link {
        index: u32_at(header, 4)?,
        name: String::new(),
        controller: None,
        tun_owner: None,
        alias: None,
    };
    for (kind, value) in attributes(attributes_bytes)? {
        match kind {
            libc::IFLA_IFNAME => link.name = string(value),
            libc::IFLA_MASTER => link.controller = Some(u32_of(value)?),
            libc::IFLA_IFALIAS => link.alias = Some(string(value)).filter(|alias| !alias.is_empty()),
            libc::IFLA_LINKINFO => link.tun_owner = tun_owner(value)?,
            _ => {}
        }
    }
    Ok(link)
}

/// `IFLA_TUN_OWNER` in a link's `IFLA_LINKINFO`, when the link is a tun/tap with an owner.
fn tun_owner(link_info: &[u8]) -> anyhow::Result<Option<u32>> {
    let infos = attributes(link_info)?;
    let find = |wanted: u16| infos.iter().find(|(kind, _)| *kind == wanted).map(|(_, value)| *value);
    if find(libc::IFLA_INFO_KIND).map(string).as_deref() != Some("tun") {
        return Ok(None);
    }
    let Some(data) = find(libc::IFLA_INFO_DATA) else { return Ok(None) };
    match attributes(data)?.into_iter().find(|(kind, _)| *kind == IFLA_TUN_OWNER) {
        Some((_, owner)) => Ok(Some(u32_of(owner)?).filter(|uid| *uid != u32::MAX)),
        None => Ok(None),
    }
}

/// The link index, address and prefix an `RTM_NEWADDR` message describes, if IPv4.
pub fn address(payload: &[u8]) -> anyhow::Result<Option<(u32, Ipv4Addr, u8)>> {
    let (header, attributes_bytes) = split(payload, IFADDRMSG_LEN, "ifaddrmsg")?;
    if i32::from(header[0]) != libc::AF_INET {
        return Ok(None);
    }
    let (prefix, index) = (header[1], u32_at(header, 4)?);
    for (kind, value) in attributes(attributes_bytes)? {
        if kind == libc::IFA_ADDRESS {
            return Ok(Some((index, ipv4_of(value)?, prefix)));
        }
    }
    Ok(None)
}

/// The route an `RTM_NEWROUTE` message describes, if an IPv4 route of the main table.
pub fn route(payload: &[u8]) -> anyhow::Result<Option<Route>> {
    let (header, attributes_bytes) = split(payload, RTMSG_LEN, "rtmsg")?;
    if i32::from(header[0]) != libc::AF_INET {
        return Ok(None);
    }
    let (prefix, mut table) = (header[1], u32::from(header[4]));
    let (mut destination, mut device) = (Ipv4Addr::UNSPECIFIED, None);
    for (kind, value) in attributes(attributes_bytes)? {
        match kind {
            libc::RTA_TABLE => table = u32_of(value)?,
            libc::RTA_DST => destination = ipv4_of(value)?,
            libc::RTA_OIF => device = Some(u32_of(value)?),
            _ => {}
        }
    }
    if table != u32::from(libc::RT_TABLE_MAIN) {
        return Ok(None);
    }
    let destination = Ipv4Net::new(destination, prefix).unwrap_or_else(|_| {
        Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("the default route is a valid network")
    });
    Ok(Some(Route { destination, device }))
}

/// `payload` split after its family header of `len` bytes.
fn split<'a>(payload: &'a [u8], len: usize, name: &str) -> anyhow::Result<(&'a [u8], &'a [u8])> {
    match payload.split_at_checked(len) {
        Some(parts) => Ok(parts),
        None => bail!("malformed netlink reply: {} bytes, too short for an {name}", payload.len()),
    }
}

/// A string attribute's value, up to its NUL.
fn string(value: &[u8]) -> String {
    let end = value.iter().position(|byte| *byte == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn u16_at(bytes: &[u8], offset: usize) -> anyhow::Result<u16> {
    Ok(u16::from_ne_bytes(array_at(bytes, offset)?))
}

fn u32_at(bytes: &[u8], offset: usize) -> anyhow::Result<u32> {
    Ok(u32::from_ne_bytes(array_at(bytes, offset)?))
}

/// A u32 attribute's value.
fn u32_of(value: &[u8]) -> anyhow::Result<u32> {
    ensure!(value.len() == 4, "malformed netlink reply: a u32 attribute of {} bytes", value.len());
    u32_at(value, 0)
}

/// An IPv4 address attribute's value.
fn ipv4_of(value: &[u8]) -> anyhow::Result<Ipv4Addr> {
    ensure!(value.len() == 4, "malformed netlink reply: an IPv4 address of {} bytes", value.len());
    Ok(Ipv4Addr::from(array_at::<4>(value, 0)?))
}

/// The `N` bytes of `bytes` at `offset`.
fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> anyhow::Result<[u8; N]> {
    bytes
        .get(offset..offset.saturating_add(N))
        .and_then(|slice| slice.try_into().ok())
        .with_context(|| format!("malformed netlink reply: {} bytes, too short", bytes.len()))
}
