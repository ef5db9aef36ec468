//! The guest agent: listens on vsock port 1024 and runs commands for `mvm shell`.
//!
//! Each connection is one request. An exec runs the command as the requested user, on a
//! fresh pseudo-terminal (interactive) or on pipes (stdout and stderr kept apart), and
//! streams its output back; stdin, window size changes and signals stream in. The last
//! frame is the exit status.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use nix::unistd::{Gid, Pid, Uid};

use crate::contract::protocol::{ExecRequest, ExitStatus, Frame, AGENT_PORT};
use crate::guest::sender::{send, Sender};
use crate::guest::{file_events, forward, reaper};

/// Binds and listens on the agent's vsock port. The init calls this before any guest
/// program runs, so none can take the port and read what a user types into `mvm shell`.
pub fn listen_on_port() -> anyhow::Result<OwnedFd> {
    let listener = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .context("cannot open a vsock socket")?;
    bind(listener.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, AGENT_PORT))
        .context("cannot bind vsock port 1024")?;
    listen(&listener, Backlog::new(64).expect("valid backlog")).context("cannot listen on vsock")?;
    Ok(listener)
}

/// Accepts connections on `listener` forever; `power_off` is called for a `PowerOff` request.
pub fn serve(listener: OwnedFd, power_off: fn() -> !) -> ! {
    loop {
        // Close-on-exec: a command run for a session must not hold the session's own
        // connection (a daemon it started would keep the host's `mvm shell` waiting).
        let Ok(fd) = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) else { continue };
        // SAFETY: `accept` returned a new descriptor that nothing else owns.
        let connection = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // The host alone: a guest process reaching the port over vsock loopback (with
        // `vsock_loopback` loaded) would otherwise run commands as any guest user.
        let peer = nix::sys::socket::getpeername::<VsockAddr>(connection.as_raw_fd());
        if !peer.is_ok_and(|peer| peer.cid() == libc::VMADDR_CID_HOST) {
            continue;
        }
        std::thread::spawn(move || {
            if let Err(error) = handle(connection, power_off) {
                eprintln!("mvm-agent: {error:#}");
            }
        });
    }
}

fn handle(mut connection: File, power_off: fn() -> !) -> anyhow::Result<()> {
    let sender: Sender = Arc::new(Mutex::new(connection.try_clone()?));
    match Frame::read_from(&mut connection)? {
        Some(Frame::Ping) => {
            send(&sender, &Frame::Pong(uptime_ms()));
        }
        Some(Frame::PowerOff) => power_off(),
        Some(Frame::WatchListeners) => forward::watch_listeners(&sender),
        Some(Frame::WatchFiles(project)) => file_events::serve(&project, &mut connection, &sender),
        Some(Frame::Connect(port)) => forward::connect_tcp(connection, &sender, port),
        Some(Frame::ConnectUdp(port)) => forward::connect_udp(connection, &sender, port),
        Some(Frame::SetClock(nanos)) => {
            let now = nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_nanos(nanos));
            nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now)?;
            send(&sender, &Frame::Pong(uptime_ms()));
        }
        Some(Frame::Exec(request)) => {
            if let Err(error) = exec(request, &mut connection, &sender) {
                send(&sender, &Frame::Error(format!("{error:#}")));
            }
        }
        _ => {}
    }
    Ok(())
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |seconds| (seconds * 1000.0) as u64)
}

/// The user's entry from the guest's `/etc/passwd`: (name, home, shell).
fn passwd_entry(uid: u32) -> (String, String, String) {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 7 && fields[2].parse() == Ok(uid))
        .map(|fields| (fields[0].to_string(), fields[5].to_string(), fields[6].to_string()))
        .unwrap_or_else(|| {
            let home = if uid == 0 { "/root" } else { "/" };
            (uid.to_string(), home.to_string(), "/bin/sh".to_string())
        })
}

/// Makes a user's home under /home (the VM's own, persistent) on first use.
fn ensure_home(home: &str, uid: u32, gid: u32) {
    let path = std::path::Path::new(home);
    if uid != 0 && home.starts_with("/home/") && !path.exists() && std::fs::create_dir_all(path).is_ok() {
        let _ = nix::unistd::chown(path, Some(uid.into()), Some(gid.into()));
    }
}

fn build_command(request: &ExecRequest) -> Command {
    let (user, home, shell) = passwd_entry(request.uid);
    let shell = if std::path::Path::new(&shell).exists() { shell } else { "/bin/sh".to_string() };
    let mut command = match request.argv.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
        None => {
            let mut command = Command::new(&shell);
            let name = shell.rsplit('/').next().unwrap_or("sh");
            command.arg0(format!("-{name}"));
            command
        }
    };
    command.env_clear();
    command
        .env("PATH", crate::contract::GUEST_PATH)
        .env("HOME", &home)
        .env("USER", &user)
        .env("LOGNAME", &user)
        .env("SHELL", &shell);
    command.envs(request.env.iter().map(|(k, v)| (k, v)));
    ensure_home(&home, request.uid, request.gid);
    let cwd = [request.cwd.clone(), Some(home)]
        .into_iter()
        .flatten()
        .find(|dir| std::path::Path::new(dir).is_dir())
        .unwrap_or_else(|| "/".to_string());
    command.current_dir(cwd);
    let (uid, gid) = (Uid::from_raw(request.uid), Gid::from_raw(request.gid));
    let groups = std::ffi::CString::new(user)
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, gid).ok())
        .unwrap_or_else(|| vec![gid]);
    let tty = request.tty;
    // SAFETY: between fork and exec only async-signal-safe calls are made: setsid,
    // ioctl, setgroups, setgid and setuid.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(())
        });
    }
    command
}

