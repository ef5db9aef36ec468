//! Root tier: host networking for real, with real TCP and UDP traffic.
//!
//! Each test builds a lab of network namespaces it owns: a "host" (where mvm's bridges,
//! taps and iptables rules go), an "internet" host behind the host's uplink, and one
//! stand-in guest per VM, attached to the VM's bridge by a veth (a tap has no carrier
//! without a VMM). The internet has no route back to the VM pool, so a reply proves
//! masquerading. Nothing leaves these namespaces; all of them vanish with the test.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mvm::config::host::HostConfig;
use mvm::config::vm::VmConfig;
use mvm::net::host::HostNet;
use mvm::state::lock::RunLock;
use mvm::state::Paths;
use mvm::vm::create::{create, CreateArgs, HostLimits};
use support::netns::{host_with_uplink, NetNs, HOST_UPLINK_IP, INTERNET_IP};
use support::Sandbox;

/// A host namespace with an uplink to an "internet" namespace, and mvm state.
struct Lab {
    sandbox: Sandbox,
    host: NetNs,
    internet: NetNs,
    guests: Vec<NetNs>,
}

impl Lab {
    fn new() -> Lab {
        let (host, internet) = host_with_uplink("host", "inet");
        Lab { sandbox: Sandbox::new(), host, internet, guests: Vec::new() }
    }

    fn paths(&self) -> Paths {
        Paths {
            state_dir: self.sandbox.state_dir(),
            run_dir: self.sandbox.run_dir(),
            config_file: self.sandbox.config_file(),
        }
    }

    /// Declares a VM the way `mvm create` does.
    fn create(&self, name: &str, extra: impl FnOnce(&mut CreateArgs)) -> VmConfig {
        let mut args =
            CreateArgs { name: name.into(), root: "host".into(), cpus: Some(1), ..CreateArgs::default() };
        extra(&mut args);
        let limits = HostLimits { cpus: 1, memory_mib: None };
        create(&args, &self.paths(), &HostConfig::default(), limits).unwrap()
    }

    /// Runs mvm's network bring-up for `vm` inside the host namespace.
    fn up(&self, vm: &VmConfig) {
        let (paths, vm) = (self.paths(), vm.clone());
        self.host.run(move || {
            HostNet::open(&paths.roots(), &HostConfig::default().network).unwrap().up(&vm.record()).unwrap()
        });
    }

    fn down(&self, vm: &VmConfig) {
        let (paths, vm) = (self.paths(), vm.clone());
        self.host.run(move || {
            HostNet::open(&paths.roots(), &HostConfig::default().network).unwrap().down(&vm.record()).unwrap()
        });
    }

    /// A stand-in guest for `vm`: a namespace with the guest's address, its default route
    /// via the gateway, attached to the VM's bridge.
    fn guest(&mut self, vm: &VmConfig) -> usize {
        let guest = NetNs::new("guest");
        let network = &vm.network;
        let host_end = format!("vg{}", network.index);
        self.host.ip(&[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            guest.name(),
        ]);
        self.host.ip(&["link", "set", &host_end, "master", &network.bridge, "up"]);
        guest.ip(&[
            "addr",
            "add",
            &format!("{}/{}", network.address, network.subnet.prefix()),
            "dev",
            "eth0",
        ]);
        guest.ip(&["link", "set", "eth0", "up"]);
        guest.ip(&["route", "add", "default", "via", &network.gateway.to_string()]);
        self.guests.push(guest);
        self.guests.len() - 1
    }

    /// `mvm ARGS…` run inside the host namespace.
    fn mvm(&self, args: &[&str]) -> support::Run {
        let mut command = self.host.command(support::mvm_binary().to_str().unwrap(), args);
        command
            .env("MVM_STATE_DIR", self.sandbox.state_dir())
            .env("MVM_RUN_DIR", self.sandbox.run_dir())
            .env("MVM_CONFIG", self.sandbox.config_file());
        support::Run::from_output(command.output().unwrap())
    }

    /// Every table's rules, as `iptables-save` prints them, but for tables that hold none
    /// (iptables-nft makes a table empty the first time anything looks at it).
    fn iptables_save(&self) -> String {
        let save = self.host.exec("iptables-save", &[]);
        let save = String::from_utf8_lossy(&save.stdout).into_owned();
        let tables = save.split_inclusive("COMMIT\n").map(|table| {
            table
                .lines()
                .filter(|line| !line.starts_with('#'))
                .map(|line| format!("{line}\n"))
                .collect::<String>()
        });
        let holds_rules = |table: &String| {
            table
                .lines()
                .any(|line| line.starts_with("-A") || (line.starts_with(':') && !line.contains(" ACCEPT ")))
        };
        tables.filter(holds_rules).collect()
    }

    /// `conntrack -I ARGS` in the host namespace: an entry planted as the kernel would track it.
    fn conntrack_insert(&self, args: &[&str]) {
        let inserted = self.host.exec("conntrack", &[&["-I"], args].concat());
        assert!(inserted.status.success(), "{}", String::from_utf8_lossy(&inserted.stderr));
    }

    /// `conntrack -L FILTERS` in the host namespace: the tracked entries they match.
    fn conntrack_list(&self, filters: &[&str]) -> String {
        let listing = self.host.exec("conntrack", &[&["-L"], filters].concat());
        String::from_utf8_lossy(&listing.stdout).into_owned()
    }

    /// Gives VM `vm`'s index claim to user `uid`, as their `mvm create` would have made it.
    fn give(&self, vm: &VmConfig, uid: u32) {
        let claim =
            self.paths().state_dir.join(mvm::state::claims::CLAIMS_DIR).join(vm.network.index.to_string());
        std::os::unix::fs::chown(claim, Some(uid), Some(uid)).unwrap();
    }

