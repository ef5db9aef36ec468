//! The guest's half of automatic port forwarding: reporting the listeners, and carrying a
//! host connection (TCP) or a host peer's datagrams (UDP) to a port on the guest's
//! loopback — where a NAT rule could never reach a server bound to `127.0.0.1`.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::contract::protocol::Frame;
use crate::guest::listeners;

use super::sender::{send, Sender};

/// Sends the listeners now and whenever they change, until the host hangs up.
pub(super) fn watch_listeners(sender: &Sender) {
    let mut reported = None;
    loop {
        let now = listeners::listening();
        if reported.as_ref() != Some(&now) {
            if !send(sender, &Frame::Listeners(now.clone())) {
                return;
            }
            reported = Some(now);
        }
        std::thread::sleep(listeners::POLL);
    }
}

/// Connects to TCP `port` on the loopback and splices it with `connection`.
pub(super) fn connect_tcp(connection: File, sender: &Sender, port: u16) {
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .or_else(|_| TcpStream::connect((Ipv6Addr::LOCALHOST, port)));
    match tcp {
        Ok(tcp) => {
            send(sender, &Frame::Pong(0));
            splice(connection, tcp);
        }
        Err(error) => {
            send(sender, &Frame::Error(format!("cannot connect to port {port}: {error}")));
        }
    }
}

/// Copies bytes both ways between the agent's `connection` and `tcp` until either ends.
fn splice(connection: File, tcp: TcpStream) {
    let (Ok(mut from_host), Ok(mut to_host)) = (connection.try_clone(), tcp.try_clone()) else { return };
    let mut to_guest = tcp;
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_host, &mut to_guest);
        let _ = to_guest.shutdown(Shutdown::Write);
    });
    let mut connection = connection;
    let _ = std::io::copy(&mut to_host, &mut connection);
    // The guest's side ended: so does the stream (vhost-device-vsock passes on a whole
    // shutdown, not a half one), which also ends the copy the other way.
    shutdown_both(&connection);
    let _ = upstream.join();
}

fn shutdown_both(connection: &File) {
    let _ = nix::sys::socket::shutdown(connection.as_raw_fd(), nix::sys::socket::Shutdown::Both);
}

/// Relays `Datagram` frames on `connection` to UDP `port` on the loopback and the
/// server's answers back, until the host hangs up.
pub(super) fn connect_udp(mut connection: File, sender: &Sender, port: u16) {
    let socket = if listeners::udp_on_ipv4(port) {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| s.connect((Ipv4Addr::LOCALHOST, port)).map(|()| s))
    } else {
        UdpSocket::bind((Ipv6Addr::LOCALHOST, 0))
            .and_then(|s| s.connect((Ipv6Addr::LOCALHOST, port)).map(|()| s))
    };
    let socket = match socket.and_then(|s| s.set_read_timeout(Some(Duration::from_millis(500))).map(|()| s)) {
        Ok(socket) => socket,
        Err(error) => {
            send(sender, &Frame::Error(format!("cannot reach UDP port {port}: {error}")));
            return;
        }
    };
    send(sender, &Frame::Pong(0));
    let done = Arc::new(AtomicBool::new(false));
    let answers = {
        let (socket, sender, done) = (socket.try_clone(), sender.clone(), done.clone());
        std::thread::spawn(move || {
            let Ok(socket) = socket else { return };
            let mut buffer = vec![0u8; 65536];
            while !done.load(Ordering::SeqCst) {
                match socket.recv(&mut buffer) {
                    Ok(length) => {
                        if !send(&sender, &Frame::Datagram(buffer[..length].to_vec())) {
                            return;
                        }
                    }
                    // A timeout (to look at `done`), or the server's port closed: wait on.
                    Err(_) => continue,
                }
            }
        })
    };
    while let Ok(Some(Frame::Datagram(data))) = Frame::read_from(&mut connection) {
        let _ = socket.send(&data);
    }
    done.store(true, Ordering::SeqCst);
    shutdown_both(&connection);
    let _ = answers.join();
}
