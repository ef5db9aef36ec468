//! A TCP forward: a listener on the host's loopback whose connections are each carried to
//! the guest's port through the agent (`Connect`).

use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::protocol::Frame;
use crate::spec::Protocol;

use super::{bind_for, peer};

/// Starts forwarding to guest TCP port `guest`, for `owner`'s programs (and root's) or,
/// without one, anyone's; returns the host port and the switch that stops it.
pub(super) fn open(guest: u16, vsock: &Path, owner: Option<u32>) -> io::Result<(u16, Arc<AtomicBool>)> {
    let listener = bind_for(guest, |port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))?;
    listener.set_nonblocking(true)?;
    let host = listener.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let (stopped, vsock) = (stop.clone(), vsock.to_path_buf());
    std::thread::spawn(move || serve(listener, &stopped, &vsock, guest, owner));
    Ok((host, stop))
}

fn serve(listener: TcpListener, stop: &AtomicBool, vsock: &Path, guest: u16, owner: Option<u32>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, from)) => {
                let local = listener.local_addr().expect("a bound listener has an address");
                if !peer::admitted(owner, Protocol::Tcp, local, from) {
                    log!("refused {from} on 127.0.0.1:{}: not the VM owner's program", local.port());
                    continue;
                }
                let vsock: PathBuf = vsock.to_path_buf();
                std::thread::spawn(move || relay(client, &vsock, guest));
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Carries one host connection to guest port `guest` through the agent.
fn relay(client: TcpStream, vsock: &Path, guest: u16) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let mut agent = super::agent_stream(vsock, Frame::Connect(guest))?;
    let (mut to_guest, mut from_client) = (agent.try_clone()?, client.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_guest);
        let _ = to_guest.shutdown(Shutdown::Write);
    });
    let mut to_client = client;
    let _ = io::copy(&mut agent, &mut to_client);
    let _ = to_client.shutdown(Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}
