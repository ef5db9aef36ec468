//! The forwards against a stand-in agent: a hybrid vsock socket that answers `Connect` and
//! `ConnectUdp` by upper-casing what it gets, as the guest's agent would carry it to a
//! server and back. The guest side is proven with real VMs in `tests/e2e_auto_ports.rs`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::config::vm::tests::sample;

fn fake_agent(dir: &Path) -> PathBuf {
    agent(dir, false)
}

/// The stand-in agent; a `silent` one takes every connection and then neither reads,
/// answers nor closes, as a hostile guest's may. What reaches it over `Connect` is also
/// appended to `received` in `dir`.
fn agent(dir: &Path, silent: bool) -> PathBuf {
    let path = dir.join("vsock.sock");
    let received = dir.join("received");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let received = received.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                let mut writer = stream;
                writer.write_all(b"OK 1\n").unwrap();
                match Frame::read_from(&mut reader) {
                    Ok(Some(_)) if silent => {
                        Frame::Pong(0).write_to(&mut writer).unwrap();
                        std::thread::sleep(Duration::from_secs(600));
                    }
                    Ok(Some(Frame::Connect(_))) => {
                        Frame::Pong(0).write_to(&mut writer).unwrap();
                        let mut buffer = [0u8; 1024];
                        while let Ok(length @ 1..) = reader.read(&mut buffer) {
                            let mut log = std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&received)
                                .unwrap();
                            log.write_all(&buffer[..length]).unwrap();
                            writer.write_all(&buffer[..length].to_ascii_uppercase()).unwrap();
                        }
                        let _ = writer.shutdown(Shutdown::Both);
                    }
                    Ok(Some(Frame::ConnectUdp(_))) => {
                        Frame::Pong(0).write_to(&mut writer).unwrap();
                        while let Ok(Some(Frame::Datagram(data))) = Frame::read_from(&mut reader) {
                            Frame::Datagram(data.to_ascii_uppercase()).write_to(&mut writer).unwrap();
                        }
                    }
                    _ => {}
                }
            });
        }
    });
    path
}

/// A port no host socket uses right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn tcp_and_udp_forwards_carry_traffic_through_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let vsock = fake_agent(dir.path());
    let (host, _stop) = tcp::open(free_port(), &Target::new(&vsock, None)).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", host)).unwrap();
    client.write_all(b"hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "HELLO");

    let (host, stop) = udp::open(free_port(), &Target::new(&vsock, None)).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.connect(("127.0.0.1", host)).unwrap();
    for word in ["ping", "again"] {
        client.send(word.as_bytes()).unwrap();
        let mut buffer = [0u8; 64];
        let length = client.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], word.to_ascii_uppercase().as_bytes());
    }
    // Stopped: the port is given back.
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert!(UdpSocket::bind(("127.0.0.1", host)).is_ok());
}

/// A guest that never answers holds a bounded number of host connections (and their
/// threads): one uid's programs get at most `MAX_RELAYS_PER_UID`, the next is closed at
/// once — and another user's still gets through (root's VMs' forwards are anyone's).
#[test]
fn a_silent_guest_holds_a_bounded_number_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::new(&agent(dir.path(), true), None);
    let (host, _stop) = tcp::open(free_port(), &target).unwrap();
    let clients: Vec<TcpStream> =
        (0..tcp::MAX_RELAYS_PER_UID).map(|_| TcpStream::connect(("127.0.0.1", host)).unwrap()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while target.relays.count() < tcp::MAX_RELAYS_PER_UID {
        assert!(std::time::Instant::now() < deadline, "the relays did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut one_more = TcpStream::connect(("127.0.0.1", host)).unwrap();
    one_more.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(one_more.read(&mut [0u8; 1]).unwrap(), 0, "a connection past the cap was relayed");
    assert_eq!(target.relays.count(), tcp::MAX_RELAYS_PER_UID);
    if crate::host::is_root() {
        // Exit 124: `timeout` ended a read the silent guest never answered, so relayed.
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{host} && timeout 2 head -c 1 <&3; echo $?");
        let output = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "bash", "-c", &script])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "124", "another user was shut out");
    }
    drop(clients);
}

/// A stand-in agent that reports `listening` to a `WatchListeners` and then holds on.
fn reporting_agent(dir: &Path, listening: Listening) -> PathBuf {
    let path = dir.join("watch.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let listening = listening.clone();
            std::thread::spawn(move || {
                let mut line = [0u8; 13];
                stream.read_exact(&mut line).unwrap();
                stream.write_all(b"OK 1\n").unwrap();
                if let Ok(Some(Frame::WatchListeners)) = Frame::read_from(&mut stream) {
                    Frame::Listeners(listening).write_to(&mut stream).unwrap();
                    std::thread::sleep(Duration::from_secs(600));
                }
            });
        }
    });
    path
}

