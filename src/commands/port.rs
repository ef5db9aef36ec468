//! `mvm port`: list, add and remove a VM's port forwards, watch them change, and switch
//! the automatic ones. Changes are saved in `vm.toml` and, when the VM runs, applied at
//! once (declared forwards to the firewall; the supervisor reads the automatic forwarding
//! switches again within a second).

use anyhow::Context;
use clap::Args;

use crate::config::vm::VmConfig;
use crate::error::UserError;
use crate::name::VmName;
use crate::output::{self, print_json, print_table};
use crate::spec::{HostPortSelector, PortForward, PortRange};
use crate::state::lock::FileLock;
use crate::state::store::{self, RunState};
use crate::state::Paths;

/// Arguments of `mvm port`.
#[derive(Debug, Clone, Args)]
pub struct PortArgs {
    /// The VM
    pub name: String,
    /// Forward host port HOST to guest port GUEST; HOST 0 picks a free one, the guest's
    /// number when it is free
    #[arg(value_name = "HOST:GUEST[/udp]", conflicts_with = "remove")]
    pub forward: Option<String>,
    /// Stop forwarding host port HOST (every protocol, or only /tcp or /udp)
    #[arg(long = "rm", value_name = "HOST[/udp]")]
    pub remove: Option<String>,
    /// List as JSON (with --watch: one JSON object per change, a line each)
    #[arg(long, conflicts_with_all = ["forward", "remove"])]
    pub json: bool,
    /// Print the forwards, then every change as it happens (automatic forwards come and
    /// go with the guest's listeners), until interrupted
    #[arg(long, short = 'w', conflicts_with_all = ["forward", "remove"])]
    pub watch: bool,
    /// Forward the guest's listeners by themselves, or not, for this VM
    #[arg(long, value_enum, value_name = "on|off", conflicts_with_all = ["forward", "remove", "json", "watch"])]
    pub auto: Option<Switch>,
    /// Never forward these guest ports by themselves: PORT or FIRST-LAST, comma-separated
    #[arg(long, value_name = "PORT[-PORT]", value_delimiter = ',', conflicts_with_all = ["forward", "remove", "json", "watch"])]
    pub ignore: Vec<String>,
    /// Forward these ignored guest ports by themselves again
    #[arg(long = "no-ignore", value_name = "PORT[-PORT]", value_delimiter = ',', conflicts_with_all = ["forward", "remove", "json", "watch"])]
    pub unignore: Vec<String>,
}

/// `--auto on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Runs `mvm port`.
pub fn run(args: PortArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    match (&args.forward, &args.remove) {
        (Some(spec), _) => {
            let forward = PortForward::parse_with_auto_host(spec)?;
            let (added, applied) = add(paths, &name, forward)
                .with_context(|| format!("cannot forward {spec} to VM '{name}'"))?;
            println!(
                "forwarding host port {}/{} to VM '{name}' port {}{}",
                added.host,
                added.protocol,
                added.guest,
                if applied { "" } else { " (from its next start)" }
            );
        }
        (None, Some(spec)) => {
            let selector: HostPortSelector = spec.parse()?;
            let removed = remove(paths, &name, selector)
                .with_context(|| format!("cannot stop forwarding {spec} to VM '{name}'"))?;
            for forward in removed {
                println!("stopped forwarding host port {}/{} to VM '{name}'", forward.host, forward.protocol);
            }
        }
        (None, None) if args.auto.is_some() || !args.ignore.is_empty() || !args.unignore.is_empty() => {
            let ignore: Vec<PortRange> =
                args.ignore.iter().map(|text| text.parse()).collect::<Result<_, _>>()?;
            let unignore: Vec<PortRange> =
                args.unignore.iter().map(|text| text.parse()).collect::<Result<_, _>>()?;
            let config = switch_automatic(
                paths,
                &name,
                args.auto.map(|switch| switch == Switch::On),
                &ignore,
                &unignore,
            )
            .with_context(|| format!("cannot change VM '{name}''s automatic forwarding"))?;
            let state = match config.auto_ports {
                Some(true) => "on",
                Some(false) => "off",
                None => "as the host's default",
            };
            let ignored: Vec<String> = config.auto_ports_ignore.iter().map(ToString::to_string).collect();
            let ignored = if ignored.is_empty() {
                String::new()
            } else {
                format!(", never for {}", ignored.join(", "))
            };
            println!("VM '{name}' forwards its listeners by itself: {state}{ignored}");
        }
        (None, None) if args.watch => watch(paths, &name, args.json)?,
        (None, None) => list(paths, &name, args.json)?,
    }
    Ok(0)
}

/// One row of the list: a declared forward, or one the guest's listener made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    forward: PortForward,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    automatic: bool,
}

impl Listed {
    /// Where the forward comes from, and why its host port is another when it is.
    fn source(&self) -> String {
        let PortForward { host, guest, .. } = self.forward;
        match (self.automatic, host == guest) {
            (false, _) => "declared".into(),
            (true, true) => "automatic (127.0.0.1)".into(),
            (true, false) if guest < crate::vm::ports::FIRST_UNPRIVILEGED_PORT && host == guest + 8000 => {
                "automatic (127.0.0.1; the guest's port is privileged)".into()
            }
            (true, false) => format!("automatic (127.0.0.1; host port {guest} was taken)"),
        }
    }
}

