//! The host end of one exec: stdin, window size and signals go in; output comes out on
//! the matching stream; the exit status ends it. With a terminal, the local terminal is
//! in raw mode for the session and restored on every way out (the guard's drop runs on
//! return, error and panic alike).

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use nix::sys::termios::{self, SetArg, Termios};

use crate::contract::protocol::{ExecRequest, ExitStatus, Frame};

/// Puts the terminal on stdin into raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Enters raw mode.
    pub fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("cannot set raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The local terminal's size (rows, columns), if stdout is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let mut size = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize into the valid struct passed by pointer.
    let result = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut size) };
    (result == 0 && size.ws_row > 0).then_some((size.ws_row, size.ws_col))
}

/// Runs `request` over `stream` to its end; returns how the command ended.
pub fn run(mut stream: UnixStream, request: ExecRequest) -> anyhow::Result<ExitStatus> {
    let tty = request.tty;
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    Frame::Exec(request).write_to(&mut *writer.lock().expect("writer"))?;
    let _raw = if tty && std::io::stdin().is_terminal() { Some(RawMode::enter()?) } else { None };
    forward_stdin(writer.clone());
    forward_signals(writer, tty)?;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    loop {
        match Frame::read_from(&mut stream).context("lost the connection to the guest agent")? {
            Some(Frame::Stdout(data)) => {
                stdout.write_all(&data)?;
                stdout.flush()?;
            }
            Some(Frame::Stderr(data)) => {
                stderr.write_all(&data)?;
                stderr.flush()?;
            }
            Some(Frame::Exit(status)) => return Ok(status),
            Some(Frame::Error(message)) => bail!("{message}"),
            Some(_) => {}
            None => bail!("the guest agent closed the connection"),
        }
    }
}

fn forward_stdin(writer: Arc<Mutex<UnixStream>>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            let frame = match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => Frame::StdinEof,
                Ok(n) => Frame::Stdin(buffer[..n].to_vec()),
            };
            let end = frame == Frame::StdinEof;
            if frame.write_to(&mut *writer.lock().expect("writer")).is_err() || end {
                break;
            }
        }
    });
}

fn forward_signals(writer: Arc<Mutex<UnixStream>>, tty: bool) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
    let mut signals = signal_hook::iterator::Signals::new([SIGWINCH, SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let frame = match signal {
                SIGWINCH if tty => match terminal_size() {
                    Some((rows, cols)) => Frame::Resize { rows, cols },
                    None => continue,
                },
                SIGWINCH => continue,
                other => Frame::Signal(other),
            };
            if frame.write_to(&mut *writer.lock().expect("writer")).is_err() {
                break;
            }
        }
    });
    Ok(())
}
