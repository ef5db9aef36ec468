//! `mvm port`: list, add and remove a VM's port forwards, watch them change, and switch
//! the automatic ones. Changes are saved in `vm.toml` and, when the VM runs, applied at
//! once (declared forwards to the firewall; the supervisor reads the automatic forwarding
//! switches again within a second).

use anyhow::Context;
use clap::Args;

use crate::privileged::client::ThisProcess;
use crate::vm::ports::{add, remove, switch_automatic};

use crate::name::VmName;
use crate::output::{self, print_json, print_table};
use crate::spec::{HostPortSelector, PortForward, PortRange};
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
            let (added, applied) = add(paths, &ThisProcess::new(paths), &name, forward)
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
            let removed = remove(paths, &ThisProcess::new(paths), &name, selector)
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
    let automatic = if running { crate::runtime::auto_forwards(&paths.vm_run_dir(name)) } else { Vec::new() };
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
