//! A VM's port forwards: adding and removing them and switching the automatic ones, saved
//! in `vm.toml` and applied at once to a running VM. Which host ports a VM may forward:
//! none below 1024 unless the caller is really root, none a host process listens on (a
//! DNAT rule would shadow it), none another VM forwards; and, for a forward asking for
//! any port, the guest's own number when it is free.

use anyhow::Context;

use crate::config::vm::VmConfig;
use crate::error::UserError;
use crate::name::VmName;
use crate::net::ports::{self, PortUse};
pub use crate::net::ports::{check_host_port, FIRST_UNPRIVILEGED_PORT};
use crate::privileged::client::Privileges;
use crate::spec::{HostPortSelector, PortForward, PortRange};
use crate::state::lock::FileLock;
use crate::state::store::{self, RunState, VmEntry};
use crate::state::Paths;

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

/// Adds `forward` to VM `name` (picking a host port if it is 0); returns the forward and
/// whether it was applied to a running VM.
pub fn add(
    paths: &Paths,
    privileges: &dyn Privileges,
    name: &VmName,
    mut forward: PortForward,
) -> anyhow::Result<(PortForward, bool)> {
    let _lock = FileLock::exclusive(&paths.create_lock())?;
    let mut config = store::load(paths, name)?;
    let vms = store::list(paths)?;
    if forward.host == 0 {
        forward.host = pick_host_port(&vms, &config.ports, forward, crate::host::is_root())?;
    }
    if let Some(existing) =
        config.ports.iter().find(|p| p.host == forward.host && p.protocol == forward.protocol)
    {
        return Err(UserError::conflict(format!(
            "VM '{name}' already forwards host port {}/{} (to guest port {})",
            existing.host, existing.protocol, existing.guest
        ))
        .hint(format!("remove it first with `mvm port {name} --rm {}`", existing.host))
        .into());
    }
    if let Some(owner) = host_port_forwarder(&vms, &forward, Some(name)) {
        return Err(port_forwarded_by(&forward, owner).into());
    }
    check_host_port(&forward, crate::host::is_root())?;
    crate::config::vm::check_forward_count(config.ports.len() + 1)?;
    let previous = config.clone();
    config.ports.push(forward);
    let applied = save_and_apply(paths, privileges, &previous, &config)?;
    Ok((forward, applied))
}

/// Switches VM `name`'s automatic forwarding (`on`; `None` leaves it), adds `ignore` to
/// its ignored ports and takes `unignore` away; returns the saved config.
pub fn switch_automatic(
    paths: &Paths,
    name: &VmName,
    on: Option<bool>,
    ignore: &[PortRange],
    unignore: &[PortRange],
) -> anyhow::Result<VmConfig> {
    let _lock = FileLock::exclusive(&paths.create_lock())?;
    let mut config = store::load(paths, name)?;
    if let Some(on) = on {
        config.auto_ports = Some(on);
    }
    if let Some(missing) = unignore.iter().find(|range| !config.auto_ports_ignore.contains(range)) {
        let ignored: Vec<String> = config.auto_ports_ignore.iter().map(ToString::to_string).collect();
        return Err(UserError::not_found(format!("VM '{name}' does not ignore {missing}"))
            .hint(match ignored.is_empty() {
                true => "it ignores no port of its own (the host's `auto_ports_ignore` applies to every VM)"
                    .into(),
                false => format!("it ignores {}: give one of those as written", ignored.join(", ")),
            })
            .into());
    }
    config.auto_ports_ignore.retain(|range| !unignore.contains(range));
    for range in ignore {
        if !config.auto_ports_ignore.contains(range) {
            config.auto_ports_ignore.push(*range);
        }
    }
    config.save(&paths.vm_config(name))?;
    Ok(config)
}

/// Removes the forwards `selector` picks from VM `name`; returns them.
pub fn remove(
    paths: &Paths,
    privileges: &dyn Privileges,
    name: &VmName,
    selector: HostPortSelector,
) -> anyhow::Result<Vec<PortForward>> {
    let _lock = FileLock::exclusive(&paths.create_lock())?;
    let mut config = store::load(paths, name)?;
    let previous = config.clone();
    let (removed, kept): (Vec<PortForward>, Vec<PortForward>) =
        config.ports.iter().partition(|forward| selector.matches(forward));
    if removed.is_empty() {
        let which = selector.protocol.map_or(String::new(), |p| format!("/{p}"));
        return Err(UserError::not_found(format!(
            "VM '{name}' forwards no host port {}{which}",
            selector.port
        ))
        .hint(format!("`mvm port {name}` lists its forwards"))
        .into());
    }
    config.ports = kept;
    save_and_apply(paths, privileges, &previous, &config)?;
    Ok(removed)
}

/// Saves `config`; if the VM runs, converges its rules, restoring `previous` on failure.
fn save_and_apply(
    paths: &Paths,
    privileges: &dyn Privileges,
    previous: &VmConfig,
    config: &VmConfig,
) -> anyhow::Result<bool> {
    config.save(&paths.vm_config(&config.name))?;
    if store::run_state(paths, &config.name)? != RunState::Running {
        return Ok(false);
    }
    let applied = privileges.network().update_rules(config);
    if let Err(error) = applied {
        previous.save(&paths.vm_config(&config.name))?;
        return Err(error.context("the change was not applied, and vm.toml is unchanged"));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privileged::client::recording::Recorder;
    use crate::vm::fixtures::web;

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

    /// A running VM's new forward reaches its firewall at once; one the firewall refuses
    /// leaves `vm.toml` as it was.
    #[test]
    fn a_forward_the_firewall_refuses_leaves_the_record_unchanged() {
        let (_dir, paths, name) = web();
        std::fs::create_dir_all(paths.vm_run_dir(&name)).unwrap();
        let _running = crate::state::lock::RunLock::try_acquire(&paths.run_lock(&name)).unwrap().unwrap();
        let forward = |host: u16| PortForward { host, guest: 80, protocol: crate::spec::Protocol::Tcp };
        let listeners: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("0.0.0.0:0").unwrap()).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let (free, other) = (ports[0], ports[1]);
        drop(listeners);

        let recorder = Recorder::default();
        let (added, applied) = add(&paths, &recorder, &name, forward(free)).unwrap();
        assert_eq!((added.host, applied), (free, true));
        assert_eq!(recorder.calls(), ["network-rules web"]);

        let before = std::fs::read_to_string(paths.vm_config(&name)).unwrap();
        let refusing = Recorder::failing(&["network-rules"]);
        let error = add(&paths, &refusing, &name, forward(other)).unwrap_err();
        assert!(format!("{error:#}").contains("vm.toml is unchanged"), "{error:#}");
        assert_eq!(std::fs::read_to_string(paths.vm_config(&name)).unwrap(), before);
        let selector = HostPortSelector { port: free, protocol: None };
        assert!(remove(&paths, &refusing, &name, selector).is_err());
        assert_eq!(std::fs::read_to_string(paths.vm_config(&name)).unwrap(), before);
        assert_eq!(refusing.calls(), ["network-rules web", "network-rules web"]);
    }

    /// A stopped VM's forward is saved, and nothing privileged is asked for.
    #[test]
    fn a_stopped_vms_forward_is_only_saved() {
        let (_dir, paths, name) = web();
        let free = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        let recorder = Recorder::default();
        let forward = PortForward { host: free, guest: 80, protocol: crate::spec::Protocol::Tcp };
        assert!(!add(&paths, &recorder, &name, forward).unwrap().1);
        assert!(recorder.calls().is_empty());
        assert_eq!(store::load(&paths, &name).unwrap().ports, [forward]);
    }
}
