//! A recording stand-in for the privileged operations, for unit tests: every call is
//! written down as the helper request it stands for (`network-up web`, `disk-down web`),
//! in order, and the requests whose verbs are named in `failing` fail. DNS sockets are
//! real ones on loopback.

use std::sync::{Arc, Mutex};

use super::{HostDisk, HostNetwork, Privileges};
use crate::config::vm::VmConfig;
use crate::privileged::Request;

/// The calls made, shared by every operation handed out.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
    failing: Vec<&'static str>,
}

impl Recorder {
    /// A recorder whose operations named in `failing` (`network-rules`, …) fail.
    pub fn failing(failing: &[&'static str]) -> Recorder {
        Recorder { failing: failing.to_vec(), ..Recorder::default() }
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("the recorder's lock").clone()
    }

    fn record(&self, request: Request) -> anyhow::Result<()> {
        self.calls.lock().expect("the recorder's lock").push(request.to_string());
        let [verb, _] = request.to_args();
        match self.failing.contains(&verb.as_str()) {
            true => anyhow::bail!("{verb} failed (recorded)"),
            false => Ok(()),
        }
    }
}

impl Privileges for Recorder {
    fn network(&self) -> Box<dyn HostNetwork> {
        Box::new(self.clone())
    }

    fn disk(&self) -> Box<dyn HostDisk> {
        Box::new(self.clone())
    }
}

impl HostNetwork for Recorder {
    fn up(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.record(Request::NetworkUp(vm.name.clone()))
    }

    fn update_rules(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.record(Request::NetworkRules(vm.name.clone()))
    }

    fn down(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.record(Request::NetworkDown(vm.name.clone()))
    }

    fn dns_sockets(&mut self, vm: &VmConfig) -> anyhow::Result<crate::dns::Sockets> {
        self.record(Request::DnsSockets(vm.name.clone()))?;
        Ok(crate::dns::Sockets {
            udp: std::net::UdpSocket::bind("127.0.0.1:0")?,
            tcp: std::net::TcpListener::bind("127.0.0.1:0")?,
        })
    }
}

impl HostDisk for Recorder {
    fn up(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.record(Request::DiskUp(vm.name.clone()))
    }

    fn down(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.record(Request::DiskDown(vm.name.clone()))
    }

    fn remove(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.record(Request::DiskRemove(vm.name.clone()))
    }
}
