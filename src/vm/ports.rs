//! Which host ports a VM may forward: none below 1024 unless the caller is really root,
//! none a host process listens on (a DNAT rule would shadow it), none another VM forwards;
//! and, for a forward asking for any port, the guest's own number when it is free.

use anyhow::Context;

use crate::error::UserError;
use crate::name::VmName;
use crate::net::ports::{self, PortUse};
pub use crate::net::ports::{check_host_port, FIRST_UNPRIVILEGED_PORT};
use crate::spec::PortForward;
use crate::state::store::{self, VmEntry};

/// The VM (other than `except`) that already forwards `port`'s host port and protocol.
pub fn host_port_forwarder<'a>(
    vms: &'a [VmEntry],
    port: &PortForward,
    except: Option<&VmName>,
) -> Option<&'a VmName> {
    vms.iter().filter_map(|vm| vm.config.as_ref().ok()).find_map(|config| {
        let forwards = config.ports.iter().any(|p| p.host == port.host && p.protocol == port.protocol);
        (forwards && Some(&config.name) != except).then_some(&config.name)
    })
}

/// A host port for `forward` (whose host port is 0): the guest's port number when no VM,
/// no forward in `also_taken` and no host process holds it (and it is unprivileged, unless
/// `allow_privileged`), else a free one.
pub fn pick_host_port(
    vms: &[VmEntry],
    also_taken: &[PortForward],
    forward: PortForward,
    allow_privileged: bool,
) -> anyhow::Result<u16> {
    let usable = |port: u16| {
        let candidate = PortForward { host: port, ..forward };
        (allow_privileged || port >= FIRST_UNPRIVILEGED_PORT)
            && host_port_forwarder(vms, &candidate, None).is_none()
            && !also_taken.iter().any(|p| p.host == port && p.protocol == forward.protocol)
            && ports::host_port_use(port, forward.protocol) == PortUse::Free
    };
    if usable(forward.guest) {
        return Ok(forward.guest);
    }
    for _ in 0..32 {
        let port = ports::free_port(forward.protocol).context("cannot find a free host port")?;
        if usable(port) {
            return Ok(port);
        }
    }
    Err(UserError::conflict("no free host port found").hint("give a host port explicitly").into())
}

/// The error for a host port another VM forwards.
pub fn port_forwarded_by(port: &PortForward, owner: &VmName) -> UserError {
    UserError::conflict(format!(
        "host port {}/{} is already forwarded by VM '{owner}'",
        port.host, port.protocol
    ))
    .hint(format!("pick another host port, or free it with `mvm port {owner} --rm {}`", port.host))
}

/// Gives each forward with host port 0 a host port: the guest's number when it is free.
pub fn choose_host_ports(
    ports: &mut [PortForward],
    existing: &[store::VmEntry],
    allow_privileged: bool,
) -> anyhow::Result<()> {
    for i in 0..ports.len() {
        if ports[i].host == 0 {
            let chosen: Vec<PortForward> = ports.iter().filter(|port| port.host != 0).copied().collect();
            ports[i].host = crate::vm::ports::pick_host_port(existing, &chosen, ports[i], allow_privileged)?;
        }
    }
    Ok(())
}

/// Refuses host ports that another VM forwards, a host process holds, or that are
/// privileged when `allow_privileged` is not set.
pub fn check_host_ports_free(
    ports: &[PortForward],
    existing: &[store::VmEntry],
    allow_privileged: bool,
) -> Result<(), UserError> {
    for port in ports {
        if let Some(owner) = crate::vm::ports::host_port_forwarder(existing, port, None) {
            return Err(crate::vm::ports::port_forwarded_by(port, owner));
        }
        crate::vm::ports::check_host_port(port, allow_privileged)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_below_1024_or_held_by_a_process_are_refused() {
        let forward = |host: u16| PortForward { host, guest: 80, protocol: crate::spec::Protocol::Tcp };
        let error = check_host_port(&forward(80), false).unwrap_err();
        assert!(error.to_string().contains("below 1024"), "{error}");
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let held = listener.local_addr().unwrap().port();
        let error = check_host_port(&forward(held), true).unwrap_err();
        assert_eq!(error.kind(), crate::error::ExitCode::Conflict);
        assert!(error.to_string().contains(&format!("process {}", std::process::id())), "{error}");
        drop(listener);
        assert!(check_host_port(&forward(held), false).is_ok());
        let picked = pick_host_port(&[], &[], forward(0), false).unwrap();
        assert!(picked >= FIRST_UNPRIVILEGED_PORT, "{picked}");
    }
}
