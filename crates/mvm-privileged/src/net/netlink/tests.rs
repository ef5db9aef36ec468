//! The requests byte for byte, written out field by field from `<linux/netlink.h>`,
//! `<linux/rtnetlink.h>` and `<linux/if_link.h>`, and the decoding of replies captured
//! from a 6.18 kernel in a fresh network namespace (Python's netlink socket, not this
//! code). Little-endian, as captured.

use std::net::Ipv4Addr;

use super::message::{self, Request};
use super::{Link, Route};
use mvm_base::addr::Ipv4Net;

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|byte| !byte.is_ascii_whitespace()).collect();
    digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
}

fn bytes(request: Request) -> Vec<u8> {
    request.finish(7).unwrap()
}

/// An nlmsghdr of `len` bytes, type `kind`, flags `flags`, seq 7, port 0.
fn header(len: u32, kind: u16, flags: u16) -> Vec<u8> {
    [&len.to_le_bytes()[..], &kind.to_le_bytes(), &flags.to_le_bytes(), &[7, 0, 0, 0], &[0, 0, 0, 0]].concat()
}

#[test]
fn add_bridge_is_a_new_link_of_kind_bridge_left_down() {
    let expected = [
        // RTM_NEWLINK (16); NLM_F_REQUEST 0x1 | NLM_F_ACK 0x4 | NLM_F_EXCL 0x200 | NLM_F_CREATE 0x400
        header(60, 16, 0x605),
        // ifinfomsg: family AF_UNSPEC, pad, type 0; index 0; flags 0; change IFF_UP
        vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        // IFLA_IFNAME (3): 4 + 7 bytes, padded to 12
        [&[11, 0, 3, 0][..], b"mvmbr0\0", &[0]].concat(),
        // IFLA_LINKINFO (18) | NLA_F_NESTED (0x8000): 4 + 12 bytes
        vec![16, 0, 18, 0x80],
        // IFLA_INFO_KIND (1): 4 + 7 bytes, padded to 12
        [&[11, 0, 1, 0][..], b"bridge\0", &[0]].concat(),
    ]
    .concat();
    assert_eq!(bytes(message::add_bridge("mvmbr0")), expected);
}

#[test]
fn set_alias_sets_ifla_ifalias_of_the_link() {
    let expected = [
        // RTM_SETLINK (19); NLM_F_REQUEST | NLM_F_ACK
        header(44, 19, 0x5),
        // ifinfomsg: index 3, no flags changed
        vec![0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        // IFLA_IFALIAS (20): 4 + 5 bytes, padded to 12
        [&[9, 0, 20, 0][..], b"vm x\0", &[0, 0, 0]].concat(),
    ]
    .concat();
    assert_eq!(bytes(message::set_alias(3, "vm x")), expected);
}

#[test]
fn link_changes_set_iff_up_master_or_delete() {
    // ifinfomsg of index 5 with IFF_UP set in flags and change
    let up = vec![0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0];
    // RTM_SETLINK (19), then IFLA_MASTER (10) = 4
    let attach = [header(40, 19, 0x5), up.clone(), vec![8, 0, 10, 0, 4, 0, 0, 0]].concat();
    assert_eq!(bytes(message::set_up(5, Some(4))), attach);
    assert_eq!(bytes(message::set_up(5, None)), [header(32, 19, 0x5), up].concat());
    // RTM_DELLINK (17), index 5
    let delete = [header(32, 17, 0x5), vec![0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]].concat();
    assert_eq!(bytes(message::delete_link(5)), delete);
}

#[test]
fn set_address_replaces_with_local_and_broadcast() {
    let expected = [
        // RTM_NEWADDR (20); NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE 0x100 | NLM_F_CREATE 0x400
        header(48, 20, 0x505),
        // ifaddrmsg: AF_INET (2), prefix 24, flags 0, scope universe (0); index 7
        vec![2, 24, 0, 0, 7, 0, 0, 0],
        // IFA_ADDRESS (1), IFA_LOCAL (2): 10.0.0.1; IFA_BROADCAST (4): 10.0.0.255
        vec![8, 0, 1, 0, 10, 0, 0, 1],
        vec![8, 0, 2, 0, 10, 0, 0, 1],
        vec![8, 0, 4, 0, 10, 0, 0, 255],
    ]
    .concat();
    assert_eq!(bytes(message::set_address(7, Ipv4Addr::new(10, 0, 0, 1), 24)), expected);
    // A /31 has no broadcast address.
    let point_to_point = bytes(message::set_address(7, Ipv4Addr::new(10, 0, 0, 1), 31));
    assert_eq!(point_to_point.len(), 40);
    assert_eq!(point_to_point[0..4], [40, 0, 0, 0]);
}

#[test]
fn set_default_route_replaces_a_static_main_table_route() {
    let expected = [
        // RTM_NEWROUTE (24); NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
        header(36, 24, 0x505),
        // rtmsg: AF_INET, dst_len 0, src_len 0, tos 0, RT_TABLE_MAIN (254), RTPROT_STATIC (4),
        // RT_SCOPE_UNIVERSE (0), RTN_UNICAST (1); flags 0
        vec![2, 0, 0, 0, 254, 4, 0, 1, 0, 0, 0, 0],
        // RTA_GATEWAY (5): 10.0.0.1
        vec![8, 0, 5, 0, 10, 0, 0, 1],
    ]
    .concat();
    assert_eq!(bytes(message::set_default_route(Ipv4Addr::new(10, 0, 0, 1))), expected);
}

#[test]
fn dumps_ask_for_every_link_address_and_route() {
    // NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP (NLM_F_ROOT 0x100 | NLM_F_MATCH 0x200)
    let links = [header(32, 18, 0x305), vec![0; 16]].concat();
    assert_eq!(bytes(message::get_links()), links);
    let addresses = [header(24, 22, 0x305), vec![2, 0, 0, 0, 0, 0, 0, 0]].concat();
    assert_eq!(bytes(message::get_addresses()), addresses);
    let routes = [header(28, 26, 0x305), vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]].concat();
    assert_eq!(bytes(message::get_routes()), routes);
}

