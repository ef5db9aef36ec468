//! A minimal QMP client: greeting, capabilities negotiation, one command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// Runs QMP command `command` (e.g. `system_powerdown`, `quit`) on the socket.
pub fn execute(socket: &Path, command: &str) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to QMP at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).context("no QMP greeting")?;
    if !line.contains("\"QMP\"") {
        bail!("unexpected QMP greeting {line:?}");
    }
    for request in ["qmp_capabilities", command] {
        writer.write_all(format!("{{\"execute\":\"{request}\"}}\n").as_bytes())?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                // `quit` closes the connection before or after its answer.
                return if request == "quit" { Ok(()) } else { bail!("QMP closed the connection") };
            }
            if line.contains("\"return\"") {
                break;
            }
            if line.contains("\"error\"") {
                bail!("QMP {request} failed: {}", line.trim());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn negotiates_then_runs_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            writer.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            let mut seen = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                seen.push(line.trim().to_string());
                writer.write_all(b"{\"return\": {}}\n").unwrap();
            }
            seen
        });
        execute(&socket, "system_powerdown").unwrap();
        assert_eq!(
            server.join().unwrap(),
            ["{\"execute\":\"qmp_capabilities\"}", "{\"execute\":\"system_powerdown\"}"]
        );
    }
}
