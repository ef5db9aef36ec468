//! Automatic port forwarding (issue 14, part 1): the guest's agent reports its TCP
//! listeners and UDP servers as they come and go (`guest::listeners`), and the supervisor
//! forwards each — those on the guest's loopback included, which no NAT rule could reach —
//! from the same port on the host's `127.0.0.1` through the agent (vsock), with no
//! privilege. A port below 1024 goes to 8000 above it; a port the host already uses to the
//! next free one. Declared forwards (`mvm port`, DNAT) are left to the firewall, ignored
//! ports (`--ignore-port`, `[defaults] auto_ports_ignore`) to nobody. A user's VM's
//! forwards take connections from the user's programs (and root's) alone, as its DNAT'ed
//! ports do (`peer`), and are TCP only (a UDP sender cannot be known; `mvm port` declares a
//! UDP forward, which the firewall keeps the owner's). The forwards are listed in the
//! runtime dir's `auto-ports.json` (`runtime::AutoForward`) for `mvm port NAME`.

mod peer;
mod tcp;
#[cfg(test)]
mod tests;
mod udp;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::host::HostConfig;
use crate::config::vm::VmConfig;
use crate::contract::protocol::{Frame, Listening};
use crate::runtime::AutoForward;
use crate::spec::{PortRange, Protocol};

/// The most automatic forwards one VM gets: a guest that listens on thousands of ports
/// does not make the host bind thousands.
pub const MAX_AUTO_FORWARDS: usize = 64;
/// The least time between two rounds of changes to the forwards (the agent reports at
/// most every 200 ms; a hostile one sending faster is slowed down to this).
const MIN_APPLY_INTERVAL: Duration = Duration::from_millis(100);

/// Which guest ports are forwarded by themselves, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Guest ports the firewall forwards already (`mvm port`).
    pub declared: BTreeSet<(Protocol, u16)>,
    /// Guest ports never forwarded by themselves.
    pub ignored: Vec<PortRange>,
}

impl Policy {
    /// The policy of VM `config` on a host configured as `host`; `None` when the VM
    /// forwards nothing by itself.
    pub fn of(config: &VmConfig, host: &HostConfig) -> Option<Policy> {
        config.auto_ports.unwrap_or(host.defaults.auto_ports).then(|| Policy {
            declared: config.ports.iter().map(|forward| (forward.protocol, forward.guest)).collect(),
            ignored: host
                .defaults
                .auto_ports_ignore
                .iter()
                .chain(&config.auto_ports_ignore)
                .copied()
                .collect(),
        })
    }

    /// Whether guest port `port` may be forwarded by itself.
    fn allows(&self, protocol: Protocol, port: u16) -> bool {
        !self.declared.contains(&(protocol, port)) && !self.ignored.iter().any(|range| range.contains(port))
    }

    /// The guest ports to forward, given those forwarded now and those the guest reports:
    /// only those allowed, and at most [`MAX_AUTO_FORWARDS`] (those already forwarded first).
    fn wanted(&self, current: &BTreeSet<(Protocol, u16)>, reported: &Listening) -> BTreeSet<(Protocol, u16)> {
        let reported: BTreeSet<(Protocol, u16)> = (reported.tcp.iter().map(|&port| (Protocol::Tcp, port)))
            .chain(reported.udp.iter().map(|&port| (Protocol::Udp, port)))
            .filter(|&(protocol, port)| self.allows(protocol, port))
            .collect();
        let kept = reported.intersection(current).copied();
        let new = reported.difference(current).copied();
        kept.chain(new).take(MAX_AUTO_FORWARDS).collect()
    }
}

/// Where a VM's forwards lead and whom they serve (shared by all of them).
#[derive(Debug, Clone)]
struct Target {
    /// The hybrid vsock socket of the guest's agent.
    vsock: PathBuf,
    /// The only uid (beside root) whose programs may connect; `None`: anyone's.
    owner: Option<u32>,
    /// The TCP connections relayed now, over all the forwards (`tcp::MAX_RELAYS`).
    relays: Arc<tcp::Relays>,
}

impl Target {
    fn new(vsock: &Path, owner: Option<u32>) -> Target {
        Target { vsock: vsock.to_path_buf(), owner, relays: Arc::default() }
    }
}

