//! A blocking HTTP/1.1 client for cloud-hypervisor's API socket.
//!
//! Requests go to `/api/v1/…` with `Host: localhost`; success is 2xx (204 without a
//! body for actions), errors carry a JSON array of messages.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends one request and reads the whole response.
pub fn request(socket: &Path, method: &str, endpoint: &str, body: Option<&str>) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to cloud-hypervisor's API at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    match body {
        Some(body) => request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => request.push_str("\r\n"),
    }
    stream.write_all(request.as_bytes())?;
    read_response(&mut BufReader::new(stream))
}

fn read_response(reader: &mut impl BufRead) -> anyhow::Result<Response> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = vec![0u8; length.unwrap_or(0)];
    reader.read_exact(&mut body)?;
    Ok(Response { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn expect_success(response: Response, what: &str) -> anyhow::Result<Response> {
    if !(200..300).contains(&response.status) {
        bail!("cloud-hypervisor refused {what} ({}): {}", response.status, response.body.trim());
    }
    Ok(response)
}

/// `GET vmm.ping`: the VMM's version information.
pub fn ping(socket: &Path) -> anyhow::Result<String> {
    Ok(expect_success(request(socket, "GET", "vmm.ping", None)?, "vmm.ping")?.body)
}

/// `GET vm.info`: the VM's state (`Created`, `Running`, `Shutdown`, `Paused`).
pub fn state(socket: &Path) -> anyhow::Result<String> {
    let body = expect_success(request(socket, "GET", "vm.info", None)?, "vm.info")?.body;
    let info: serde_json::Value = serde_json::from_str(&body).context("vm.info is not JSON")?;
    info["state"].as_str().map(str::to_string).context("vm.info has no state")
}

/// `PUT vm.power-button`: an ACPI power-button press.
pub fn power_button(socket: &Path) -> anyhow::Result<()> {
    expect_success(request(socket, "PUT", "vm.power-button", None)?, "vm.power-button").map(drop)
}

/// `PUT vm.pause`: stop the vCPUs (the VM keeps its memory and devices).
pub fn pause(socket: &Path) -> anyhow::Result<()> {
    expect_success(request(socket, "PUT", "vm.pause", None)?, "vm.pause").map(drop)
}

/// `PUT vm.resume`: run a paused VM's vCPUs again.
pub fn resume(socket: &Path) -> anyhow::Result<()> {
    expect_success(request(socket, "PUT", "vm.resume", None)?, "vm.resume").map(drop)
}

/// `PUT vmm.shutdown`: stop the VM and end the VMM.
pub fn shutdown_vmm(socket: &Path) -> anyhow::Result<()> {
    expect_success(request(socket, "PUT", "vmm.shutdown", None)?, "vmm.shutdown").map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A one-request server: records the request text, answers with `response`.
    fn server(socket: &Path, response: &'static str) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(value) = line.strip_prefix("Content-Length: ") {
                    length = value.trim().parse().unwrap();
                }
                request.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            request.push_str(&String::from_utf8(body).unwrap());
            (&stream).write_all(response.as_bytes()).unwrap();
            request
        })
    }

    #[test]
    fn power_button_is_a_bodiless_put() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let server = server(&socket, "HTTP/1.1 204 No Content\r\n\r\n");
        power_button(&socket).unwrap();
        assert_eq!(
            server.join().unwrap(),
            "PUT /api/v1/vm.power-button HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn pause_and_resume_are_bodiless_puts() {
        for (call, endpoint) in
            [(pause as fn(&Path) -> anyhow::Result<()>, "vm.pause"), (resume, "vm.resume")]
        {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("api.sock");
            let server = server(&socket, "HTTP/1.1 204 No Content\r\n\r\n");
            call(&socket).unwrap();
            assert_eq!(
                server.join().unwrap(),
                format!("PUT /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
            );
        }
    }

    #[test]
    fn reads_state_from_vm_info() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let body = r#"{"config":{},"state":"Running","memory_actual_size":0}"#;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let server = server(&socket, response);
        assert_eq!(state(&socket).unwrap(), "Running");
        assert!(server.join().unwrap().starts_with("GET /api/v1/vm.info HTTP/1.1\r\n"));
    }

    #[test]
    fn errors_carry_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let server = server(
            &socket,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 26\r\n\r\n[\"VM is not booted yet\"]\r\n",
        );
        let error = shutdown_vmm(&socket).unwrap_err().to_string();
        assert!(error.contains("500") && error.contains("VM is not booted yet"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn a_request_with_a_body_has_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let server = server(&socket, "HTTP/1.1 204 No Content\r\n\r\n");
        request(&socket, "PUT", "vm.resize", Some(r#"{"desired_vcpus":2}"#)).unwrap();
        let sent = server.join().unwrap();
        assert!(sent.contains("Content-Length: 19\r\n\r\n{\"desired_vcpus\":2}"), "{sent}");
    }
}
