//! The end-to-end lab: a "host" network namespace with an uplink to an "internet" one,
//! a sandboxed mvm run there through `nsenter --net` (so its mounts stay visible to the
//! test), and the checks that nothing of a VM is left after it ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{host_with_uplink, NetNs};
#[allow(unused_imports)]
pub use super::netns::{HOST_UPLINK_IP, INTERNET_IP};
use super::{Run, Sandbox};

/// The lab.
pub struct Lab {
    pub sandbox: Sandbox,
    pub host: NetNs,
    pub internet: NetNs,
}

impl Lab {
    pub fn new() -> Lab {
        let (host, internet) = host_with_uplink("ehost", "einet");
        let sandbox = Sandbox::new();
        std::fs::write(
            sandbox.config_file(),
            "[defaults]\nhypervisor = \"qemu\"\ncpus = 1\nmemory = \"512M\"\n",
        )
        .unwrap();
        Lab { sandbox, host, internet }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = self.host.nsenter(super::mvm_binary().to_str().unwrap(), args);
        command
            .env("MVM_STATE_DIR", self.sandbox.state_dir())
            .env("MVM_RUN_DIR", self.sandbox.run_dir())
            .env("MVM_CONFIG", self.sandbox.config_file())
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .env_remove("SUDO_USER")
            .stdin(Stdio::null());
        command
    }

    pub fn mvm(&self, args: &[&str]) -> Run {
        Run::from_output(self.command(args).output().unwrap())
    }

    pub fn mvm_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        Run::from_output(child.wait_with_output().unwrap())
    }

    /// `mvm shell NAME -- sh -c SCRIPT`.
    pub fn sh(&self, name: &str, script: &str) -> Run {
        self.mvm(&["shell", name, "--", "sh", "-c", script])
    }

    /// Processes whose command line mentions this lab's sandbox.
    pub fn leftover_processes(&self) -> Vec<String> {
        let root = self.sandbox.root().to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&root) && !cmdline.contains("nsenter") {
                    found.push(cmdline);
                }
            }
        }
        found
    }

    /// Asserts that nothing of the lab's VMs is left on the host.
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        assert!(self.leftover_processes().is_empty(), "processes left: {:?}", self.leftover_processes());
        let links = self.host.ip(&["-o", "link", "show"]);
        assert!(!links.contains("mvmbr") && !links.contains("mvmtap"), "links left:\n{links}");
        let rules = String::from_utf8_lossy(&self.host.exec("iptables-save", &[]).stdout).into_owned();
        assert!(!rules.contains("mvm"), "rules left:\n{rules}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.sandbox.root().to_string_lossy().into_owned();
        assert!(!mounts.contains(&root), "mounts left:\n{mounts}");
        for entry in std::fs::read_dir(self.sandbox.run_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
        {
            let files: Vec<String> = std::fs::read_dir(entry.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(files.iter().all(|f| f == "lock" || f == "status.json"), "runtime files left: {files:?}");
        }
    }
}

/// Boots run one at a time: TCG on two cores is slow enough without VMs competing.
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The start of every end-to-end test: one boot at a time, the tools present, a fresh
/// lab; `None` (with the reason printed) when the test cannot run here.
pub fn begin(test: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Lab)> {
    let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poison| poison.into_inner());
    e2e_ready(test).then(|| (serial, Lab::new()))
}

pub fn e2e_ready(test: &str) -> bool {
    if !super::require_root(test) {
        return false;
    }
    for program in ["qemu-system-x86_64", "virtiofsd", "vhost-device-vsock", "iptables", "nsenter"] {
        if !super::require_program(test, program) {
            return false;
        }
    }
    let kernel = mvm::boot::kernel::discover(std::path::Path::new("/"), None, &mvm::host::kernel_release());
    if !kernel.as_ref().is_ok_and(|k| k.modules_dir.is_some()) {
        super::skip(
            test,
            "no kernel with modules in /boot and /lib/modules (scripts/setup installs Debian's)",
        );
        return false;
    }
    true
}

impl Drop for Lab {
    /// Even when a test fails half-way, stop its VMs and let `doctor --fix` remove what a
    /// killed supervisor left (mounts stay in the test's mount namespace otherwise).
    fn drop(&mut self) {
        let listed = self.command(&["list", "--json"]).output();
        let names: Vec<String> = listed
            .ok()
            .and_then(|out| serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).ok())
            .unwrap_or_default()
            .iter()
            .filter(|vm| vm["state"] == "running")
            .filter_map(|vm| vm["name"].as_str().map(str::to_string))
            .collect();
        for name in names {
            let _ = self.command(&["stop", "--force", &name]).output();
        }
        let _ = self.command(&["doctor", "--fix"]).output();
    }
}

/// Fetches `path` over HTTP from `address` inside `ns`, retrying until `deadline`.
#[allow(dead_code)]
pub fn http_get(ns: &NetNs, address: &str, path: &str, within: Duration) -> Result<String, String> {
    let address: SocketAddr = address.parse().unwrap();
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    ns.run(move || {
        let deadline = Instant::now() + within;
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.write_all(request.as_bytes())?;
                let mut reply = String::new();
                stream.read_to_string(&mut reply)?;
                Ok(reply)
            })();
            match attempt {
                Ok(reply) => return Ok(reply),
                Err(error) if Instant::now() > deadline => return Err(error.to_string()),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
}
