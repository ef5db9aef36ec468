//! The agent protocol, shared by the host (`mvm shell`, the supervisor) and the guest.
//!
//! A connection carries length-prefixed frames: a 4-byte big-endian length (of what
//! follows), a 1-byte kind, then the payload. The host opens with `Exec`, `Ping` or
//! `PowerOff`; during an exec it sends stdin, resizes and signals, and the guest sends
//! output; the last frame from the guest is `Exit`.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The vsock port the guest agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The largest frame accepted (output is sent in chunks far below this).
pub const MAX_FRAME: usize = 1 << 20;

/// What a command runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; empty means the user's login shell.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Run on a pseudo-terminal (interactive).
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            // The guest sends the number: clamp it to what a shell could report.
            ExitStatus::Signal(signal) => 128 + signal.clamp(0, 127),
        }
    }
}

/// The ports the guest serves, by protocol (the payload of `Listeners`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listening {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
}

/// The project a `WatchFiles` connection is about, as the guest mounted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedProject {
    /// Where the guest sees it.
    pub root: String,
    /// In overlay mode, where the guest mounted the host's project (the overlay's lower
    /// layer), whose caches are dropped first.
    pub lower: Option<String>,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host → guest: run a command.
    Exec(ExecRequest),
    /// Host → guest: bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// Host → guest: stdin is closed.
    StdinEof,
    /// Host → guest: the terminal is now `rows` × `cols`.
    Resize { rows: u16, cols: u16 },
    /// Host → guest: deliver this signal to the command.
    Signal(i32),
    /// Host → guest: are you there?
    Ping,
    /// Host → guest: power the VM off cleanly.
    PowerOff,
    /// Host → guest: set the wall clock to this many nanoseconds since the epoch (after a
    /// pause, the guest's clock stood still); answered with `Pong`.
    SetClock(u64),
    /// Host → guest: report the guest's listeners now and whenever they change
    /// (`Listeners` frames, for as long as the connection lasts).
    WatchListeners,
    /// Host → guest: connect to this TCP port on the guest's loopback; after the `Pong`,
    /// the stream carries that connection's bytes both ways.
    Connect(u16),
    /// Host → guest: send datagrams to this UDP port on the guest's loopback; after the
    /// `Pong`, each datagram either way is one `Datagram` frame.
    ConnectUdp(u16),
    /// Either way, after `ConnectUdp`: one UDP datagram.
    Datagram(Vec<u8>),
    /// Host → guest: the project at this guest path changes on the host; answered with
    /// `Pong` (or `Error` when the guest cannot raise file events), after which the host
    /// sends `FileChanges` frames, each answered with `Pong` once applied.
    WatchFiles(WatchedProject),
    /// Host → guest: changes to the project ([`crate::contract::changes`] records).
    FileChanges(Vec<u8>),
    /// Guest → host: the ports the guest's TCP and UDP servers listen on.
    Listeners(Listening),
    /// Guest → host: command output.
    Stdout(Vec<u8>),
    /// Guest → host: command error output.
    Stderr(Vec<u8>),
    /// Guest → host: the command ended (the last frame).
    Exit(ExitStatus),
    /// Guest → host: the request failed before the command ran.
    Error(String),
    /// Guest → host: the answer to `Ping` (the guest's uptime in milliseconds).
    Pong(u64),
}