    /// Runs `action` on a [`HostNet`] acting for user `uid` in the host namespace.
    fn as_user<T: Send + 'static>(
        &self,
        uid: u32,
        action: impl FnOnce(&mut HostNet) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let paths = self.paths();
        self.host.run(move || {
            let mut net =
                HostNet::open(&paths.roots(), &HostConfig::default().network).unwrap().for_user(uid);
            action(&mut net).map_err(|error| format!("{error:#}"))
        })
    }

    fn mvm_links(&self) -> Vec<String> {
        self.host
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|line| line.split(':').nth(1))
            .map(|name| name.trim().split('@').next().unwrap().to_string())
            .filter(|name| name.starts_with("mvm"))
            .collect()
    }
}

/// Asks `server`'s port 53 from namespace `guest` for the A records of `name` over UDP.
fn dns_query(
    guest: &NetNs,
    server: std::net::Ipv4Addr,
    name: hickory_proto::rr::Name,
) -> Option<hickory_proto::op::Message> {
    use hickory_proto::op::{Message, Query};
    let server = std::net::SocketAddr::from((server, 53));
    guest.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut query = Message::new();
        query.set_id(7).set_recursion_desired(true);
        query.add_query(Query::query(name, hickory_proto::rr::RecordType::A));
        socket.send_to(&query.to_vec().unwrap(), server).ok()?;
        let mut buffer = [0u8; 512];
        let length = socket.recv(&mut buffer).ok()?;
        Message::from_vec(&buffer[..length]).ok()
    })
}

/// A TCP server in a namespace that answers each connection with `peer=<client ip>`.
struct TcpServer {
    stop: Arc<AtomicBool>,
}

impl TcpServer {
    fn start(ns: &NetNs, address: &str) -> TcpServer {
        let address: SocketAddr = address.parse().unwrap();
        let listener = ns.run(move || TcpListener::bind(address).unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.write_all(format!("peer={}", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpServer { stop }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A UDP server in a namespace that answers each datagram with `peer=<client ip>`.
fn udp_server(ns: &NetNs, address: &str) -> TcpServer {
    let address: SocketAddr = address.parse().unwrap();
    let socket = ns.run(move || UdpSocket::bind(address).unwrap());
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("peer={}", peer.ip()).as_bytes(), peer);
            }
        }
    });
    TcpServer { stop }
}

const WAIT: Duration = Duration::from_millis(1500);

/// Connects from `ns` to `address`; the server's reply, or why there was none.
fn tcp_from(ns: &NetNs, address: &str) -> Result<String, String> {
    let address: SocketAddr = address.parse().unwrap();
    ns.run(move || {
        let mut stream = TcpStream::connect_timeout(&address, WAIT).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).map_err(|e| e.to_string())?;
        Ok(reply)
    })
}

