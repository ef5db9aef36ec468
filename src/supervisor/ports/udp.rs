//! A UDP forward: a socket on the host's loopback; each host peer (address and port) gets
//! a session of its own, a stream through the agent (`ConnectUdp`) whose `Datagram`
//! frames the agent sends from and receives on a socket of its own in the guest — so the
//! guest's server answers each peer apart, as it would over a network. A session ends
//! after [`IDLE`] without a datagram from its peer; at most [`MAX_PEERS`] are open at
//! once. Only root's VMs, whose forwards are anyone's, get UDP forwards (`peer` says why).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::contract::protocol::Frame;
use crate::spec::Protocol;

use super::{bind_for, Target};

/// How long a peer's session lasts without a datagram from it (conntrack's UDP
/// stream timeout is 120 s, an unreplied flow's 30 s).
pub(super) const IDLE: Duration = Duration::from_secs(60);
/// The most peers one forward serves at once.
pub(super) const MAX_PEERS: usize = 32;

/// Starts forwarding to guest UDP port `guest` of `target`; returns the host port and the
/// switch that stops it.
pub(super) fn open(guest: u16, target: &Target) -> io::Result<(u16, Arc<AtomicBool>)> {
    let socket = bind_for(guest, Protocol::Udp, |port| UdpSocket::bind((Ipv4Addr::LOCALHOST, port)))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let host = socket.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let forward = Forward { socket: Arc::new(socket), vsock: target.vsock.clone(), guest };
    let stopped = stop.clone();
    std::thread::spawn(move || forward.serve(&stopped));
    Ok((host, stop))
}

struct Forward {
    socket: Arc<UdpSocket>,
    vsock: PathBuf,
    guest: u16,
}

/// One peer's way to the guest.
struct Session {
    agent: UnixStream,
    /// When the peer last sent a datagram (ms since the forward began): the guest alone
    /// cannot keep a session, and its way to whatever later takes the peer's port, open.
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ends the thread carrying answers back, and the agent's side.
        let _ = self.agent.shutdown(Shutdown::Both);
    }
}

impl Forward {
    fn serve(&self, stop: &AtomicBool) {
        let began = Instant::now();
        let now_ms = || began.elapsed().as_millis() as u64;
        let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
        let mut buffer = vec![0u8; 65536];
        while !stop.load(Ordering::SeqCst) {
            let received = self.socket.recv_from(&mut buffer);
            let idle_ms = IDLE.as_millis() as u64;
            sessions
                .retain(|_, session| now_ms().saturating_sub(session.last.load(Ordering::SeqCst)) < idle_ms);
            let Ok((length, from)) = received else { continue };
            if !sessions.contains_key(&from) {
                if sessions.len() >= MAX_PEERS {
                    continue;
                }
                match self.session(from, began) {
                    Ok(session) => sessions.insert(from, session),
                    Err(_) => continue,
                };
            }
            let session = sessions.get_mut(&from).expect("made above");
            session.last.store(now_ms(), Ordering::SeqCst);
            if Frame::Datagram(buffer[..length].to_vec()).write_to(&mut session.agent).is_err() {
                sessions.remove(&from);
            }
        }
    }

    /// Opens `peer`'s session, with a thread sending the guest's answers back to it.
    fn session(&self, peer: SocketAddr, began: Instant) -> io::Result<Session> {
        let agent = super::agent_stream(&self.vsock, Frame::ConnectUdp(self.guest))?;
        // A guest that stops reading loses this peer's datagrams, not the forward.
        agent.set_write_timeout(Some(Duration::from_secs(1)))?;
        let last = Arc::new(std::sync::atomic::AtomicU64::new(began.elapsed().as_millis() as u64));
        let (mut answers, socket) = (agent.try_clone()?, self.socket.clone());
        std::thread::spawn(move || {
            while let Ok(Some(Frame::Datagram(data))) = Frame::read_from(&mut answers) {
                let _ = socket.send_to(&data, peer);
            }
        });
        Ok(Session { agent, last })
    }
}
