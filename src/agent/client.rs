//! The host side of the agent connection: hybrid vsock over a unix socket.
//!
//! cloud-hypervisor (natively) and vhost-device-vsock (for QEMU) expose the guest's vsock
//! as a unix socket: connect, send `CONNECT <port>\n`, read `OK <n>\n`, and the stream is
//! then the guest's port. No listener in the guest yet means the connection is closed
//! without an `OK`, which [`connect`] reports as [`std::io::ErrorKind::ConnectionRefused`].

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::contract::protocol::{Frame, AGENT_PORT};

/// Opens a stream to the guest agent through the hybrid vsock socket at `socket`.
pub fn connect(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the guest agent is not listening",
                ))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            // A signal to the caller (the supervisor takes several) is no failure.
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("unexpected vsock handshake {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// Asks the agent whether it is there; returns the guest's uptime in milliseconds.
pub fn ping(socket: &Path, timeout: Duration) -> io::Result<u64> {
    let mut stream = connect(socket, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    Frame::Ping.write_to(&mut stream)?;
    match Frame::read_from(&mut stream)? {
        Some(Frame::Pong(uptime)) => Ok(uptime),
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected Pong, got {other:?}"))),
    }
}

/// Waits until the agent answers a ping, or `deadline` passes, or `alive` says to stop.
/// No connection is tried before `booted` says the guest is up: connections made while
/// the guest's vsock driver is not there yet pile up in the vsock backend.
pub fn wait_ready(
    socket: &Path,
    deadline: Instant,
    mut alive: impl FnMut() -> bool,
    mut booted: impl FnMut() -> bool,
) -> io::Result<u64> {
    loop {
        let last_error = if booted() {
            match ping(socket, Duration::from_secs(2)) {
                Ok(uptime) => return Ok(uptime),
                Err(error) => error,
            }
        } else {
            io::Error::new(io::ErrorKind::TimedOut, "the guest has not booted")
        };
        if Instant::now() >= deadline || !alive() {
            return Err(last_error);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks the guest to power off cleanly.
pub fn power_off(socket: &Path) -> io::Result<()> {
    let mut stream = connect(socket, Duration::from_secs(2))?;
    Frame::PowerOff.write_to(&mut stream)
}

/// How long the agent gets to set the clock.
const CLOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets the guest's wall clock to the host's (after a resume), and waits for the answer.
pub fn set_clock(socket: &Path) -> io::Result<()> {
    let mut stream = connect(socket, CLOCK_TIMEOUT)?;
    // The supervisor's event loop waits on this: a guest that never answers must not
    // hold it (and with it every stop) for good.
    stream.set_read_timeout(Some(CLOCK_TIMEOUT))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Frame::SetClock(now.as_nanos() as u64).write_to(&mut stream)?;
    match Frame::read_from(&mut stream)? {
        Some(Frame::Pong(_)) => Ok(()),
        other => Err(io::Error::other(format!("the agent answered {other:?} to a clock change"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in for the VMM's vsock socket: answers the handshake, then `Pong(42)`.
    fn fake_vmm(socket: &Path, accept_port: bool) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 13];
            stream.read_exact(&mut request).unwrap();
            if accept_port {
                stream.write_all(b"OK 1073741824\n").unwrap();
                assert_eq!(Frame::read_from(&mut stream).unwrap(), Some(Frame::Ping));
                Frame::Pong(42).write_to(&mut stream).unwrap();
            }
            String::from_utf8_lossy(&request).into_owned()
        })
    }

    #[test]
    fn handshakes_and_pings() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let server = fake_vmm(&socket, true);
        assert_eq!(ping(&socket, Duration::from_secs(2)).unwrap(), 42);
        assert_eq!(server.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn no_listener_in_the_guest_is_connection_refused() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let server = fake_vmm(&socket, false);
        let error = ping(&socket, Duration::from_secs(2)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        server.join().unwrap();
    }

    /// An agent that takes the clock change and never answers: the caller gets an error
    /// in the timeout, not a wait for ever.
    #[test]
    fn a_silent_agent_cannot_hold_a_clock_change() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let _silent = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"OK 1\n").unwrap();
            std::thread::sleep(Duration::from_secs(30));
        });
        let started = std::time::Instant::now();
        assert!(set_clock(&socket).is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