/// Sends one datagram from `ns` to `address`; the reply, or why there was none.
fn udp_from(ns: &NetNs, address: &str) -> Result<String, String> {
    let address: SocketAddr = address.parse().unwrap();
    ns.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket.set_read_timeout(Some(WAIT)).unwrap();
        socket.send_to(b"ping", address).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

macro_rules! root_test {
    ($name:ident) => {
        if !support::require_root(stringify!($name))
            || !support::require_program(stringify!($name), "iptables")
        {
            return;
        }
    };
}

#[test]
fn guest_reaches_the_internet_masqueraded() {
    root_test!(guest_reaches_the_internet_masqueraded);
    let mut lab = Lab::new();
    let vm = lab.create("web", |_| {});
    lab.up(&vm);
    let guest = lab.guest(&vm);
    let _tcp = TcpServer::start(&lab.internet, &format!("{INTERNET_IP}:80"));
    let _udp = udp_server(&lab.internet, &format!("{INTERNET_IP}:53"));
    let expected = format!("peer={HOST_UPLINK_IP}");
    assert_eq!(tcp_from(&lab.guests[guest], &format!("{INTERNET_IP}:80")), Ok(expected.clone()));
    assert_eq!(udp_from(&lab.guests[guest], &format!("{INTERNET_IP}:53")), Ok(expected));
    // Guest root forging its source address gets nothing out (it would leave unmasqueraded).
    let receiver = lab
        .internet
        .command(
            "python3",
            &["-c", &format!(
                "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{INTERNET_IP}', 5599))\ns.settimeout(3)\n\
                 try:\n    while True: print(s.recvfrom(100)[1][0], flush=True)\nexcept OSError: pass"
            )],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.guests[guest].ip(&["addr", "add", "10.99.0.5/32", "dev", "eth0"]);
    let send = |source: &str| {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{source}', 0))\ns.sendto(b'x', ('{INTERNET_IP}', 5599))"
        );
        assert!(lab.guests[guest].exec("python3", &["-c", &script]).status.success());
    };
    send("10.99.0.5");
    send(&vm.network.address.to_string());
    let received = String::from_utf8(receiver.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(received.trim(), HOST_UPLINK_IP, "a forged source got out (or the real one did not)");
}

#[test]
fn guests_cannot_reach_each_other_or_the_host_without_host_access() {
    root_test!(guests_cannot_reach_each_other_or_the_host_without_host_access);
    let mut lab = Lab::new();
    let a = lab.create("a", |_| {});
    let b = lab.create("b", |_| {});
    let c = lab.create("c", |args| args.host_access = true);
    for vm in [&a, &b, &c] {
        lab.up(vm);
    }
    let (ga, gb, gc) = (lab.guest(&a), lab.guest(&b), lab.guest(&c));
    let _on_a = TcpServer::start(&lab.guests[ga], &format!("{}:7000", a.network.address));
    let _on_b = TcpServer::start(&lab.guests[gb], &format!("{}:7000", b.network.address));
    let _udp_on_b = udp_server(&lab.guests[gb], &format!("{}:7001", b.network.address));
    assert!(tcp_from(&lab.guests[ga], &format!("{}:7000", b.network.address)).is_err());
    assert!(tcp_from(&lab.guests[gb], &format!("{}:7000", a.network.address)).is_err());
    assert!(udp_from(&lab.guests[ga], &format!("{}:7001", b.network.address)).is_err());
    // Not through the other VM's gateway either.
    assert!(tcp_from(&lab.guests[ga], &format!("{}:7000", b.network.gateway)).is_err());
    let _host_service = TcpServer::start(&lab.host, "0.0.0.0:9000");
    assert!(tcp_from(&lab.guests[ga], &format!("{}:9000", a.network.gateway)).is_err());
    assert_eq!(
        tcp_from(&lab.guests[gc], &format!("{}:9000", c.network.gateway)),
        Ok(format!("peer={}", c.network.address)),
        "--host-access lets the guest reach host services"
    );
}

/// The CVE-2020-8558 pattern: a guest routes 127.0.0.1 to its gateway. With
/// `route_localnet` on the bridge (which forwards from the host's localhost need), the host
/// would take it for its own loopback: services bound to 127.0.0.1 alone, and root VMs'
/// automatic forwards, would hear a `--host-access` guest. They must not, while the host's
/// services on the gateway address still answer it.
#[test]
fn no_guest_reaches_the_hosts_loopback() {
    root_test!(no_guest_reaches_the_hosts_loopback);
    let mut lab = Lab::new();
    let plain = lab.create("plain", |_| {});
    let open = lab.create("open", |args| args.host_access = true);
    for vm in [&plain, &open] {
        lab.up(vm);
    }
    let (plain_guest, open_guest) = (lab.guest(&plain), lab.guest(&open));
    let _everywhere = TcpServer::start(&lab.host, "0.0.0.0:9101");
    for (vm, guest) in [(&plain, plain_guest), (&open, open_guest)] {
        let guest = &lab.guests[guest];
        // The attacker's routing: 127.0.0.1 leaves through eth0 to the gateway.
        guest.exec(
            "sysctl",
            &["-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.eth0.route_localnet=1"],
        );
        for local in ["127.0.0.0/8", "127.0.0.1"] {
            guest.ip(&["route", "del", "local", local, "dev", "lo", "table", "local"]);
        }
        guest.ip(&["route", "add", "127.0.0.1/32", "via", &vm.network.gateway.to_string(), "dev", "eth0"]);
        // A loopback-only service on the host notes what reaches it.
        let listening = lab.host.run(|| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:9102").unwrap();
            socket.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
            socket
        });
        guest.run(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..3 {
                let _ = socket.send_to(b"from the guest", "127.0.0.1:9102");
            }
        });
        let mut buffer = [0u8; 64];
        let heard = listening.recv_from(&mut buffer).map(|(len, from)| (buffer[..len].to_vec(), from));
        assert!(heard.is_err(), "VM {}'s datagram reached the host's loopback: {heard:?}", vm.name);
    }
    assert!(
        tcp_from(&lab.guests[open_guest], &format!("{}:9101", open.network.gateway)).is_ok(),
        "--host-access still reaches the host's services on the gateway"
    );
}

#[test]
fn port_forwards_answer_from_localhost_and_from_outside() {
    root_test!(port_forwards_answer_from_localhost_and_from_outside);
    let mut lab = Lab::new();
    let vm = lab.create("web", |args| args.ports = vec!["8080:3000".into(), "5353:53/udp".into()]);
    lab.up(&vm);
    let guest = lab.guest(&vm);
    let _tcp = TcpServer::start(&lab.guests[guest], "0.0.0.0:3000");
    let _udp = udp_server(&lab.guests[guest], "0.0.0.0:53");
    for (from, target) in [(&lab.host, "127.0.0.1"), (&lab.internet, HOST_UPLINK_IP)] {
        let tcp = tcp_from(from, &format!("{target}:8080"));
        assert!(tcp.as_ref().is_ok_and(|reply| reply.starts_with("peer=")), "tcp via {target}: {tcp:?}");
        let udp = udp_from(from, &format!("{target}:5353"));
        assert!(udp.as_ref().is_ok_and(|reply| reply.starts_with("peer=")), "udp via {target}: {udp:?}");
    }
    // The internet client's own address reaches the guest: forwards are not masqueraded.
    assert_eq!(tcp_from(&lab.internet, &format!("{HOST_UPLINK_IP}:8080")), Ok(format!("peer={INTERNET_IP}")));
}