const EXEC: u8 = 1;
const STDIN: u8 = 2;
const STDIN_EOF: u8 = 3;
const RESIZE: u8 = 4;
const SIGNAL: u8 = 5;
const PING: u8 = 6;
const POWER_OFF: u8 = 7;
const SET_CLOCK: u8 = 8;
const WATCH_LISTENERS: u8 = 9;
const CONNECT: u8 = 10;
const CONNECT_UDP: u8 = 11;
const DATAGRAM: u8 = 12;
const WATCH_FILES: u8 = 13;
const FILE_CHANGES: u8 = 14;
const STDOUT: u8 = 16;
const STDERR: u8 = 17;
const EXIT: u8 = 18;
const ERROR: u8 = 19;
const PONG: u8 = 20;
const LISTENERS: u8 = 21;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl Frame {
    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Frame::Exec(request) => (EXEC, to_json(request)),
            Frame::Stdin(data) => (STDIN, data.clone()),
            Frame::StdinEof => (STDIN_EOF, Vec::new()),
            Frame::Resize { rows, cols } => (RESIZE, [rows.to_be_bytes(), cols.to_be_bytes()].concat()),
            Frame::Signal(signal) => (SIGNAL, signal.to_be_bytes().to_vec()),
            Frame::Ping => (PING, Vec::new()),
            Frame::PowerOff => (POWER_OFF, Vec::new()),
            Frame::SetClock(nanos) => (SET_CLOCK, nanos.to_be_bytes().to_vec()),
            Frame::WatchListeners => (WATCH_LISTENERS, Vec::new()),
            Frame::Connect(port) => (CONNECT, port.to_be_bytes().to_vec()),
            Frame::ConnectUdp(port) => (CONNECT_UDP, port.to_be_bytes().to_vec()),
            Frame::Datagram(data) => (DATAGRAM, data.clone()),
            Frame::WatchFiles(project) => (WATCH_FILES, to_json(project)),
            Frame::FileChanges(records) => (FILE_CHANGES, records.clone()),
            Frame::Listeners(ports) => (LISTENERS, to_json(ports)),
            Frame::Stdout(data) => (STDOUT, data.clone()),
            Frame::Stderr(data) => (STDERR, data.clone()),
            Frame::Exit(status) => (EXIT, to_json(status)),
            Frame::Error(message) => (ERROR, message.as_bytes().to_vec()),
            Frame::Pong(uptime) => (PONG, uptime.to_be_bytes().to_vec()),
        }
    }

    fn decode(kind: u8, payload: Vec<u8>) -> io::Result<Frame> {
        let json_error = |error: serde_json::Error| invalid(format!("bad frame payload: {error}"));
        let fixed = |n: usize| -> io::Result<&[u8]> {
            (payload.len() == n)
                .then_some(&payload[..])
                .ok_or_else(|| invalid(format!("frame {kind} needs {n} bytes")))
        };
        Ok(match kind {
            EXEC => Frame::Exec(serde_json::from_slice(&payload).map_err(json_error)?),
            STDIN => Frame::Stdin(payload),
            STDIN_EOF => Frame::StdinEof,
            RESIZE => {
                let bytes = fixed(4)?;
                Frame::Resize {
                    rows: u16::from_be_bytes([bytes[0], bytes[1]]),
                    cols: u16::from_be_bytes([bytes[2], bytes[3]]),
                }
            }
            SIGNAL => Frame::Signal(i32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes"))),
            PING => Frame::Ping,
            POWER_OFF => Frame::PowerOff,
            SET_CLOCK => Frame::SetClock(u64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes"))),
            WATCH_LISTENERS => Frame::WatchListeners,
            CONNECT => Frame::Connect(u16::from_be_bytes(fixed(2)?.try_into().expect("2 bytes"))),
            CONNECT_UDP => Frame::ConnectUdp(u16::from_be_bytes(fixed(2)?.try_into().expect("2 bytes"))),
            DATAGRAM => Frame::Datagram(payload),
            WATCH_FILES => Frame::WatchFiles(serde_json::from_slice(&payload).map_err(json_error)?),
            FILE_CHANGES => Frame::FileChanges(payload),
            LISTENERS => Frame::Listeners(serde_json::from_slice(&payload).map_err(json_error)?),
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            EXIT => Frame::Exit(serde_json::from_slice(&payload).map_err(json_error)?),
            ERROR => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
            PONG => Frame::Pong(u64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes"))),
            other => return Err(invalid(format!("unknown frame kind {other}"))),
        })
    }

    /// Writes the frame (one `write_all`, so frames from several threads never interleave
    /// when the writer is shared behind a lock).
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let (kind, payload) = self.encode();
        let mut bytes = Vec::with_capacity(5 + payload.len());
        bytes.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(&payload);
        out.write_all(&bytes)?;
        out.flush()
    }

    /// Reads one frame; `None` at a clean end of stream.
    pub fn read_from(input: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut length = [0u8; 4];
        match input.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error),
        }
        let length = u32::from_be_bytes(length) as usize;
        if length == 0 || length > MAX_FRAME {
            return Err(invalid(format!("frame length {length} is out of range")));
        }
        let mut body = vec![0u8; length];
        input.read_exact(&mut body)?;
        let payload = body.split_off(1);
        Frame::decode(body[0], payload).map(Some)
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("agent payloads always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut bytes = Vec::new();
        frame.write_to(&mut bytes).unwrap();
        assert_eq!(u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
        let mut reader = &bytes[..];
        assert_eq!(Frame::read_from(&mut reader).unwrap(), Some(frame));
        assert_eq!(Frame::read_from(&mut reader).unwrap(), None);
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
            env: vec![("A".into(), "1".into())],
            cwd: Some("/src".into()),
            uid: 1000,
            gid: 1000,
            tty: true,
            rows: 40,
            cols: 120,
        }));
        for frame in [
            Frame::Stdin(b"data".to_vec()),
            Frame::StdinEof,
            Frame::Resize { rows: 50, cols: 200 },
            Frame::Signal(2),
            Frame::Ping,
            Frame::PowerOff,
            Frame::SetClock(1_796_067_245_123_456_789),
            Frame::WatchListeners,
            Frame::Connect(8080),
            Frame::ConnectUdp(5353),
            Frame::Datagram(vec![0, 1, 2]),
            Frame::WatchFiles(WatchedProject {
                root: "/home/u/web".into(),
                lower: Some("/run/mvm/shares/project".into()),
            }),
            Frame::FileChanges(b"Mfa.txt\0".to_vec()),
            Frame::Listeners(Listening { tcp: BTreeSet::from([22, 3000]), udp: BTreeSet::from([5353]) }),
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(b"oops".to_vec()),
            Frame::Exit(ExitStatus::Code(7)),
            Frame::Exit(ExitStatus::Signal(9)),
            Frame::Error("no such file".into()),
            Frame::Pong(12345),
        ] {
            round_trip(frame);
        }
    }

    #[test]
    fn exact_bytes_of_a_stdout_frame() {
        let mut bytes = Vec::new();
        Frame::Stdout(b"hi".to_vec()).write_to(&mut bytes).unwrap();
        assert_eq!(bytes, [0, 0, 0, 3, 16, b'h', b'i']);
    }

    #[test]
    fn rejects_bad_frames() {
        for bytes in [&[0u8, 0, 0, 0][..], &[0, 0, 0, 1, 99], &[0, 0, 0, 2, 4, 1], &[0xff, 0, 0, 0]] {
            let mut reader = bytes;
            assert!(Frame::read_from(&mut reader).is_err(), "{bytes:?}");
        }
        let mut truncated = &[0u8, 0, 0, 9, 16, 1][..];
        assert!(Frame::read_from(&mut truncated).is_err());
    }

    #[test]
    fn signals_become_shell_codes() {
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }
}