/// A started command: where its stdin goes, its terminal (for resizes), and the output
/// threads that end with it (a terminal's reader may outlive it, held by a background job).
struct Started {
    pid: u32,
    stdin: Option<File>,
    terminal: Option<File>,
    output: Vec<std::thread::JoinHandle<()>>,
}

fn spawn_on_terminal(
    mut command: Command,
    request: &ExecRequest,
    sender: &Sender,
) -> anyhow::Result<Started> {
    let winsize =
        nix::pty::Winsize { ws_row: request.rows, ws_col: request.cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(&winsize, None).context("cannot open a pseudo-terminal")?;
    let slave = File::from(pty.slave);
    command.stdin(Stdio::from(slave.try_clone()?));
    command.stdout(Stdio::from(slave.try_clone()?));
    command.stderr(Stdio::from(slave));
    let child = {
        let _no_reaping = reaper::spawning();
        command.spawn()?
    };
    // The slave's last copy in this process goes with `command`, so the reader sees the end.
    drop(command);
    let master = File::from(pty.master);
    forward_output(master.try_clone()?, sender.clone(), Frame::Stdout);
    Ok(Started {
        pid: child.id(),
        stdin: Some(master.try_clone()?),
        terminal: Some(master),
        output: Vec::new(),
    })
}

fn spawn_on_pipes(mut command: Command, sender: &Sender) -> anyhow::Result<Started> {
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = {
        let _no_reaping = reaper::spawning();
        command.spawn()?
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    Ok(Started {
        pid: child.id(),
        stdin: child.stdin.take().map(|stdin| File::from(OwnedFd::from(stdin))),
        terminal: None,
        output: vec![
            forward_output(File::from(OwnedFd::from(stdout)), sender.clone(), Frame::Stdout),
            forward_output(File::from(OwnedFd::from(stderr)), sender.clone(), Frame::Stderr),
        ],
    })
}

fn exec(request: ExecRequest, connection: &mut File, sender: &Sender) -> anyhow::Result<()> {
    let command = build_command(&request);
    let spawned = if request.tty {
        spawn_on_terminal(command, &request, sender)
    } else {
        spawn_on_pipes(command, sender)
    };
    let started = match spawned {
        Ok(started) => started,
        Err(error) => {
            // As a shell says it: 127 for a command that is not there, 126 for one that
            // cannot be executed.
            let io = error.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
            let (code, why) = match io {
                Some(std::io::ErrorKind::NotFound) => (127, "command not found".to_string()),
                Some(std::io::ErrorKind::PermissionDenied) => (126, "Permission denied".to_string()),
                _ => return Err(error.context("cannot start the command")),
            };
            let program = request.argv.first().map_or("the shell", String::as_str);
            send(sender, &Frame::Stderr(format!("mvm: {program}: {why}\n").into_bytes()));
            send(sender, &Frame::Exit(ExitStatus::Code(code)));
            return Ok(());
        }
    };
    let status = reaper::register(started.pid);
    let exited = Arc::new(AtomicBool::new(false));
    spawn_input(connection.try_clone()?, started.stdin, started.terminal, started.pid, exited.clone());
    let status = status.recv().unwrap_or(ExitStatus::Code(255));
    exited.store(true, Ordering::SeqCst);
    if started.output.is_empty() {
        // Give the terminal's reader a moment to drain what the command wrote last.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for thread in started.output {
        let _ = thread.join();
    }
    send(sender, &Frame::Exit(status));
    Ok(())
}

/// Copies `source` into frames made by `frame` until it ends.
fn forward_output(
    mut source: File,
    sender: Sender,
    frame: fn(Vec<u8>) -> Frame,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match source.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send(&sender, &frame(buffer[..n].to_vec())) {
                        break;
                    }
                }
            }
        }
    })
}

/// Applies the host's stdin, resize and signal frames to the command.
fn spawn_input(
    mut connection: File,
    mut stdin: Option<File>,
    terminal: Option<File>,
    pid: u32,
    exited: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        while let Ok(Some(frame)) = Frame::read_from(&mut connection) {
            match frame {
                Frame::Stdin(data) => {
                    if let Some(input) = stdin.as_mut() {
                        let _ = input.write_all(&data);
                    }
                }
                Frame::StdinEof => {
                    if terminal.is_some() {
                        // On a terminal, end of input is the EOF character.
                        if let Some(input) = stdin.as_mut() {
                            let _ = input.write_all(&[4]);
                        }
                    } else {
                        stdin = None;
                    }
                }
                Frame::Resize { rows, cols } => {
                    if let Some(terminal) = &terminal {
                        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                        // SAFETY: TIOCSWINSZ reads a valid winsize from the pointer.
                        unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size) };
                    }
                }
                Frame::Signal(number) => {
                    if let Ok(signal) = Signal::try_from(number) {
                        // The command leads its own session and process group.
                        let _ = kill(Pid::from_raw(-(pid as i32)), signal);
                    }
                }
                _ => {}
            }
        }
        // The host went away while the command ran: the command goes with it.
        if !exited.load(Ordering::SeqCst) {
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGHUP);
        }
    });
}