#[test]
fn an_offline_guest_reaches_nothing() {
    root_test!(an_offline_guest_reaches_nothing);
    let mut lab = Lab::new();
    let vm = lab.create("sealed", |args| {
        args.offline = true;
        args.ports = vec!["8080:3000".into(), "5353:53/udp".into()];
    });
    lab.up(&vm);
    let guest = lab.guest(&vm);
    let _tcp = TcpServer::start(&lab.internet, &format!("{INTERNET_IP}:80"));
    let _udp = udp_server(&lab.internet, &format!("{INTERNET_IP}:53"));
    let _host = TcpServer::start(&lab.host, "0.0.0.0:9000");
    assert!(tcp_from(&lab.guests[guest], &format!("{INTERNET_IP}:80")).is_err());
    assert!(udp_from(&lab.guests[guest], &format!("{INTERNET_IP}:53")).is_err());
    assert!(tcp_from(&lab.guests[guest], &format!("{}:9000", vm.network.gateway)).is_err());
    // Its forwards still answer, from the host's localhost and from outside the host.
    let _guest_tcp = TcpServer::start(&lab.guests[guest], "0.0.0.0:3000");
    let _guest_udp = udp_server(&lab.guests[guest], "0.0.0.0:53");
    for (from, target) in [(&lab.host, "127.0.0.1"), (&lab.internet, HOST_UPLINK_IP)] {
        let tcp = tcp_from(from, &format!("{target}:8080"));
        assert!(tcp.as_ref().is_ok_and(|reply| reply.starts_with("peer=")), "tcp via {target}: {tcp:?}");
        let udp = udp_from(from, &format!("{target}:5353"));
        assert!(udp.as_ref().is_ok_and(|reply| reply.starts_with("peer=")), "udp via {target}: {udp:?}");
    }
    // And it still reaches nothing itself.
    assert!(tcp_from(&lab.guests[guest], &format!("{INTERNET_IP}:80")).is_err());
}

#[test]
fn apply_is_idempotent_converges_and_teardown_leaves_nothing() {
    root_test!(apply_is_idempotent_converges_and_teardown_leaves_nothing);
    let lab = Lab::new();
    let pristine = lab.iptables_save();
    let web = lab.create("web", |args| args.ports = vec!["8080:80".into()]);
    let api = lab.create("api", |_| {});
    // A crash half-way: the bridge exists, without its address, tap or rules.
    lab.host.ip(&["link", "add", "mvmbr0", "type", "bridge"]);
    lab.up(&web);
    lab.up(&api);
    let once = lab.iptables_save();
    let links = lab.mvm_links();
    assert_eq!(links, ["mvmbr0", "mvmtap0", "mvmbr1", "mvmtap1"]);
    assert!(lab.host.ip(&["-4", "addr", "show", "mvmbr0"]).contains("10.200.0.1/24"));
    assert!(lab.host.ip(&["link", "show", "mvmtap0"]).contains("master mvmbr0"));
    lab.up(&web);
    lab.up(&api);
    assert_eq!(lab.iptables_save(), once, "a second apply changed the rules");
    assert_eq!(lab.mvm_links(), links);
    assert_eq!(once.matches("-i mvmbr+ -o mvmbr+").count(), 1, "isolation is one rule:\n{once}");
    lab.down(&api);
    let after_api = lab.iptables_save();
    assert!(!after_api.contains("mvm:api") && after_api.contains("mvm:web"), "{after_api}");
    assert_eq!(lab.mvm_links(), ["mvmbr0", "mvmtap0"]);
    lab.down(&web);
    assert_eq!(lab.iptables_save(), pristine, "teardown must restore the rules exactly");
    assert!(lab.mvm_links().is_empty());
    lab.down(&web);
}

#[test]
fn a_forward_added_while_running_works_at_once_and_removal_stops_it() {
    root_test!(a_forward_added_while_running_works_at_once_and_removal_stops_it);
    let mut lab = Lab::new();
    let vm = lab.create("web", |_| {});
    lab.up(&vm);
    let guest = lab.guest(&vm);
    let _tcp = TcpServer::start(&lab.guests[guest], "0.0.0.0:3000");
    let _udp = udp_server(&lab.guests[guest], "0.0.0.0:53");
    assert!(tcp_from(&lab.host, "127.0.0.1:8080").is_err());
    let run_dir = lab.sandbox.run_dir().join("web");
    std::fs::create_dir_all(&run_dir).unwrap();
    let _running = RunLock::try_acquire(&run_dir.join("lock")).unwrap().unwrap();
    let out = lab.mvm(&["port", "web", "8080:3000"]);
    assert_eq!(out.ok().trim(), "forwarding host port 8080/tcp to VM 'web' port 3000");
    assert!(tcp_from(&lab.host, "127.0.0.1:8080").is_ok_and(|r| r.starts_with("peer=")));
    let out = lab.mvm(&["port", "web", "0:53/udp"]);
    let picked: u16 = out.ok().split_whitespace().nth(3).unwrap().split('/').next().unwrap().parse().unwrap();
    assert!(udp_from(&lab.internet, &format!("{HOST_UPLINK_IP}:{picked}")).is_ok());
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["port", "web", "--json"]).ok()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    lab.mvm(&["port", "web", "--rm", "8080"]).ok();
    assert!(tcp_from(&lab.host, "127.0.0.1:8080").is_err());
    lab.mvm(&["port", "web", "--rm", &format!("{picked}/udp")]).ok();
    assert!(udp_from(&lab.internet, &format!("{HOST_UPLINK_IP}:{picked}")).is_err());
    lab.mvm(&["port", "web", "--rm", "8080"]).fails(3, &["forwards no host port 8080"]);
}

#[test]
fn taken_host_ports_are_refused_naming_the_owner() {
    root_test!(taken_host_ports_are_refused_naming_the_owner);
    let lab = Lab::new();
    lab.create("web", |args| args.ports = vec!["8080:80".into()]);
    lab.create("api", |_| {});
    lab.mvm(&["port", "api", "8080:3000"]).fails(4, &["already forwarded by VM 'web'"]);
    lab.mvm(&["port", "web", "8080:81"]).fails(4, &["VM 'web' already forwards host port 8080/tcp"]);
    let _listener = lab.host.run(|| TcpListener::bind("127.0.0.1:9090").unwrap());
    let me = std::process::id().to_string();
    lab.mvm(&["port", "api", "9090:80"]).fails(4, &["in use by process", &me, "pick another host port"]);
    let toml = std::fs::read_to_string(lab.sandbox.state_dir().join("api/vm.toml")).unwrap();
    assert!(!toml.contains("9090"), "a refused forward must not be saved");
    lab.mvm(&["port", "api", "9090:80/udp"]).ok();
}