/// VM `name`'s forwards — the declared ones, then the automatic ones while it runs —
/// and whether it runs.
fn forwards(paths: &Paths, name: &VmName) -> anyhow::Result<(Vec<Listed>, bool)> {
    let config = store::load(paths, name)?;
    let running = store::run_state(paths, name)? == RunState::Running;
    let automatic =
        if running { crate::supervisor::ports::read(&paths.vm_run_dir(name)) } else { Vec::new() };
    let automatic = automatic.into_iter().map(|auto| Listed {
        forward: PortForward { host: auto.host, guest: auto.guest, protocol: auto.protocol },
        automatic: true,
    });
    let declared = config.ports.iter().map(|&forward| Listed { forward, automatic: false });
    Ok((declared.chain(automatic).collect(), running))
}

fn list(paths: &Paths, name: &VmName, json: bool) -> anyhow::Result<()> {
    let (rows, _) = forwards(paths, name)?;
    if json {
        return print_json(&rows);
    }
    let mut table = output::table(["HOST", "GUEST", "PROTOCOL", "SOURCE"]);
    for row in &rows {
        let port = row.forward;
        table.add_row([
            port.host.to_string(),
            port.guest.to_string(),
            port.protocol.to_string(),
            row.source(),
        ]);
    }
    print_table(&table);
    Ok(())
}

/// How often `--watch` looks (automatic forwards change within the guest agent's 200 ms).
const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// One line of `--watch --json`.
#[derive(serde::Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Change<'a> {
    Added(&'a Listed),
    Removed(&'a Listed),
    Running,
    Stopped,
}

impl Change<'_> {
    fn text(&self, name: &VmName) -> String {
        let line = |sign: char, row: &Listed| {
            let port = row.forward;
            format!("{sign} host {} -> guest {}/{}  {}", port.host, port.guest, port.protocol, row.source())
        };
        match self {
            Change::Added(row) => line('+', row),
            Change::Removed(row) => line('-', row),
            Change::Running => format!("VM '{name}' is running"),
            Change::Stopped => format!("VM '{name}' is stopped"),
        }
    }
}

/// Prints the forwards, then each change, until interrupted or stdout closes.
fn watch(paths: &Paths, name: &VmName, json: bool) -> anyhow::Result<()> {
    use std::collections::BTreeSet;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut shown: BTreeSet<Listed> = BTreeSet::new();
    let mut was_running = None;
    loop {
        let (rows, running) = forwards(paths, name)?;
        let now: BTreeSet<Listed> = rows.into_iter().collect();
        let mut changes: Vec<Change> = shown.difference(&now).map(Change::Removed).collect();
        if was_running != Some(running) {
            changes.push(if running { Change::Running } else { Change::Stopped });
        }
        changes.extend(now.difference(&shown).map(Change::Added));
        for change in &changes {
            let line = if json { serde_json::to_string(change)? } else { change.text(name) };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(()); // the reader went away
            }
        }
        (shown, was_running) = (now, Some(running));
        std::thread::sleep(WATCH_POLL);
    }
}

/// Adds `forward` to VM `name` (picking a host port if it is 0); returns the forward and
/// whether it was applied to a running VM.
pub fn add(paths: &Paths, name: &VmName, mut forward: PortForward) -> anyhow::Result<(PortForward, bool)> {
    let _lock = FileLock::exclusive(&paths.create_lock())?;
    let mut config = store::load(paths, name)?;
    let vms = store::list(paths)?;
    if forward.host == 0 {
        forward.host =
            crate::vm::ports::pick_host_port(&vms, &config.ports, forward, crate::host::is_root())?;
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
    if let Some(owner) = crate::vm::ports::host_port_forwarder(&vms, &forward, Some(name)) {
        return Err(crate::vm::ports::port_forwarded_by(&forward, owner).into());
    }
    crate::vm::ports::check_host_port(&forward, crate::host::is_root())?;
    crate::config::vm::check_forward_count(config.ports.len() + 1)?;
    let previous = config.clone();
    config.ports.push(forward);
    let applied = save_and_apply(paths, &previous, &config)?;
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
pub fn remove(paths: &Paths, name: &VmName, selector: HostPortSelector) -> anyhow::Result<Vec<PortForward>> {
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
    save_and_apply(paths, &previous, &config)?;
    Ok(removed)
}

/// Saves `config`; if the VM runs, converges its rules, restoring `previous` on failure.
fn save_and_apply(paths: &Paths, previous: &VmConfig, config: &VmConfig) -> anyhow::Result<bool> {
    config.save(&paths.vm_config(&config.name))?;
    if store::run_state(paths, &config.name)? != RunState::Running {
        return Ok(false);
    }
    let applied = crate::privileged::client::host_network(paths).update_rules(config);
    if let Err(error) = applied {
        previous.save(&paths.vm_config(&config.name))?;
        return Err(error.context("the change was not applied, and vm.toml is unchanged"));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines_say_what_changed() {
        let row = Listed { forward: "8080:3000".parse().unwrap(), automatic: true };
        let name: VmName = "web".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&Change::Added(&row)).unwrap(),
            r#"{"event":"added","host":8080,"guest":3000,"protocol":"tcp","automatic":true}"#
        );
        assert_eq!(serde_json::to_string(&Change::Stopped).unwrap(), r#"{"event":"stopped"}"#);
        assert_eq!(
            Change::Removed(&row).text(&name),
            "- host 8080 -> guest 3000/tcp  automatic (127.0.0.1; host port 3000 was taken)"
        );
        assert_eq!(Change::Running.text(&name), "VM 'web' is running");
        let moved = Listed { forward: "7301:7300".parse().unwrap(), automatic: true };
        assert_eq!(moved.source(), "automatic (127.0.0.1; host port 7300 was taken)");
        let privileged = Listed { forward: "8080:80".parse().unwrap(), automatic: true };
        assert_eq!(privileged.source(), "automatic (127.0.0.1; the guest's port is privileged)");
    }
}
