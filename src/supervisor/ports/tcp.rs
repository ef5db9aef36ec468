//! A TCP forward: a listener on the host's loopback whose connections are each carried to
//! the guest's port through the agent (`Connect`). At most [`MAX_RELAYS`] connections are
//! relayed at once over all of a supervisor's forwards ([`MAX_RELAYS_PER_UID`] of one
//! uid's programs), and one whose host side has
//! finished ends after [`HALF_CLOSED_IDLE`] without a byte from the guest: a guest that
//! never answers or never closes holds no host thread for good.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::contract::protocol::Frame;
use crate::spec::Protocol;

use super::{bind_for, peer, Target};

/// The most host connections one supervisor relays at once.
pub(super) const MAX_RELAYS: usize = 256;
/// The most of them one uid's programs hold (root's VMs' forwards are anyone's: one user
/// keeping connections open leaves room for the others).
pub(super) const MAX_RELAYS_PER_UID: usize = 64;
/// How long a relayed connection whose host side is done may wait for the guest.
pub(super) const HALF_CLOSED_IDLE: Duration = Duration::from_secs(60);

/// The connections a supervisor relays now, by the uid of the program on the host's side
/// (`u32::MAX`: not known).
#[derive(Debug, Default)]
pub(super) struct Relays {
    by_uid: Mutex<HashMap<u32, usize>>,
}

impl Relays {
    /// A slot for a connection of `uid`'s, unless the supervisor or that uid has its most.
    fn take(self: &Arc<Self>, uid: u32) -> Option<RelaySlot> {
        let mut by_uid = self.by_uid.lock().expect("relay counts");
        let total: usize = by_uid.values().sum();
        let theirs = by_uid.entry(uid).or_default();
        if total >= MAX_RELAYS || *theirs >= MAX_RELAYS_PER_UID {
            return None;
        }
        *theirs += 1;
        Some(RelaySlot { relays: self.clone(), uid })
    }

    /// How many connections are relayed now.
    #[cfg(test)]
    pub(super) fn count(&self) -> usize {
        self.by_uid.lock().expect("relay counts").values().sum()
    }
}

/// One relayed connection's place; given back when dropped.
struct RelaySlot {
    relays: Arc<Relays>,
    uid: u32,
}

impl Drop for RelaySlot {
    fn drop(&mut self) {
        let mut by_uid = self.relays.by_uid.lock().expect("relay counts");
        if let Some(count) = by_uid.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                by_uid.remove(&self.uid);
            }
        }
    }
}

/// Starts forwarding to guest TCP port `guest` of `target`; returns the host port and the
/// switch that stops it.
pub(super) fn open(guest: u16, target: &Target) -> io::Result<(u16, Arc<AtomicBool>)> {
    let listener = bind_for(guest, Protocol::Tcp, |port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))?;
    listener.set_nonblocking(true)?;
    let host = listener.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let (stopped, target) = (stop.clone(), target.clone());
    std::thread::spawn(move || serve(listener, &stopped, &target, guest));
    Ok((host, stop))
}

fn serve(listener: TcpListener, stop: &AtomicBool, target: &Target, guest: u16) {
    let mut refusals = super::Throttle::default();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, from)) => {
                let local = listener.local_addr().expect("a bound listener has an address");
                let uid = peer::uid_of(local, from);
                if !peer::admitted(target.owner, uid) {
                    refusals.log(|| {
                        format!("refused {from} on 127.0.0.1:{}: not the VM owner's program", local.port())
                    });
                    continue;
                }
                let Some(slot) = target.relays.take(uid.unwrap_or(u32::MAX)) else {
                    refusals.log(|| {
                        format!("refused {from} on 127.0.0.1:{}: too many connections relayed", local.port())
                    });
                    continue;
                };
                let vsock: PathBuf = target.vsock.clone();
                std::thread::spawn(move || {
                    let _ = relay(client, &vsock, guest);
                    drop(slot);
                });
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
    // A client that stops reading holds its relay this long at most.
    client.set_write_timeout(Some(HALF_CLOSED_IDLE))?;
    let agent = super::agent_stream(vsock, Frame::Connect(guest))?;
    let client_done = Arc::new(AtomicBool::new(false));
    let (mut to_guest, mut from_client, done) =
        (agent.try_clone()?, client.try_clone()?, client_done.clone());
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_guest);
        let _ = to_guest.shutdown(Shutdown::Write);
        done.store(true, Ordering::SeqCst);
    });
    let _ = copy_back(&agent, &client, &client_done);
    // Either side ended: so does all of it, which also ends the copy the other way.
    let _ = client.shutdown(Shutdown::Both);
    let _ = agent.shutdown(Shutdown::Both);
    let _ = upstream.join();
    Ok(())
}

/// Copies the guest's bytes to the client until the guest ends, the client is gone, or
/// the client is done and the guest silent for [`HALF_CLOSED_IDLE`].
fn copy_back(
    mut agent: &std::os::unix::net::UnixStream,
    mut client: &TcpStream,
    client_done: &AtomicBool,
) -> io::Result<()> {
    agent.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut last = Instant::now();
    loop {
        match agent.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(length) => {
                client.write_all(&buffer[..length])?;
                last = Instant::now();
            }
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if client_done.load(Ordering::SeqCst) && last.elapsed() >= HALF_CLOSED_IDLE {
                    return Ok(());
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}