#[test]
fn a_pool_overlapping_a_host_route_is_refused() {
    root_test!(a_pool_overlapping_a_host_route_is_refused);
    let lab = Lab::new();
    let vm = lab.create("web", |_| {});
    lab.host.ip(&["route", "add", "10.200.7.0/24", "via", INTERNET_IP]);
    let (paths, config) = (lab.paths(), vm.clone());
    let error = lab.host.run(move || {
        let mut net = HostNet::open(&paths.roots(), &HostConfig::default().network).unwrap();
        format!("{:#}", net.up(&config.record()).unwrap_err())
    });
    assert!(error.contains("overlaps the host route 10.200.7.0/24 on uplink0"), "{error}");
    assert!(lab.mvm_links().is_empty(), "nothing is made when the pool is refused");
}

#[test]
fn doctor_finds_and_fixes_orphans() {
    root_test!(doctor_finds_and_fixes_orphans);
    let lab = Lab::new();
    let vm = lab.create("web", |args| args.ports = vec!["8080:80".into()]);
    lab.up(&vm);
    let run_dir = lab.sandbox.run_dir().join("web");
    std::fs::create_dir_all(&run_dir).unwrap();
    // What a crashed supervisor leaves: a socket next to the lock and status.
    for file in ["lock", "status.json", "vsock.sock"] {
        std::fs::write(run_dir.join(file), "").unwrap();
    }
    // A stopped VM keeps its lock and status; that is not an orphan.
    let stopped = lab.sandbox.run_dir().join("api");
    lab.create("api", |_| {});
    std::fs::create_dir_all(&stopped).unwrap();
    std::fs::write(stopped.join("status.json"), "{}").unwrap();
    let report: serde_json::Value = serde_json::from_str(&lab.mvm(&["doctor", "--json"]).stdout).unwrap();
    let orphans =
        report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "orphans").unwrap().clone();
    assert_eq!(orphans["status"], "warn", "{orphans}");
    let detail = orphans["detail"].as_str().unwrap();
    assert!(detail.contains("mvmbr0") && detail.contains("firewall rules of web"), "{detail}");
    assert!(detail.contains("/run/web") && !detail.contains("/run/api"), "{detail}");
    let uplink = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "uplink").unwrap().clone();
    assert_eq!(uplink["detail"], "default route via uplink0");
    lab.mvm(&["doctor", "--fix", "--json"]);
    assert!(lab.mvm_links().is_empty());
    assert!(!lab.iptables_save().contains("mvm"));
    assert!(!run_dir.join("vsock.sock").exists());
    assert!(run_dir.join("status.json").exists(), "the last status of a VM that still exists is kept");
    assert!(stopped.join("status.json").exists());
    // A running VM's network is not an orphan.
    lab.up(&vm);
    std::fs::create_dir_all(lab.sandbox.run_dir().join("web")).unwrap();
    let _running = RunLock::try_acquire(&lab.sandbox.run_dir().join("web/lock")).unwrap().unwrap();
    let report: serde_json::Value = serde_json::from_str(&lab.mvm(&["doctor", "--json"]).stdout).unwrap();
    let orphans =
        report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "orphans").unwrap().clone();
    assert_eq!(orphans["detail"], "none");
}

/// A user's VM (what the setuid helper brings up): its tap is theirs, so another user's
/// VM with the same links is refused and never torn down; its localhost forward takes
/// only its owner's connections; rules converge to themselves; guests send only from
/// their own address.
#[test]
fn a_users_vm_network_is_theirs_alone() {
    root_test!(a_users_vm_network_is_theirs_alone);
    let mut lab = Lab::new();
    let web = lab.create("web", |args| args.ports = vec!["8080:80".into()]);
    let (alice, bob) = (4242, 4343);
    lab.give(&web, alice);
    fn as_user(lab: &Lab, uid: u32, vm: &VmConfig, up: bool) -> Result<(), String> {
        let vm = vm.clone();
        lab.as_user(uid, move |net| if up { net.up(&vm.record()) } else { net.down(&vm.record()) })
    }
    as_user(&lab, alice, &web, true).unwrap();
    let owner = lab.host.ip(&["-d", "link", "show", "mvmtap0"]);
    assert!(owner.contains(&format!("user {alice}")), "the tap is not alice's:\n{owner}");
    let once = lab.iptables_save();
    assert!(once.contains(&format!("--dport 8080 -m owner --uid-owner {alice} ")), "{once}");
    assert!(once.contains("-s 10.200.0.2/32 -i mvmbr0 ! -o mvmbr+"), "{once}");
    as_user(&lab, alice, &web, true).unwrap();
    assert_eq!(lab.iptables_save(), once, "a second bring-up changed the rules");
    // Only alice's programs reach her guest from the host: by its address, and through
    // her forward on localhost.
    let guest = lab.guest(&web);
    let _server = TcpServer::start(&lab.guests[guest], "0.0.0.0:80");
    let connects = |uid: u32, target: &str| {
        let script = format!(
            "import socket\ns = socket.create_connection(('{}', {}), timeout=2)\nprint(s.recv(100).decode())",
            target.split(':').next().unwrap(),
            target.split(':').nth(1).unwrap()
        );
        let uid = uid.to_string();
        let args = ["--reuid", &uid, "--regid", &uid, "--clear-groups", "/usr/bin/python3", "-c", &script];
        lab.host.exec("setpriv", &args).status.success()
    };
    let guest_address = format!("{}:80", web.network.address);
    assert!(connects(alice, &guest_address), "alice cannot reach her guest");
    assert!(connects(alice, "127.0.0.1:8080"), "alice's forward does not answer her");
    assert!(!connects(bob, &guest_address), "bob reached alice's guest");
    assert!(!connects(bob, "127.0.0.1:8080"), "bob's connection went to alice's guest");
    // Bob's record naming the same links: refused, and alice's stay.
    let error = as_user(&lab, bob, &web, true).unwrap_err();
    assert!(error.contains("not claimed for it by you"), "{error}");
    assert!(as_user(&lab, bob, &web, false).is_err());
    assert_eq!(lab.mvm_links(), ["mvmbr0", "mvmtap0"]);
    as_user(&lab, alice, &web, false).unwrap();
    assert!(lab.mvm_links().is_empty());
}

