//! Automatic port forwarding (issue 14, part 1): the guest's agent reports its TCP
//! listeners as they come and go (`guest::listeners`), and the supervisor forwards each —
//! those on the guest's loopback included, which no NAT rule could reach — from the same
//! port on the host's `127.0.0.1` through the agent (vsock), with no privilege. A port
//! below 1024 goes to 8000 above it; a port the host already uses to the next free one.
//! Declared forwards (`mvm port`, DNAT) are left to the firewall. The forwards are listed
//! in the runtime dir's [`AUTO_PORTS_FILE`] for `mvm port NAME`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::protocol::Frame;

/// The runtime file listing the automatic forwards.
pub const AUTO_PORTS_FILE: &str = "auto-ports.json";
/// The most automatic forwards one VM gets: a guest that listens on thousands of ports
/// does not make the host bind thousands.
pub const MAX_AUTO_FORWARDS: usize = 64;

/// One automatic forward: host `127.0.0.1:host` to the guest's port `guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoForward {
    pub host: u16,
    pub guest: u16,
}

/// The automatic forwards of the VM whose runtime dir is `run_dir`.
pub fn read(run_dir: &Path) -> Vec<AutoForward> {
    std::fs::read(run_dir.join(AUTO_PORTS_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Forwards the guest's listeners (but the guest ports in `declared`) until the agent
/// behind `vsock` goes away.
pub fn spawn(vsock: PathBuf, run_dir: PathBuf, declared: BTreeSet<u16>) {
    std::thread::spawn(move || {
        let mut forwards: BTreeMap<u16, (u16, Arc<AtomicBool>)> = BTreeMap::new();
        let _ = watch(&vsock, &run_dir, &declared, &mut forwards);
        for (_, stop) in forwards.values() {
            stop.store(true, Ordering::SeqCst);
        }
        let _ = std::fs::remove_file(run_dir.join(AUTO_PORTS_FILE));
    });
}

fn watch(
    vsock: &Path,
    run_dir: &Path,
    declared: &BTreeSet<u16>,
    forwards: &mut BTreeMap<u16, (u16, Arc<AtomicBool>)>,
) -> io::Result<()> {
    // The agent answers once the guest has booted; the socket goes with the VM.
    let mut stream = loop {
        match crate::agent::client::connect(vsock, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(_) if vsock.exists() => std::thread::sleep(Duration::from_millis(200)),
            Err(error) => return Err(error),
        }
    };
    stream.set_read_timeout(None)?;
    Frame::WatchListeners.write_to(&mut stream)?;
    while let Some(frame) = Frame::read_from(&mut stream)? {
        let Frame::Listeners(ports) = frame else { continue };
        let current: BTreeSet<u16> = forwards.keys().copied().collect();
        let wanted = wanted(&current, ports, declared);
        forwards.retain(|guest, (_, stop)| {
            let keep = wanted.contains(guest);
            if !keep {
                stop.store(true, Ordering::SeqCst);
            }
            keep
        });
        for guest in wanted {
            if let std::collections::btree_map::Entry::Vacant(entry) = forwards.entry(guest) {
                if let Some(forward) = open(guest, vsock) {
                    entry.insert(forward);
                }
            }
        }
        let listed: Vec<AutoForward> =
            forwards.iter().map(|(guest, (host, _))| AutoForward { host: *host, guest: *guest }).collect();
        crate::atomic::write_atomic(&run_dir.join(AUTO_PORTS_FILE), &serde_json::to_vec(&listed)?)
            .map_err(io::Error::other)?;
    }
    Ok(())
}

/// The guest ports to forward, given those forwarded now and those the guest reports:
/// never a declared one, and at most [`MAX_AUTO_FORWARDS`] (those already forwarded first).
fn wanted(current: &BTreeSet<u16>, reported: Vec<u16>, declared: &BTreeSet<u16>) -> BTreeSet<u16> {
    let reported: BTreeSet<u16> = reported.into_iter().filter(|port| !declared.contains(port)).collect();
    let kept = reported.intersection(current).copied();
    let new = reported.difference(current).copied();
    kept.chain(new).take(MAX_AUTO_FORWARDS).collect()
}

/// The host port for guest port `guest`: the same one when it is free (8000 above it for
/// one below 1024), else the next free one.
fn bind_for(guest: u16) -> Option<TcpListener> {
    let first = if guest < 1024 { guest + 8000 } else { guest };
    (first..first.saturating_add(100))
        .find_map(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok())
        .or_else(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok())
}

/// Starts forwarding to guest port `guest`; returns the host port and the stop switch.
fn open(guest: u16, vsock: &Path) -> Option<(u16, Arc<AtomicBool>)> {
    let listener = bind_for(guest)?;
    listener.set_nonblocking(true).ok()?;
    let host = listener.local_addr().ok()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let (stopped, vsock) = (stop.clone(), vsock.to_path_buf());
    std::thread::spawn(move || {
        while !stopped.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((client, _)) => {
                    let vsock = vsock.clone();
                    std::thread::spawn(move || relay(client, &vsock, guest));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    Some((host, stop))
}

/// Carries one host connection to guest port `guest` through the agent.
fn relay(client: TcpStream, vsock: &Path, guest: u16) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let mut agent = crate::agent::client::connect(vsock, Duration::from_secs(5))?;
    Frame::Connect(guest).write_to(&mut agent)?;
    match Frame::read_from(&mut agent)? {
        Some(Frame::Pong(_)) => {}
        other => return Err(io::Error::other(format!("the agent answered {other:?}"))),
    }
    agent.set_read_timeout(None)?;
    let (mut to_guest, mut from_client) = (agent.try_clone()?, client.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_guest);
        let _ = to_guest.shutdown(Shutdown::Write);
    });
    let (mut from_guest, mut to_client) = (agent, client);
    let _ = io::copy(&mut from_guest, &mut to_client);
    let _ = to_client.shutdown(Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile guest listening on every port gets a bounded number of host listeners,
    /// and never one for a declared forward; what is forwarded stays forwarded.
    #[test]
    fn forwards_are_capped_and_never_declared() {
        let declared = BTreeSet::from([3000]);
        let current = BTreeSet::from([60000, 60001]);
        let everything: Vec<u16> = (1..=u16::MAX).collect();
        let wanted = wanted(&current, everything, &declared);
        assert_eq!(wanted.len(), MAX_AUTO_FORWARDS);
        assert!(wanted.contains(&60000) && wanted.contains(&60001));
        assert!(!wanted.contains(&3000));
        assert_eq!(super::wanted(&current, vec![3000, 8080], &declared), BTreeSet::from([8080]));
    }

    #[test]
    fn a_privileged_or_taken_port_gets_another() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let other = bind_for(port).unwrap().local_addr().unwrap().port();
        assert_ne!(other, port);
        drop(taken);
        if let Some(listener) = bind_for(80) {
            assert!(listener.local_addr().unwrap().port() >= 1024);
        }
    }
}