/// The agent behind `vsock` of a guest whose console has its ready line.
fn booted(run_dir: &Path, vsock: PathBuf) -> AgentTarget {
    let console = run_dir.join("console.log");
    std::fs::write(&console, format!("{}\n", crate::contract::READY_MARKER)).unwrap();
    AgentTarget { vsock, run_dir: run_dir.to_path_buf(), console }
}

/// No connection reaches the vsock backend before the guest's ready line: one made
/// while the guest's vsock driver is not up can leave the backend stuck (a VM that
/// then never answered `mvm start`, about one start in six with four at once).
#[test]
fn no_agent_connection_before_the_guest_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let vsock = dir.path().join("watch.sock");
    let listener = UnixListener::bind(&vsock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let console = dir.path().join("console.log");
    std::fs::write(&console, "Linux version 6.1\n").unwrap();
    let open = Policy { declared: BTreeSet::new(), ignored: Vec::new() };
    let target = AgentTarget { vsock, run_dir: dir.path().to_path_buf(), console: console.clone() };
    spawn(target, None, Some(open.clone()), Box::new(move || Ok(Some(open.clone()))));
    std::thread::sleep(Duration::from_millis(700));
    assert!(listener.accept().is_err(), "connected before the guest was ready");
    std::fs::write(&console, format!("{}\n", crate::contract::READY_MARKER)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while listener.accept().is_err() {
        assert!(std::time::Instant::now() < deadline, "no connection after the ready line");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the listed automatic forwards are `expected`.
fn until_listed(run_dir: &Path, expected: &[AutoForward]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::runtime::auto_forwards(run_dir) != expected {
        assert!(
            std::time::Instant::now() < deadline,
            "listed {:?}, not {expected:?}",
            crate::runtime::auto_forwards(run_dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port declared with `mvm port` while the VM runs, or automatic forwarding switched
/// off in `vm.toml`, takes the automatic forward away within seconds, with no new report
/// from the guest; switched on again, it comes back.
#[test]
fn the_forwards_follow_the_vms_config_as_it_changes() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let guest = free_port();
    let vsock = reporting_agent(dir.path(), listening(&[guest], &[]));
    let open = Policy { declared: BTreeSet::new(), ignored: Vec::new() };
    let current = Arc::new(Mutex::new(Some(open.clone())));
    let reload = {
        let current = current.clone();
        Box::new(move || Ok(current.lock().unwrap().clone()))
    };
    spawn(booted(dir.path(), vsock), None, Some(open.clone()), reload);
    let forwarded = [AutoForward { host: guest, guest, protocol: Protocol::Tcp }];
    until_listed(dir.path(), &forwarded);
    let declared = Policy { declared: BTreeSet::from([(Protocol::Tcp, guest)]), ..open.clone() };
    *current.lock().unwrap() = Some(declared);
    until_listed(dir.path(), &[]);
    *current.lock().unwrap() = Some(open);
    until_listed(dir.path(), &forwarded);
    *current.lock().unwrap() = None;
    until_listed(dir.path(), &[]);
}

/// What `uid` reads back after sending `hi` through host port `port` with bash's
/// `/dev/tcp` or `/dev/udp`.
fn answer_as(uid: u32, protocol: Protocol, port: u16) -> String {
    let script =
        format!("exec 3<>/dev/{protocol}/127.0.0.1/{port} && printf hi >&3 && timeout 2 head -c 2 <&3");
    let output = Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"])
        .args(["bash", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A user's VM's forwards answer the user's programs, and another user's get nothing:
/// the loopback is every local user's, the VM is not. Not even a program that writes and
/// closes at once, whose socket the kernel then lists as uid 0 (a closed socket's).
#[test]
fn a_users_forwards_refuse_other_users_programs() {
    if !crate::host::is_root() {
        eprintln!("skipped: switching to other uids needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vsock = fake_agent(dir.path());
    let (nobody, other) = (65534, 65533);
    let (theirs, _a) = tcp::open(free_port(), &Target::new(&vsock, Some(nobody))).unwrap();
    let (someone_elses, _b) = tcp::open(free_port(), &Target::new(&vsock, Some(other))).unwrap();
    let (roots, _c) = tcp::open(free_port(), &Target::new(&vsock, None)).unwrap();
    assert_eq!(answer_as(nobody, Protocol::Tcp, theirs), "HI", "the owner");
    assert_eq!(answer_as(nobody, Protocol::Tcp, roots), "HI", "a root VM's forward");
    assert_eq!(answer_as(nobody, Protocol::Tcp, someone_elses), "", "another user's");
    for _ in 0..10 {
        let script =
            format!("exec 3<>/dev/tcp/127.0.0.1/{someone_elses} && printf INJECTED >&3 && exec 3>&-");
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "bash", "-c", &script])
            .status()
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let received = std::fs::read_to_string(dir.path().join("received")).unwrap_or_default();
    assert!(!received.contains("INJECTED"), "write-and-close passed for root: {received:?}");
}

/// A user's VM forwards no UDP port by itself (a datagram's sender cannot be known), only
/// TCP; root's VM both.
#[test]
fn a_users_vm_forwards_tcp_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, udp) = (free_port(), free_port());
    let vsock = reporting_agent(dir.path(), listening(&[tcp], &[udp]));
    let open = Policy { declared: BTreeSet::new(), ignored: Vec::new() };
    spawn(
        booted(dir.path(), vsock),
        Some(1000),
        Some(open.clone()),
        Box::new(move || Ok(Some(open.clone()))),
    );
    until_listed(dir.path(), &[AutoForward { host: tcp, guest: tcp, protocol: Protocol::Tcp }]);
}

fn listening(tcp: &[u16], udp: &[u16]) -> Listening {
    Listening { tcp: tcp.iter().copied().collect(), udp: udp.iter().copied().collect() }
}

/// A hostile guest listening on every port gets a bounded number of host listeners, and
/// never one for a declared or ignored port; what is forwarded stays forwarded.
#[test]
fn forwards_are_capped_and_never_declared_or_ignored() {
    let policy = Policy {
        declared: BTreeSet::from([(Protocol::Tcp, 3000)]),
        ignored: vec!["5432".parse().unwrap(), "9000-9100".parse().unwrap()],
    };
    let current = BTreeSet::from([(Protocol::Tcp, 60000), (Protocol::Udp, 60001)]);
    let everything: Vec<u16> = (1..=u16::MAX).collect();
    let wanted = policy.wanted(&current, &listening(&everything, &everything));
    assert_eq!(wanted.len(), MAX_AUTO_FORWARDS);
    assert!(wanted.is_superset(&current));
    let some = listening(&[3000, 5432, 8080, 9050], &[3000, 5432, 9100, 9101]);
    assert_eq!(
        policy.wanted(&current, &some),
        BTreeSet::from([(Protocol::Tcp, 8080), (Protocol::Udp, 3000), (Protocol::Udp, 9101)])
    );
}

#[test]
fn the_policy_follows_the_vm_then_the_host() {
    let mut config = sample();
    let mut host = HostConfig::default();
    config.auto_ports = None;
    config.auto_ports_ignore = vec!["7000".parse().unwrap()];
    host.defaults.auto_ports_ignore = vec!["6000".parse().unwrap()];
    let policy = Policy::of(&config, &host).unwrap();
    assert!(!policy.allows(Protocol::Tcp, 6000) && !policy.allows(Protocol::Udp, 7000));
    assert!(!policy.allows(Protocol::Tcp, 3000), "sample() declares 8080:3000");
    assert!(policy.allows(Protocol::Udp, 3000));
    host.defaults.auto_ports = false;
    assert!(Policy::of(&config, &host).is_none());
    config.auto_ports = Some(true);
    assert!(Policy::of(&config, &host).is_some());
    host.defaults.auto_ports = true;
    config.auto_ports = Some(false);
    assert!(Policy::of(&config, &host).is_none());
}

#[test]
fn a_privileged_or_taken_port_gets_another() {
    let bind = |port| TcpListener::bind(("127.0.0.1", port));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    assert_ne!(bind_for(port, Protocol::Tcp, bind).unwrap().local_addr().unwrap().port(), port);
    drop(taken);
    // A host service on the IPv6 loopback alone: its port is not taken on 127.0.0.1 either.
    if let Ok(v6) = TcpListener::bind("[::1]:0") {
        let port = v6.local_addr().unwrap().port();
        assert_ne!(bind_for(port, Protocol::Tcp, bind).unwrap().local_addr().unwrap().port(), port);
    }
    if let Ok(listener) = bind_for(80, Protocol::Tcp, bind) {
        assert!(listener.local_addr().unwrap().port() >= 1024);
    }
}

/// A local user knocking a thousand times (or a guest flapping its listeners) writes one
/// log line, not a thousand.
#[test]
fn repeated_log_lines_are_throttled() {
    let mut throttle = Throttle::default();
    let mut written = 0;
    for _ in 0..1000 {
        throttle.log(|| {
            written += 1;
            "refused".into()
        });
    }
    assert_eq!((written, throttle.left_out), (1, 999));
}