/// DNS on the gateway (`mvm::dns`): a guest asks its gateway's port 53 and gets what the
/// host's resolver says, a name only a "VPN" resolver on the host's loopback knows
/// included; another VM cannot use this VM's resolver; an offline VM is refused; an
/// answer too big for UDP comes whole over TCP.
#[test]
fn guests_resolve_through_their_gateway_what_the_host_resolves() {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, RecordType};
    root_test!(guests_resolve_through_their_gateway_what_the_host_resolves);
    let mut lab = Lab::new();
    let web = lab.create("web", |_| {});
    let api = lab.create("api", |_| {});
    let off = lab.create("off", |args| args.offline = true);
    for vm in [&web, &api, &off] {
        lab.up(vm);
    }
    // The VPN's resolver: on the host's loopback only.
    support::dns::vpn_resolver(&lab.host);
    let dir = tempfile::tempdir().unwrap();
    let resolver = support::dns::host_files_naming_it(dir.path());
    let serve = |vm: &VmConfig| {
        let (gateway, bridge, guest, resolver, offline) =
            (vm.network.gateway, vm.network.bridge.clone(), vm.network.address, resolver.clone(), vm.offline);
        lab.host.run(move || {
            mvm::dns::serve(mvm::dns::bind(gateway, &bridge).unwrap(), guest, resolver, offline).unwrap()
        })
    };
    let mut servers: Vec<mvm::dns::Server> = [&web, &api, &off].into_iter().map(serve).collect();
    let ask_about = dns_query;
    let vpn_name = Name::from_ascii(format!("{}.", support::dns::VPN_NAME)).unwrap();
    let ask = |guest: &NetNs, server: std::net::Ipv4Addr| ask_about(guest, server, vpn_name.clone());
    let (web_guest, api_guest, off_guest) = (lab.guest(&web), lab.guest(&api), lab.guest(&off));
    let answer = ask(&lab.guests[web_guest], web.network.gateway).expect("no answer from the gateway");
    assert_eq!(answer.answers()[0].data(), &RData::A(A(support::dns::VPN_ADDRESS.parse().unwrap())));
    assert!(ask(&lab.guests[api_guest], web.network.gateway).is_none(), "a VM used another's resolver");
    assert!(ask(&lab.guests[api_guest], api.network.gateway).is_some());
    let refused = ask(&lab.guests[off_guest], off.network.gateway).expect("no answer for the offline VM");
    assert_eq!(refused.response_code(), ResponseCode::Refused);
    // Too many addresses for UDP: truncated there, whole over TCP (relayed over TCP).
    let many = Name::from_ascii(format!("{}.", support::dns::MANY_NAME)).unwrap();
    let truncated = ask_about(&lab.guests[web_guest], web.network.gateway, many.clone()).unwrap();
    assert!(truncated.truncated());
    let gateway = web.network.gateway;
    let whole = lab.guests[web_guest].run(move || {
        let mut stream = std::net::TcpStream::connect((gateway, 53)).expect("no DNS over TCP on the gateway");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut query = Message::new();
        query.set_id(8).set_recursion_desired(true).add_query(Query::query(many, RecordType::A));
        let query = query.to_vec().unwrap();
        stream.write_all(&[&(query.len() as u16).to_be_bytes()[..], &query].concat()).unwrap();
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).unwrap();
        let mut answer = vec![0u8; u16::from_be_bytes(length) as usize];
        stream.read_exact(&mut answer).unwrap();
        Message::from_vec(&answer).unwrap()
    });
    assert_eq!(whole.answers().len(), usize::from(support::dns::MANY_COUNT));
    let stolen = lab.guests[api_guest].run(move || {
        std::net::TcpStream::connect_timeout(&(gateway, 53).into(), Duration::from_secs(2)).is_ok()
    });
    assert!(!stolen, "a VM reached another's DNS over TCP");
    // A host program is no guest: it gets no answers (nor takes the slots of the VM's).
    assert!(ask(&lab.host, web.network.gateway).is_none(), "the host's programs used a VM's resolver");
    // The port is a privileged one: no user can take it before a VM's supervisor does and
    // answer the guest in its place.
    let next = mvm::addr::AddressPool::new("10.200.0.0/16".parse().unwrap(), 24).unwrap().vm(9).unwrap();
    let bind_as_nobody = |port: u16| {
        let script = format!(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.setsockopt(socket.IPPROTO_IP, 15, 1); s.bind(('{}', {port}))",
            next.gateway
        );
        let args =
            ["--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-c", &script];
        lab.host.nsenter("setpriv", &args).status().unwrap().success()
    };
    assert!(bind_as_nobody(6300), "the check itself is broken: nobody cannot bind a high port");
    let refused = !bind_as_nobody(mvm::dns::GATEWAY_DNS_PORT);
    assert!(refused, "a user bound a VM's DNS port before it");

    // Sockets someone kept from an earlier VM on this gateway (a user gets their VM's from
    // the helper): once that bridge is gone and the next VM's made, they neither stand in
    // its way nor take its queries.
    drop(servers.remove(0));
    std::thread::sleep(Duration::from_millis(600));
    let (gateway, bridge) = (web.network.gateway, web.network.bridge.clone());
    let stale = lab.host.run(move || mvm::dns::bind(gateway, &bridge).unwrap());
    lab.down(&web);
    lab.up(&web);
    lab.host.ip(&["link", "set", &format!("vg{}", web.network.index), "master", &web.network.bridge, "up"]);
    // The new bridge has a new address: the guest, were it a VM that restarted with its
    // network, would start with no neighbour entry for its gateway.
    lab.guests[web_guest].ip(&["neigh", "flush", "all"]);
    let (bridge, guest) = (web.network.bridge.clone(), web.network.address);
    let fresh = lab.host.run(move || mvm::dns::bind(gateway, &bridge));
    let fresh = fresh.expect("a stale socket stood in the way of the VM's DNS");
    let resolver = resolver.clone();
    let _fresh = lab.host.run(move || mvm::dns::serve(fresh, guest, resolver, false).unwrap());
    let answer =
        ask(&lab.guests[web_guest], web.network.gateway).expect("no answer from the new bridge's DNS");
    assert_eq!(answer.answers()[0].data(), &RData::A(A(support::dns::VPN_ADDRESS.parse().unwrap())));
    stale.udp.set_nonblocking(true).unwrap();
    assert!(stale.udp.recv(&mut [0u8; 512]).is_err(), "a stale socket got the guest's query");
}