#[test]
fn an_attribute_too_long_for_its_length_field_is_refused() {
    let error = message::set_alias(3, &"x".repeat(70_000)).finish(1).unwrap_err();
    assert!(error.to_string().contains("too long"), "{error}");
}

/// The payloads of messages of type `kind` in `datagram`, and whether it answers seq 101.
fn payloads(datagram: &[u8], kind: u16) -> (Vec<Vec<u8>>, anyhow::Result<bool>) {
    let mut payloads = Vec::new();
    let answered = message::replies(datagram, 101, kind, |payload| payloads.push(payload.to_vec()));
    (payloads, answered)
}

#[test]
fn a_tap_link_reports_name_controller_alias_and_owner() {
    let (payloads, answered) = payloads(&hex(TAP_LINK), 16);
    assert!(!answered.unwrap(), "a link is not the acknowledgement");
    let links: Vec<Link> = payloads.iter().map(|payload| message::link(payload).unwrap()).collect();
    let tap = Link {
        index: 3,
        name: "tap0".into(),
        controller: Some(2),
        tun_owner: Some(1000),
        alias: Some("vm x".into()),
    };
    assert_eq!(links, [tap]);
    assert!(message::replies(&hex(ACK), 101, 16, |_| panic!("an ack has no payload to hand on")).unwrap());
}

