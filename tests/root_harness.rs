//! Root tier: the network-namespace harness itself, with real traffic. Every root-tier
//! test builds on it; here it proves that namespaces it makes carry TCP and UDP between
//! each other, stay apart from the host, and vanish afterwards even when a test fails.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use support::netns::NetNs;

/// Two namespaces joined by a veth pair: a at 192.0.2.1, b at 192.0.2.2 (TEST-NET-1).
fn linked_pair() -> (NetNs, NetNs) {
    let (a, b) = (NetNs::new("a"), NetNs::new("b"));
    a.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b.name()]);
    a.ip(&["addr", "add", "192.0.2.1/24", "dev", "v0"]);
    b.ip(&["addr", "add", "192.0.2.2/24", "dev", "v1"]);
    a.ip(&["link", "set", "v0", "up"]);
    b.ip(&["link", "set", "v1", "up"]);
    (a, b)
}

#[test]
fn namespaces_carry_tcp_and_udp_between_them() {
    if !support::require_root("namespaces_carry_tcp_and_udp_between_them") {
        return;
    }
    let (a, b) = linked_pair();
    let listener = b.run(|| TcpListener::bind("192.0.2.2:7000").unwrap());
    let udp_server = b.run(|| UdpSocket::bind("192.0.2.2:7001").unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().unwrap();
        stream.write_all(format!("hello {}", peer.ip()).as_bytes()).unwrap();
        drop(stream);
        let mut buf = [0u8; 64];
        let (n, from) = udp_server.recv_from(&mut buf).unwrap();
        udp_server.send_to(&buf[..n], from).unwrap();
    });
    let (tcp_reply, udp_reply) = a.run(|| {
        let mut stream =
            TcpStream::connect_timeout(&"192.0.2.2:7000".parse().unwrap(), Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let socket = UdpSocket::bind("192.0.2.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.send_to(b"ping", "192.0.2.2:7001").unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        (reply, String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    server.join().unwrap();
    assert_eq!(tcp_reply, "hello 192.0.2.1");
    assert_eq!(udp_reply, "ping");
}

#[test]
fn namespaces_are_isolated_from_the_host_and_removed_on_drop() {
    if !support::require_root("namespaces_are_isolated_from_the_host_and_removed_on_drop") {
        return;
    }
    let (a, b) = linked_pair();
    let names = (a.name().to_string(), b.name().to_string());
    let host_links = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert!(!Path::new("/sys/class/net/v0").exists(), "the veth must live only inside the namespaces");
    let links_in_a = a.ip(&["-o", "link", "show"]);
    assert!(links_in_a.contains("v0@"), "{links_in_a}");
    // A panic inside a test still runs the harness's cleanup.
    let result = std::panic::catch_unwind(move || {
        let _keep = (a, b);
        panic!("simulated test failure");
    });
    assert!(result.is_err());
    for name in [names.0, names.1] {
        assert!(!Path::new("/run/netns").join(&name).exists(), "{name} left behind");
    }
    assert_eq!(std::fs::read_dir("/sys/class/net").unwrap().count(), host_links);
}