/// An index is reused with nothing of its last holder's. Alice's VM, its network up and
/// its DNS sockets kept by her, is removed without its network taken down (her tap
/// deleted, her supervisor killed); Bob's VM gets the index. His bring-up makes the
/// bridge anew (so her sockets, bound to the old one, hear nothing), his tap is his, and
/// no rule of hers (a DNAT to the address, host access) applies to his guest.
#[test]
fn a_reused_index_keeps_nothing_of_its_last_holder() {
    root_test!(a_reused_index_keeps_nothing_of_its_last_holder);
    let mut lab = Lab::new();
    let (alice, bob) = (4242, 4343);
    let web = lab.create("web", |args| {
        args.ports = vec!["8080:80".into()];
        args.host_access = true;
    });
    lab.give(&web, alice);
    let up = web.clone();
    lab.as_user(alice, move |net| net.up(&up.record())).unwrap();
    let (gateway, bridge) = (web.network.gateway, web.network.bridge.clone());
    let kept = lab.as_user(alice, move |_| Ok(mvm::dns::bind(gateway, &bridge)?)).unwrap();
    let old_bridge = lab.host.ip(&["-d", "link", "show", &web.network.bridge]);
    assert!(old_bridge.contains("alias mvm:web:4242"), "{old_bridge}");
    // A connection of hers to her guest, left open (her guest silenced): the kernel keeps
    // it for days.
    let (gw, guest) = (web.network.gateway.to_string(), web.network.address.to_string());
    lab.conntrack_insert(&[
        "-p",
        "tcp",
        "-s",
        &gw,
        "-d",
        &guest,
        "--sport",
        "40000",
        "--dport",
        "5432",
        "--state",
        "ESTABLISHED",
        "-u",
        "SEEN_REPLY,ASSURED",
        "-t",
        "432000",
    ]);
    // Removed without `mvm rm` taking the network down: her record and claim are gone.
    lab.host.ip(&["link", "del", &web.network.tap]);
    let paths = lab.paths();
    std::fs::remove_dir_all(paths.vm_dir(&web.name)).unwrap();
    std::fs::remove_file(paths.state_dir.join(mvm::state::claims::CLAIMS_DIR).join("0")).unwrap();
    assert!(lab.iptables_save().contains("mvm:web"));

    let api = lab.create("api", |_| {});
    assert_eq!(api.network.index, web.network.index, "the test needs the index reused");
    lab.give(&api, bob);
    let live = api.clone();
    let error = lab.as_user(bob, move |net| net.check_live(&live.record())).unwrap_err();
    assert!(error.contains("is not up"), "DNS sockets for a network that is not up: {error}");
    let up = api.clone();
    lab.as_user(bob, move |net| net.up(&up.record())).unwrap();
    let rules = lab.iptables_save();
    assert!(!rules.contains("mvm:web"), "alice's rules apply to bob's guest:\n{rules}");
    let tracked = lab.conntrack_list(&["-d", &guest]);
    assert!(!tracked.contains("dport=5432"), "her connection reaches bob's guest:\n{tracked}");
    let new_bridge = lab.host.ip(&["-d", "link", "show", &api.network.bridge]);
    assert!(new_bridge.contains("alias mvm:api:4343"), "{new_bridge}");
    let index_of = |text: &str| text.split(':').next().unwrap().trim().to_string();
    assert_ne!(index_of(&old_bridge), index_of(&new_bridge), "bob's VM adopted alice's bridge");
    let tap = lab.host.ip(&["-d", "link", "show", &api.network.tap]);
    assert!(tap.contains(&format!("user {bob}")), "{tap}");
    let live = api.clone();
    lab.as_user(bob, move |net| net.check_live(&live.record())).unwrap();

    // His guest's DNS: his supervisor's sockets bind and answer; hers hear nothing.
    support::dns::vpn_resolver(&lab.host);
    let dir = tempfile::tempdir().unwrap();
    let resolver = support::dns::host_files_naming_it(dir.path());
    let (bridge, guest) = (api.network.bridge.clone(), api.network.address);
    let sockets = lab.host.run(move || mvm::dns::bind(gateway, &bridge)).expect("kept sockets blocked bob's");
    let _server = lab.host.run(move || mvm::dns::serve(sockets, guest, resolver, false).unwrap());
    let api_guest = lab.guest(&api);
    let vpn_name = hickory_proto::rr::Name::from_ascii(format!("{}.", support::dns::VPN_NAME)).unwrap();
    let asked = dns_query(&lab.guests[api_guest], gateway, vpn_name).is_some();
    assert!(asked, "bob's guest got no answer from its gateway");
    kept.udp.set_nonblocking(true).unwrap();
    assert!(kept.udp.recv(&mut [0u8; 512]).is_err(), "alice's kept socket heard bob's guest");

    // Down takes his links; a link made for another VM on the index is left alone.
    let down = api.clone();
    lab.as_user(bob, move |net| net.down(&down.record())).unwrap();
    assert!(lab.mvm_links().is_empty(), "{:?}", lab.mvm_links());
    lab.host.ip(&["link", "add", &api.network.bridge, "type", "bridge"]);
    lab.host.ip(&["link", "set", &api.network.bridge, "alias", "mvm:other:1"]);
    let down = api.clone();
    lab.as_user(bob, move |net| net.down(&down.record())).unwrap();
    assert_eq!(
        lab.mvm_links(),
        std::slice::from_ref(&api.network.bridge),
        "down removed another VM's bridge"
    );
}

