//! Network namespaces made by a test, deleted (with every process left in them) on drop,
//! also when the test panics. Traffic in root-tier tests never leaves these namespaces.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A named network namespace (`ip netns`), unique to this test process.
pub struct NetNs {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// A new namespace with its loopback up.
    pub fn new(label: &str) -> NetNs {
        let name = format!("mvmt-{label}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let netns = NetNs { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME PROGRAM ARGS…`, not yet run.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]).args(args);
        command
    }

    /// `nsenter --net=… PROGRAM ARGS…`: like [`NetNs::command`] but in the caller's mount
    /// namespace (`ip netns exec` makes a private one), so mounts made by the program stay
    /// visible to the test.
    pub fn nsenter(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.name)).arg(program).args(args);
        command
    }

    /// Runs `PROGRAM ARGS…` in the namespace and returns its output, success or not.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args).output().unwrap()
    }

    /// Runs `ip ARGS…` in the namespace and asserts success.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(&mut self.command("ip", args))
    }

    /// Runs `work` on a thread that has entered this namespace, so sockets it opens
    /// live there; returns what `work` returns.
    pub fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            work()
        })
        .join()
        .expect("work inside the namespace panicked")
    }

    /// Moves interface `link` (in the caller's namespace) into this one.
    #[track_caller]
    pub fn adopt(&self, link: &str) {
        run_ok(Command::new("ip").args(["link", "set", link, "netns", &self.name]));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The host's address on the link to the "internet" namespace.
pub const HOST_UPLINK_IP: &str = "198.51.100.1";
/// The "internet" namespace's address (TEST-NET-2; it has no route back to VM subnets).
pub const INTERNET_IP: &str = "198.51.100.2";

/// A "host" namespace whose default route leads over `uplink0` to an "internet" one.
pub fn host_with_uplink(host_label: &str, internet_label: &str) -> (NetNs, NetNs) {
    let (host, internet) = (NetNs::new(host_label), NetNs::new(internet_label));
    host.ip(&["link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", internet.name()]);
    host.ip(&["addr", "add", &format!("{HOST_UPLINK_IP}/24"), "dev", "uplink0"]);
    host.ip(&["link", "set", "uplink0", "up"]);
    host.ip(&["route", "add", "default", "via", INTERNET_IP]);
    internet.ip(&["addr", "add", &format!("{INTERNET_IP}/24"), "dev", "eth0"]);
    internet.ip(&["link", "set", "eth0", "up"]);
    (host, internet)
}

/// Runs a command, panicking with its stderr when it fails; returns stdout.
#[track_caller]
pub fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
