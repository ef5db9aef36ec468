//! End-to-end tier: ports that forward themselves. A server that starts listening in the
//! guest — on its loopback or on every address — answers on the host's 127.0.0.1 at the
//! same port with no `mvm port`; a port the host already uses gets the next one; a
//! declared forward is left to its DNAT; an ignored port is never forwarded; a UDP server
//! on the guest's loopback answers too; the forward goes when the listener does, and
//! `mvm port --watch --json` told of each change as it came.

mod support;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::e2e::begin;

/// `GET /` on the host's `127.0.0.1:port` (in the lab's host namespace), retried until
/// `timeout`; the status line, or why not.
fn get(lab: &support::e2e::Lab, port: u16, timeout: Duration) -> Result<String, String> {
    lab.host.run(move || {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let mut stream = TcpStream::connect(("127.0.0.1", port))?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut reply = String::new();
                stream.read_to_string(&mut reply)?;
                Ok(reply.lines().next().unwrap_or_default().to_string())
            })();
            match attempt {
                Ok(line) if line.contains("200") => return Ok(line),
                other if Instant::now() > deadline => return Err(format!("{other:?}")),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

fn listed(lab: &support::e2e::Lab) -> Vec<serde_json::Value> {
    serde_json::from_str(lab.mvm(&["port", "a", "--json"]).ok()).unwrap()
}

#[test]
fn guest_listeners_forward_themselves_and_go_away() {
    let Some((_serial, lab)) = begin("guest_listeners_forward_themselves_and_go_away") else { return };
    lab.mvm(&["create", "a", "--port", "18070:7000", "--ignore-port", "7400"]).ok();
    lab.mvm(&["start", "a"]).ok();
    let watcher = lab.command(&["port", "a", "--watch", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    let serve = |port: u16, bind: &str| {
        lab.sh("a", &format!("setsid python3 -m http.server {port} {bind} --directory / >/dev/null 2>&1 < /dev/null & echo $!"))
            .ok()
            .trim()
            .to_string()
    };
    // Loopback only: no NAT rule could reach it.
    let started = Instant::now();
    let loopback = serve(7100, "--bind 127.0.0.1");
    assert!(get(&lab, 7100, Duration::from_secs(20)).is_ok(), "a loopback listener was not forwarded");
    eprintln!("listener up -> host connect: {} ms", started.elapsed().as_millis());
    // Every address.
    serve(7200, "");
    assert!(get(&lab, 7200, Duration::from_secs(20)).is_ok(), "a wildcard listener was not forwarded");
    // A port the host uses already: the next one.
    let squatter = lab.host.run(|| std::net::TcpListener::bind("127.0.0.1:7300").unwrap());
    serve(7300, "");
    let deadline = Instant::now() + Duration::from_secs(20);
    let moved = loop {
        let found = listed(&lab).into_iter().find(|row| row["guest"] == 7300 && row["automatic"] == true);
        if let Some(row) = found {
            break row["host"].as_u64().unwrap() as u16;
        }
        assert!(Instant::now() < deadline, "guest port 7300 was not forwarded");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(moved, 7300, "the host's own listener was shadowed");
    assert!(get(&lab, moved, Duration::from_secs(10)).is_ok());
    drop(squatter);
    // A declared forward stays the firewall's.
    serve(7000, "");
    std::thread::sleep(Duration::from_secs(1));
    let rows = listed(&lab);
    assert!(rows.iter().any(|row| row["guest"] == 7000 && row.get("automatic").is_none()), "{rows:?}");
    assert!(!rows.iter().any(|row| row["guest"] == 7000 && row["automatic"] == true), "{rows:?}");
    let table = lab.mvm(&["port", "a"]).ok().to_string();
    assert!(table.contains("automatic") && table.contains("declared"), "{table}");
    // Declared while the VM runs: 7200's automatic forward gives way within seconds.
    lab.mvm(&["port", "a", "18072:7200"]).ok();
    let declared = Instant::now();
    while listed(&lab).iter().any(|row| row["guest"] == 7200 && row["automatic"] == true) {
        assert!(declared.elapsed() < Duration::from_secs(5), "7200 stayed automatic after `mvm port`");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An ignored port: never forwarded (7200's forward came within a poll; give it three).
    serve(7400, "");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!listed(&lab).iter().any(|row| row["guest"] == 7400), "an ignored port was forwarded");
    assert!(lab.host.run(|| TcpStream::connect(("127.0.0.1", 7400)).is_err()));
    // UDP, on the guest's loopback: a datagram to the host's 7500 comes back upper-cased.
    let udp_server = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('127.0.0.1', 7500))\nwhile True:\n    data, peer = s.recvfrom(2048)\n    s.sendto(data.upper(), peer)\n";
    lab.sh("a", &format!("printf \"{udp_server}\" > /tmp/udp.py && setsid python3 /tmp/udp.py >/dev/null 2>&1 < /dev/null &")).ok();
    let echoed = lab.host.run(|| {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut buffer = [0u8; 64];
            let answered =
                socket.send_to(b"ping", ("127.0.0.1", 7500)).and_then(|_| socket.recv(&mut buffer));
            if let Ok(length) = answered {
                return String::from_utf8_lossy(&buffer[..length]).into_owned();
            }
        }
        String::new()
    });
    assert_eq!(echoed, "PING", "the guest's UDP server was not forwarded");
    assert!(listed(&lab).iter().any(|row| row["guest"] == 7500 && row["protocol"] == "udp"));

    // The listener goes: so does the forward, within 3 s.
    lab.sh("a", &format!("kill {loopback}")).ok();
    let closed = Instant::now();
    loop {
        let gone = !listed(&lab).iter().any(|row| row["guest"] == 7100);
        let refused = lab.host.run(|| TcpStream::connect(("127.0.0.1", 7100)).is_err());
        if gone && refused {
            break;
        }
        assert!(closed.elapsed() < Duration::from_secs(3), "the forward outlived its listener");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("listener closed -> forward gone: {} ms", closed.elapsed().as_millis());
    lab.mvm(&["stop", "a"]).ok();
    // What the watcher saw, one JSON object a line.
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watcher.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let seen = String::from_utf8(watcher.wait_with_output().unwrap().stdout).unwrap();
    let events: Vec<serde_json::Value> =
        seen.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let saw = |event: &str, guest: u64| {
        events.iter().any(|e| e["event"] == event && e["guest"] == guest && e["automatic"] == true)
    };
    assert!(saw("added", 7100) && saw("removed", 7100) && saw("added", 7500), "{seen}");
    assert!(events.iter().any(|e| e["event"] == "added" && e["guest"] == 7000), "the declared one: {seen}");
    assert!(!events.iter().any(|e| e["guest"] == 7400), "an ignored port: {seen}");
    assert_eq!(events.last().unwrap()["event"], "stopped", "{seen}");
    lab.assert_nothing_left();
}