/// A guest cannot touch a connection that is not its own. Another VM's address (or its
/// gateway's), forged as a source, is dropped before the connection tracker sees it, so a
/// hostile guest can neither answer a host user's datagram to that VM (which would let the
/// user's later ones past the owner rule as replies, and the VM's replies into the host)
/// nor keep a dead VM's entries alive for the next holder of its index.
#[test]
fn a_guest_forging_another_source_changes_no_tracked_connection() {
    root_test!(a_guest_forging_another_source_changes_no_tracked_connection);
    let mut lab = Lab::new();
    let (web, api) = (lab.create("web", |_| {}), lab.create("api", |_| {}));
    lab.up(&web);
    lab.up(&api);
    let attacker = lab.guest(&api);
    let victim = web.network.address.to_string();
    // A host user's datagram to web's guest, not answered yet.
    let peer = "192.0.2.9";
    lab.conntrack_insert(&[
        "-p", "udp", "-s", peer, "-d", &victim, "--sport", "41000", "--dport", "9998", "-t", "120",
    ]);
    let entry = || lab.conntrack_list(&["-p", "udp", "-d", &victim, "--dport", "9998"]);
    assert!(entry().contains("[UNREPLIED]"), "{}", entry());
    // api's guest answers it as web's guest would, from web's address on its own link.
    lab.guests[attacker].ip(&["addr", "add", &format!("{victim}/32"), "dev", "eth0"]);
    let forged: std::net::SocketAddr = format!("{victim}:9998").parse().unwrap();
    lab.guests[attacker].run(move || {
        let socket = std::net::UdpSocket::bind(forged).unwrap();
        for _ in 0..3 {
            socket.send_to(b"a forged reply", (peer, 41000)).unwrap();
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = entry();
    assert!(after.contains("[UNREPLIED]"), "a forged reply from another bridge answered the entry:\n{after}");
}

/// The only tracked entries a network's down leaves are the kernel's own unanswered IGMP
/// reports from the gateway (what a bridge sends as it comes up; sparing them spares the
/// deletions, about 100 ms, at nearly every up and down). The guest's own group traffic, a
/// report something answered and a host user's broadcast from the gateway are forgotten
/// like any other entry.
#[test]
fn only_the_kernels_unanswered_igmp_outlives_a_down() {
    root_test!(only_the_kernels_unanswered_igmp_outlives_a_down);
    let lab = Lab::new();
    let web = lab.create("web", |_| {});
    let (gateway, guest) = (web.network.gateway.to_string(), web.network.address.to_string());
    let broadcast = web.network.subnet.nth(web.network.subnet.size() - 1).unwrap().to_string();
    let plant = |protocol: &str, source: &str, group: &str, status: &[&str]| {
        let mut args = vec!["-p", protocol, "-s", source, "-d", group, "-t", "600"];
        if protocol == "udp" {
            args.extend(["--sport", "40000", "--dport", "9999"]);
        }
        args.extend(status);
        lab.conntrack_insert(&args);
    };
    let listed = |source: &str, group: &str| {
        lab.conntrack_list(&["-s", source, "-d", group]).contains(&format!("dst={group}"))
    };
    for (protocol, source, group, status) in [
        ("2", guest.as_str(), "224.0.0.251", &[][..]),
        ("2", gateway.as_str(), "224.0.0.252", &["-u", "SEEN_REPLY"][..]),
        ("udp", gateway.as_str(), broadcast.as_str(), &[][..]),
        ("udp", gateway.as_str(), "224.0.0.251", &[][..]),
    ] {
        lab.up(&web);
        plant(protocol, source, group, status);
        lab.down(&web);
        assert!(!listed(source, group), "{protocol} {source} -> {group} {status:?} outlived the network");
    }
    lab.up(&web);
    plant("2", &gateway, "224.0.0.253", &[]);
    lab.down(&web);
    assert!(listed(&gateway, "224.0.0.253"), "the kernel's own report was deleted: the exception is gone");
}