#[test]
fn only_a_tun_link_has_an_owner_and_an_empty_alias_is_none() {
    let link = [
        // ifinfomsg: index 9
        &[0, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        // IFLA_IFALIAS: "" (NUL only)
        &[5, 0, 20, 0, 0, 0, 0, 0],
        // IFLA_LINKINFO (4 + 12 + 12 bytes) { IFLA_INFO_KIND "bridge" (4 + 7, padded),
        // IFLA_INFO_DATA (4 + 8) { attribute 1 (IFLA_BR_FORWARD_DELAY, not an owner) = 1500 } }
        &[28, 0, 18, 0x80],
        &[11, 0, 1, 0],
        b"bridge\0\0",
        &[12, 0, 2, 0x80, 8, 0, 1, 0, 0xdc, 0x05, 0, 0],
    ]
    .concat();
    let expected = Link { index: 9, name: String::new(), controller: None, tun_owner: None, alias: None };
    assert_eq!(message::link(&link).unwrap(), expected);
}

#[test]
fn addresses_are_read_from_a_dump_until_done() {
    let (payloads, answered) = payloads(&hex(ADDRESSES), 20);
    assert!(!answered.unwrap());
    let addresses: Vec<_> = payloads.iter().map(|payload| message::address(payload).unwrap()).collect();
    assert_eq!(
        addresses,
        [Some((1, Ipv4Addr::new(127, 0, 0, 1), 8)), Some((2, Ipv4Addr::new(10, 0, 0, 1), 24))]
    );
    assert!(message::replies(&hex(DONE), 101, 20, |_| panic!("done has no payload to hand on")).unwrap());
}

#[test]
fn routes_are_the_main_tables_only() {
    let (payloads, answered) = payloads(&hex(ROUTES), 24);
    assert!(!answered.unwrap());
    assert_eq!(payloads.len(), 7);
    let routes: Vec<Route> = payloads.iter().filter_map(|payload| message::route(payload).unwrap()).collect();
    let route = |network: &str, device| Route { destination: network.parse::<Ipv4Net>().unwrap(), device };
    assert_eq!(routes, [route("0.0.0.0/0", Some(2)), route("10.0.0.0/24", Some(2))]);
}

#[test]
fn a_kernel_error_is_the_io_error_of_its_errno() {
    let error = message::replies(&hex(EXISTS), 101, 16, |_| {}).unwrap_err();
    let io = error.downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(io.raw_os_error(), Some(nix::libc::EEXIST));
    assert_eq!(io.kind(), std::io::ErrorKind::AlreadyExists);
    // A dump that fails says so in its NLMSG_DONE: here -EBUSY (16).
    let busy = [&hex(DONE)[..16], &(-16i32).to_le_bytes()].concat();
    let error = message::replies(&busy, 101, 16, |_| {}).unwrap_err();
    assert_eq!(error.downcast_ref::<std::io::Error>().unwrap().raw_os_error(), Some(16));
}

#[test]
fn replies_to_another_request_are_skipped() {
    assert!(!message::replies(&hex(ACK), 102, 16, |_| panic!("not ours")).unwrap());
    assert!(!message::replies(&hex(EXISTS), 102, 16, |_| panic!("not ours")).unwrap());
    assert!(!message::replies(&hex(ROUTES), 100, 24, |_| panic!("not ours")).unwrap());
}

#[test]
fn malformed_replies_are_errors() {
    let link = hex(TAP_LINK);
    // A datagram cut inside a message, or inside a header.
    assert!(message::replies(&link[..100], 101, 16, |_| {}).is_err());
    assert!(message::replies(&link[..10], 101, 16, |_| {}).is_err());
    // A message shorter than its header.
    let mut short = hex(ACK);
    short[0] = 12;
    assert!(message::replies(&short, 101, 16, |_| {}).is_err());
    // Payloads shorter than their family header.
    assert!(message::link(&[0; 15]).is_err());
    assert!(message::address(&[2, 24, 0, 0]).is_err());
    assert!(message::route(&[2; 11]).is_err());
    // An attribute longer than what is left, or shorter than its own header.
    let payload = &hex(ADDRESSES)[16..76];
    let mut long = payload.to_vec();
    long[8] = 0xff; // IFA_ADDRESS's length
    assert!(message::address(&long).is_err());
    let mut tiny = payload.to_vec();
    tiny[8] = 2;
    assert!(message::address(&tiny).is_err());
    // A u32 attribute of 3 bytes (IFLA_MASTER), an address of 5.
    assert!(message::link(&[&[0; 16][..], &[7, 0, 10, 0, 1, 2, 3, 0]].concat()).is_err());
    assert!(message::address(
        &[&[2, 24, 0, 0, 1, 0, 0, 0][..], &[9, 0, 1, 0, 1, 2, 3, 4, 5, 0, 0, 0]].concat()
    )
    .is_err());
}

/// No corruption of a captured reply panics or reads out of bounds: each byte set to
/// each of a few values, and every truncation.
#[test]
fn no_corruption_panics() {
    for fixture in [TAP_LINK, ADDRESSES, ROUTES, EXISTS, ACK] {
        let datagram = hex(fixture);
        let decode = |datagram: &[u8]| {
            let _ = message::replies(datagram, 101, 16, |payload| drop(message::link(payload)));
            let _ = message::replies(datagram, 101, 20, |payload| drop(message::address(payload)));
            let _ = message::replies(datagram, 101, 24, |payload| drop(message::route(payload)));
        };
        for len in 0..datagram.len() {
            decode(&datagram[..len]);
        }
        for index in 0..datagram.len() {
            for value in [0, 1, 3, 4, 5, 0x7f, 0x80, 0xff] {
                let mut corrupt = datagram.clone();
                corrupt[index] = value;
                decode(&corrupt);
            }
        }
    }
}

/// `ip link get` of tap `tap0` (index 3, owner 1000) on bridge index 2, alias "vm x":
/// one RTM_NEWLINK, seq 101.
const TAP_LINK: &str = "
    7007000010000000650000007c1400000000010003000000021000000000000009000300746170300000000008000d00
    e803000005001000020000000500110000000000050043000000000008000400dc050000080032004400000008003300
    f1ff000008001b000000000008001e000100000008003d000100000008001f000100000008002800ffff000008002900
    0000010008003a000000010008003f0000000100080040000000010008003b000000010008003c00ffff000008004200
    00000000080020000100000008000a0002000000050021000000000009001400766d2078000000000800230001000000
    08002f000000000008003000010000000600440000000000060045000000000005002700000000000a0001007a9d5e8c
    557000000a000200ffffffffffff0000cc00170000000000000000000000000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000006400070000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    00000000000000000000000000000000000000000000000000000000000000000c002b0005000200000000009c011200
    0800010074756e0034000200050003000200000008000100e80300000500040000000000050005000000000005000600
    0100000005000700000000000b0004006272696467650000500105000500010000000000060002002000000008000300
    02000000050004000000000005000500000000000500060000000000050007000000000005001c000000000005000800
    01000000050009000100000005001b000100000005001e000100000005000a000000000005000c00000000000c000d00
    80007a9d5e8c55700c000e0080007a9d5e8c557006000f00018000000600100000000000060011000180000006001200
    010000000500130000000000050014000000000005001d000000000006001f0000000000050020000000000005002300
    00000000050024000000000005002100000000000500270000000000050028000000000005002b00000000000c001500
    00000000000000000c00160000000000000000000c001700000000000000000005001900010000000800250000020000
    0800260000000000080029000000000008002a0000000000090006006e6f6f700000000030031a008c00020088000100
    000000000000000000000000010000000100000001000000010000000000000001000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    000000000000000010270000e80300000000000000000000000000000000000001000000a0020a000800010000000000
    14000500ffff00003e22050008710000e8030000f40002000000000040000000dc050000010000000100000001000000
    01000000ffffffffa00f0000e803000000000000803a0900805101000300000058020000100000000000000001000000
    010000000100000060ea0000000000000000000000000000000000000000000000000000010000000000000000000000
    10270000e803000001000000000000000000000001000000000000000000000001000000000000000000000000000000
    0000000080ee360000000000000000000100000000000000000000000000000000000000000000000004000000000000
    ffff0000ffffffff01000000000000000000000000000000340103002600000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    00000000000000000000000000000000000000000000000000000000000000000000000000000000000000003c000600
    070000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
    00000000000000001400070000000000000000000000000000000000050008000000000024000e000000000000000000
    00000000000000000000000000000000000000000000000004003e8004004180
";
/// The acknowledgement of an RTM_SETLINK, seq 101.
const ACK: &str = "
    2400000002000001650000009d1600000000000020000000130005006500000000000000
";
/// The first datagram of an IPv4 address dump, seq 101: 127.0.0.1/8 on lo (1),
/// 10.0.0.1/24 on br0 (2).
const ADDRESSES: &str = "
    4c0000001400020065000000cd160000020880fe01000000080001007f000001080002007f000001070003006c6f0000
    080008008000000014000600ffffffffffffffff5d2805005d2805004c0000001400020065000000cd16000002188000
    02000000080001000a000001080002000a0000010800030062723000080008008000000014000600ffffffffffffffff
    5e2805005e280500
";
/// The first datagram of an IPv4 route dump, seq 101: main table default via
/// 10.0.0.254 and 10.0.0.0/24 on link 2; local table routes.
const ROUTES: &str = "
    340000001800020065000000f616000002000000fe0300010000000008000f00fe000000080005000a0000fe08000400
    020000003c0000001800020065000000f616000002180000fe02fd010000000008000f00fe000000080001000a000000
    080007000a00000108000400020000003c0000001800020065000000f616000002200000ff02fe020000000008000f00
    ff000000080001000a000001080007000a00000108000400020000003c0000001800020065000000f616000002200000
    ff02fd030000000008000f00ff000000080001000a0000ff080007000a00000108000400020000003c00000018000200
    65000000f616000002080000ff02fe020000000008000f00ff000000080001007f000000080007007f00000108000400
    010000003c0000001800020065000000f616000002200000ff02fe020000000008000f00ff000000080001007f000001
    080007007f00000108000400010000003c0000001800020065000000f616000002200000ff02fd030000000008000f00
    ff000000080001007fffffff080007007f0000010800040001000000
";
/// The reply to RTM_NEWLINK of an existing `br0`, seq 101: NLMSG_ERROR, -EEXIST.
const EXISTS: &str = "
    3c0000000200000065000000f7140000efffffff28000000100005066500000000000000000000000000000000000000
    010000000800030062723000
";
/// The end of a dump, seq 101, status 0.
const DONE: &str = "140000000300020065000000cd16000000000000";