/// A forward being served: its host port, and the switch that ends it.
struct Forward {
    host: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How a VM's policy is read again: `Ok(None)` when it forwards nothing by itself now;
/// an error keeps the policy in force.
pub type Reload = Box<dyn Fn() -> anyhow::Result<Option<Policy>> + Send>;

/// How often the policy is read again (a forward declared with `mvm port`, or a switch
/// changed in `vm.toml`, applies within this).
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What changes the forwards.
enum Event {
    /// The agent's latest report.
    Reported(Listening),
    /// The agent connection ended (it is made again).
    Lost(io::Error),
}

/// Where a VM's agent is reached, and how to tell that its guest has booted.
pub struct AgentTarget {
    /// The hybrid vsock socket.
    pub vsock: PathBuf,
    /// The VM's run directory.
    pub run_dir: PathBuf,
    /// The console log, whose ready line says the guest's agent listens.
    pub console: PathBuf,
}

/// How long a lost agent connection waits for the guest's ready line before it is made
/// again anyway.
const READY_AGAIN_WAIT: Duration = Duration::from_secs(30);

/// Forwards the guest's listeners as the VM's policy allows (`policy` now, then what
/// `reload` says every second), through the agent behind `vsock`, for as long as the
/// process lives: a lost agent connection (a reboot, a guest that hung up) is made again,
/// and the forwards follow its first report. `owner` is the only uid (beside root) whose
/// programs may connect; `None`: anyone's.
pub fn spawn(target: AgentTarget, owner: Option<u32>, policy: Option<Policy>, reload: Reload) {
    let AgentTarget { vsock, run_dir, console } = target;
    let (events, received) = std::sync::mpsc::channel();
    let agent = vsock.clone();
    std::thread::spawn(move || {
        let mut connected_before = false;
        loop {
            // No connection before the guest's ready line: one made while the guest's
            // vsock driver is not there yet can leave the vsock backend stuck for every
            // later one. After a lost connection the line may be gone from a rotated
            // console: then it is waited for a while only (a reboot writes it again).
            let deadline = connected_before.then(|| Instant::now() + READY_AGAIN_WAIT);
            while !crate::supervisor::launch::guest_ready(&console)
                && deadline.is_none_or(|deadline| Instant::now() < deadline)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            connected_before = true;
            let lost = watch(&agent, &events).unwrap_err();
            if events.send(Event::Lost(lost)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::spawn(move || {
        let mut forwarder = Forwarder {
            target: Target::new(&vsock, owner),
            run_dir,
            policy,
            reported: Listening::default(),
            forwards: BTreeMap::new(),
            listed_before: None,
            noted: Throttle::default(),
        };
        loop {
            match received.recv_timeout(RELOAD_EVERY) {
                Ok(Event::Reported(mut reported)) => {
                    // Only the latest of the reports waiting counts.
                    while let Ok(event) = received.try_recv() {
                        if let Event::Reported(later) = event {
                            reported = later;
                        }
                    }
                    forwarder.reported = reported;
                    forwarder.apply();
                    // A guest flapping its listeners costs the host at most this many
                    // rounds of binds.
                    std::thread::sleep(MIN_APPLY_INTERVAL);
                }
                Ok(Event::Lost(error)) => {
                    if vsock.exists() {
                        forwarder.noted.log(|| {
                            format!("automatic port forwarding: the agent connection ended ({error}); watching again")
                        });
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => match reload() {
                    Ok(policy) if policy != forwarder.policy => {
                        forwarder.policy = policy;
                        forwarder.apply();
                    }
                    Ok(_) => {}
                    Err(error) => forwarder
                        .noted
                        .log(|| format!("automatic port forwarding: cannot read the VM's config: {error:#}")),
                },
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    });
}

/// Sends the agent's reports as events until the connection ends; returns why.
fn watch(vsock: &Path, events: &std::sync::mpsc::Sender<Event>) -> Result<(), io::Error> {
    // The agent answers once the guest has booted.
    let mut stream = loop {
        match crate::agent::client::connect(vsock, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    stream.set_read_timeout(None)?;
    Frame::WatchListeners.write_to(&mut stream)?;
    while let Some(frame) = Frame::read_from(&mut stream)? {
        if let Frame::Listeners(reported) = frame {
            events.send(Event::Reported(reported)).map_err(|_| io::Error::other("no one listens"))?;
        }
    }
    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the agent hung up"))
}

/// The forwards of one VM, and what they follow.
struct Forwarder {
    target: Target,
    run_dir: PathBuf,
    policy: Option<Policy>,
    /// What the agent reported last.
    reported: Listening,
    forwards: BTreeMap<(Protocol, u16), Forward>,
    /// What `auto-ports.json` says now.
    listed_before: Option<Vec<AutoForward>>,
    /// The log of forwards made elsewhere than their own port, or not at all.
    noted: Throttle,
}

impl Forwarder {
    /// Makes the forwards what the policy wants of the last report, and lists them.
    fn apply(&mut self) {
        let mut reported = self.reported.clone();
        if self.target.owner.is_some() {
            // A user's VM: UDP senders cannot be told apart (`peer`), so no UDP forward.
            reported.udp.clear();
        }
        let wanted = match &self.policy {
            Some(policy) => policy.wanted(&self.forwards.keys().copied().collect(), &reported),
            None => BTreeSet::new(),
        };
        self.forwards.retain(|key, _| wanted.contains(key));
        for (protocol, guest) in wanted {
            if self.forwards.contains_key(&(protocol, guest)) {
                continue;
            }
            let opened = match protocol {
                Protocol::Tcp => tcp::open(guest, &self.target),
                Protocol::Udp => udp::open(guest, &self.target),
            };
            match opened {
                Ok((host, stop)) => {
                    if host != guest {
                        self.noted.log(|| {
                            format!("guest port {guest}/{protocol} is forwarded from 127.0.0.1:{host} (its own number is taken or privileged)")
                        });
                    }
                    self.forwards.insert((protocol, guest), Forward { host, stop });
                }
                Err(error) => {
                    self.noted.log(|| format!("cannot forward guest port {guest}/{protocol}: {error}"))
                }
            }
        }
        let listed: Vec<AutoForward> = self
            .forwards
            .iter()
            .map(|(&(protocol, guest), forward)| AutoForward { host: forward.host, guest, protocol })
            .collect();
        if self.listed_before.as_ref() != Some(&listed) {
            match crate::runtime::write_auto_forwards(&self.run_dir, &listed) {
                Ok(()) => self.listed_before = Some(listed),
                Err(error) => log!("cannot list the automatic forwards: {error:#}"),
            }
        }
    }
}

/// The host ports to try for guest port `guest`, best first: the same one (8000 above
/// for one below 1024), then the next 99.
fn candidates(guest: u16) -> impl Iterator<Item = u16> {
    let first = if guest < 1024 { guest + 8000 } else { guest };
    first..first.saturating_add(100)
}

/// Binds the first candidate port for `guest` that is free on the host (any free port when
/// none is), with `bind` (on `127.0.0.1`). A port a host service holds on the IPv6
/// loopback alone counts as taken too: a client dialing `localhost` may get either.
fn bind_for<T>(guest: u16, protocol: Protocol, bind: impl Fn(u16) -> io::Result<T>) -> io::Result<T> {
    let used_on_ipv6 = |port: u16| {
        let address = (std::net::Ipv6Addr::LOCALHOST, port);
        let bound = match protocol {
            Protocol::Tcp => std::net::TcpListener::bind(address).map(drop),
            Protocol::Udp => std::net::UdpSocket::bind(address).map(drop),
        };
        bound.is_err_and(|error| error.kind() == io::ErrorKind::AddrInUse)
    };
    candidates(guest)
        .filter(|&port| !used_on_ipv6(port))
        .find_map(|port| bind(port).ok())
        .map_or_else(|| bind(0), Ok)
}

/// How often a repeating log line is written at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A log line that comes back (a refused peer, a moved port): written at most once per
/// [`LOG_EVERY`], with how many were left out, so neither a local user knocking nor a
/// guest flapping its listeners fills the supervisor's log.
#[derive(Default)]
struct Throttle {
    last: Option<std::time::Instant>,
    left_out: u64,
}

impl Throttle {
    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.last.is_some_and(|last| last.elapsed() < LOG_EVERY) {
            self.left_out += 1;
            return;
        }
        match std::mem::take(&mut self.left_out) {
            0 => log!("{}", line()),
            more => log!("{} ({more} more like it since)", line()),
        }
        self.last = Some(std::time::Instant::now());
    }
}

/// A stream to the agent that took `request` (`Connect` or `ConnectUdp`): after the
/// agent's `Pong`, it carries the forwarded traffic.
fn agent_stream(vsock: &Path, request: Frame) -> io::Result<std::os::unix::net::UnixStream> {
    let mut agent = crate::agent::client::connect(vsock, Duration::from_secs(5))?;
    agent.set_read_timeout(Some(Duration::from_secs(5)))?;
    request.write_to(&mut agent)?;
    match Frame::read_from(&mut agent)? {
        Some(Frame::Pong(_)) => {}
        other => return Err(io::Error::other(format!("the agent answered {other:?}"))),
    }
    agent.set_read_timeout(None)?;
    Ok(agent)
}
