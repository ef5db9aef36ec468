//! Converging the kernel's firewall to the plan, in one `iptables-restore` per change.
//!
//! The current state is read with one `iptables-save` (every table); the difference to the
//! plan becomes one `iptables-restore --noflush` script, applied atomically per table.
//! Two processes at most, where one `iptables` call per rule would be a dozen. Callers
//! hold the network lock, so two mvm processes never interleave a read and a write.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::net::plan::{self, HostNetwork, Rule, Table, VmFirewall, CHAINS, SHARED_TAG};
use mvm_base::addr::VmNetwork;
use mvm_base::error::UserError;

/// Reads and writes the kernel's rules; the seam tests replace with a recording fake.
pub trait FirewallBackend {
    /// `iptables-save`: every table, each from its `*TABLE` line to its `COMMIT`.
    fn save(&mut self) -> anyhow::Result<String>;
    /// `iptables-restore --noflush` with `script`.
    fn restore(&mut self, script: &str) -> anyhow::Result<()>;
}

/// The real backend: the `iptables-save` and `iptables-restore` programs.
#[derive(Debug, Default)]
pub struct Iptables;

impl FirewallBackend for Iptables {
    fn save(&mut self) -> anyhow::Result<String> {
        let output = Command::new("iptables-save")
            .stdin(Stdio::null())
            .output()
            .map_err(|error| missing_iptables(&error))?;
        if !output.status.success() {
            bail!("iptables-save failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        String::from_utf8(output.stdout).context("iptables-save printed invalid UTF-8")
    }

    fn restore(&mut self, script: &str) -> anyhow::Result<()> {
        let mut child = Command::new("iptables-restore")
            .args(["--noflush", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| missing_iptables(&error))?;
        child.stdin.take().expect("piped stdin").write_all(script.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "iptables-restore failed: {}\nscript:\n{script}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

fn missing_iptables(error: &std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::NotFound {
        UserError::missing_dependency("iptables-save/iptables-restore not found")
            .hint("apt-get install iptables")
            .into()
    } else {
        anyhow::anyhow!("cannot run iptables: {error}")
    }
}

/// mvm's part of the kernel's rules: which of its chains exist, their rules, and the
/// jumps into them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FirewallState {
    chains: Vec<(Table, String)>,
    rules: Vec<Rule>,
}

impl FirewallState {
    /// Reads the state through `backend`.
    pub fn read(backend: &mut dyn FirewallBackend) -> anyhow::Result<FirewallState> {
        Ok(FirewallState::parse(&backend.save()?))
    }

    /// What an `iptables-save` output says of mvm's chains, in the tables mvm uses (a
    /// table that does not exist yet prints nothing, and holds nothing of mvm's).
    pub fn parse(save: &str) -> FirewallState {
        let mut state = FirewallState::default();
        let mut table = None;
        for line in save.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = Table::named(name.trim());
            } else if let Some(table) = table {
                state.add_line(table, line);
            }
        }
        state
    }

    fn add_line(&mut self, table: Table, line: &str) {
        let ours = |chain: &str| CHAINS.iter().any(|(t, name, _)| *t == table && *name == chain);
        if let Some(declaration) = line.strip_prefix(':') {
            let chain = declaration.split_whitespace().next().unwrap_or_default();
            if ours(chain) {
                self.chains.push((table, chain.to_string()));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            let is_jump = CHAINS.iter().any(|(t, name, builtin)| {
                *t == table && *builtin == chain && spec.ends_with(&format!("-j {name}"))
            });
            if ours(chain) || is_jump {
                self.rules.push(Rule { table, chain: chain.to_string(), spec: spec.to_string() });
            }
        }
    }

    fn has_chain(&self, table: Table, chain: &str) -> bool {
        self.chains.iter().any(|(t, c)| *t == table && c == chain)
    }

    fn tagged<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |rule| has_tag(&rule.spec, tag))
    }

    /// Rules of VMs other than the one tagged `tag` that name `network`'s bridge, tap or
    /// addresses: left by an earlier holder of its index (removed, or never taken down),
    /// they would apply to the VM that holds the index now.
    fn naming_others<'a>(
        &'a self,
        tag: &'a str,
        network: &'a VmNetwork,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |rule| rule.spec.contains("--comment \"mvm:") && !has_tag(&rule.spec, tag))
            .filter(move |rule| names_network(&rule.spec, network))
    }

    /// The names of the VMs that have rules.
    pub fn vm_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules
            .iter()
            .filter_map(|rule| {
                let rest = rule.spec.split("--comment \"mvm:").nth(1)?;
                Some(rest.split('"').next()?.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The VMs (other than `except`) whose rules forward host port `forward.host`.
    pub fn forwarders(&self, forward: &crate::forward::PortForward, except: &str) -> Vec<String> {
        let (proto, port) = (forward.protocol, forward.host);
        let mut names: Vec<String> = self
            .rules
            .iter()
            .filter(|rule| rule.table == Table::Nat && rule.chain == "MVM-OUTPUT")
            .filter(|rule| {
                rule.spec.starts_with(&format!("-p {proto} "))
                    && rule.spec.contains(&format!("--dport {port} "))
            })
            .filter_map(|rule| {
                let rest = rule.spec.split("--comment \"mvm:").nth(1)?;
                Some(rest.split('"').next()?.to_string())
            })
            .filter(|name| name != except)
            .collect();
        names.dedup();
        names
    }

    /// Every rule of mvm's (jumps included), as `iptables-save` lines per table.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// Whether rule `spec` names `network`'s links, addresses or subnet (as `iptables-save`
/// spells them: `mvmbr4`, `10.200.4.2/32`, `10.200.4.2:3000`, `10.200.4.0/30`).
fn names_network(spec: &str, network: &VmNetwork) -> bool {
    let addresses = [network.address.to_string(), network.gateway.to_string()];
    let subnet = network.subnet.to_string();
    spec.split_whitespace().any(|token| {
        token == network.bridge
            || token == network.tap
            || token == subnet
            || addresses.iter().any(|address| {
                token.strip_prefix(address.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || rest.starts_with(':') || rest.starts_with('-')
                })
            })
    })
}

fn has_tag(spec: &str, tag: &str) -> bool {
    spec.contains(&format!("--comment {tag} "))
}

/// An `iptables-restore` script being assembled, one section per table.
#[derive(Debug, Default)]
struct Script {
    tables: BTreeMap<Table, Vec<String>>,
}

impl Script {
    fn push(&mut self, table: Table, line: String) {
        self.tables.entry(table).or_default().push(line);
    }

    fn render(&self) -> Option<String> {
        if self.tables.is_empty() {
            return None;
        }
        let mut text = String::new();
        for (table, lines) in &self.tables {
            text.push_str(&format!("*{table}\n"));
            for line in lines {
                text.push_str(line);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
        }
        Some(text)
    }
}

/// Lines that make the shared chains, rules and jumps whole again, if anything is off.
fn ensure_shared(state: &FirewallState, host: &HostNetwork, script: &mut Script) {
    let shared = plan::shared_rules(host);
    for (table, chain, _) in CHAINS {
        let wanted: Vec<&Rule> = shared.iter().filter(|r| r.table == table && r.chain == chain).collect();
        if !state.has_chain(table, chain) {
            script.push(table, format!(":{chain} - [0:0]"));
        } else {
            let present: Vec<&Rule> =
                state.tagged(SHARED_TAG).filter(|r| r.table == table && r.chain == chain).collect();
            if present == wanted {
                continue;
            }
            for rule in present {
                script.push(table, format!("-D {chain} {}", rule.spec));
            }
        }
        for rule in wanted {
            script.push(table, rule.save_line());
        }
    }
    for jump in plan::jump_rules() {
        let present = state.rules.iter().filter(|r| **r == jump).count();
        if present == 0 {
            script.push(jump.table, format!("-I {} 1 {}", jump.chain, jump.spec));
        }
        for _ in 1..present {
            script.push(jump.table, format!("-D {} {}", jump.chain, jump.spec));
        }
    }
}

/// Brings VM `vm`'s rules (and the shared ones) from `state`, what `backend` holds now,
/// to the plan; returns whether anything changed. Idempotent, and converges from any
/// partial state.
pub fn converge_vm(
    backend: &mut dyn FirewallBackend,
    state: &FirewallState,
    host: &HostNetwork,
    vm: &VmFirewall,
) -> anyhow::Result<bool> {
    let mut script = Script::default();
    ensure_shared(state, host, &mut script);
    let tag = plan::vm_tag(&vm.name);
    let mut unwanted: Vec<&Rule> = state.tagged(&tag).collect();
    let foreign: Vec<&Rule> = state.naming_others(&tag, &vm.network).collect();
    // A VM's rules are order-independent, so only the difference is sent: deleting
    // is the slow operation for iptables-nft.
    for rule in plan::vm_rules(vm, host) {
        match unwanted.iter().position(|present| **present == rule) {
            Some(at) => {
                unwanted.swap_remove(at);
            }
            None => script.push(rule.table, format!("-I {} 1 {}", rule.chain, rule.spec)),
        }
    }
    for rule in unwanted.into_iter().chain(foreign) {
        script.push(rule.table, format!("-D {} {}", rule.chain, rule.spec));
    }
    apply(backend, &script)
}

/// Removes VM `name`'s rules, and mvm's chains and jumps too when no VM has rules left.
/// Returns whether anything changed.
pub fn remove_vm(backend: &mut dyn FirewallBackend, name: &str) -> anyhow::Result<bool> {
    let state = FirewallState::read(backend)?;
    let mut script = Script::default();
    if state.vm_names().iter().all(|other| other == name) {
        // The last VM: flushing mvm's chains removes its rules with the rest.
        remove_shared(&state, &mut script);
    } else {
        for rule in state.tagged(&plan::vm_tag(name)) {
            script.push(rule.table, format!("-D {} {}", rule.chain, rule.spec));
        }
    }
    apply(backend, &script)
}

fn remove_shared(state: &FirewallState, script: &mut Script) {
    for rule in &state.rules {
        if CHAINS.iter().any(|(table, _, builtin)| *table == rule.table && *builtin == rule.chain) {
            script.push(rule.table, format!("-D {} {}", rule.chain, rule.spec));
        }
    }
    for (table, chain) in &state.chains {
        script.push(*table, format!("-F {chain}"));
        script.push(*table, format!("-X {chain}"));
    }
}

fn apply(backend: &mut dyn FirewallBackend, script: &Script) -> anyhow::Result<bool> {
    match script.render() {
        Some(text) => {
            backend.restore(&text)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mvm_base::addr::AddressPool;

    /// A firewall in memory: applies restore scripts to its own rule lists and records
    /// them, so tests see both the resulting state and each script sent.
    #[derive(Debug, Default)]
    pub(crate) struct FakeFirewall {
        pub chains: BTreeMap<(Table, String), Vec<String>>,
        pub scripts: Vec<String>,
    }

    impl FakeFirewall {
        pub(crate) fn new() -> FakeFirewall {
            let mut fake = FakeFirewall::default();
            for (table, _, builtin) in CHAINS {
                fake.chains.insert((table, builtin.to_string()), Vec::new());
            }
            fake
        }

        pub(crate) fn rule_count(&self) -> usize {
            self.chains.values().map(Vec::len).sum()
        }
    }

    impl FirewallBackend for FakeFirewall {
        fn save(&mut self) -> anyhow::Result<String> {
            let mut text = String::new();
            for table in Table::ALL {
                let chains = || self.chains.iter().filter(move |((t, _), _)| *t == table);
                text.push_str(&format!("*{table}\n"));
                for ((_, chain), _) in chains() {
                    let policy = if chain.starts_with("MVM-") { "-" } else { "ACCEPT" };
                    text.push_str(&format!(":{chain} {policy} [0:0]\n"));
                }
                for ((_, chain), rules) in chains() {
                    for rule in rules {
                        text.push_str(&format!("-A {chain} {rule}\n"));
                    }
                }
                text.push_str("COMMIT\n");
            }
            Ok(text)
        }

        fn restore(&mut self, script: &str) -> anyhow::Result<()> {
            self.scripts.push(script.to_string());
            let mut table = Table::Filter;
            for line in script.lines() {
                let words: Vec<&str> = line.splitn(3, ' ').collect();
                match words.as_slice() {
                    [header] if header.starts_with('*') => table = Table::named(&header[1..]).unwrap(),
                    ["COMMIT"] => {}
                    [declaration, ..] if declaration.starts_with(':') => {
                        self.chains.insert((table, declaration[1..].to_string()), Vec::new());
                    }
                    ["-A", chain, spec] => {
                        self.chains.get_mut(&(table, chain.to_string())).unwrap().push(spec.to_string())
                    }
                    ["-I", chain, rest] => {
                        let spec = rest.strip_prefix("1 ").unwrap();
                        self.chains.get_mut(&(table, chain.to_string())).unwrap().insert(0, spec.to_string());
                    }
                    ["-D", chain, spec] => {
                        let rules = self.chains.get_mut(&(table, chain.to_string())).unwrap();
                        let at = rules.iter().position(|r| r == spec).expect("deleting a missing rule");
                        rules.remove(at);
                    }
                    ["-F", chain] => self.chains.get_mut(&(table, chain.to_string())).unwrap().clear(),
                    ["-X", chain] => {
                        self.chains.remove(&(table, chain.to_string()));
                    }
                    other => panic!("unexpected restore line {other:?}"),
                }
            }
            Ok(())
        }
    }

    pub(crate) fn host() -> HostNetwork {
        HostNetwork { pool: "10.200.0.0/16".parse().unwrap(), uplink: None }
    }

    pub(crate) fn vm(name: &str, index: u32, ports: &[&str]) -> VmFirewall {
        VmFirewall {
            name: name.into(),
            network: AddressPool::new(host().pool, 24).unwrap().vm(index).unwrap(),
            offline: false,
            host_access: false,
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            owner: None,
        }
    }

    /// Converges `vm` from what `fw` holds now, as `HostNet::update_rules` does.
    fn converge(fw: &mut FakeFirewall, vm: &VmFirewall) -> anyhow::Result<bool> {
        let state = FirewallState::read(fw)?;
        converge_vm(fw, &state, &host(), vm)
    }

    #[test]
    fn first_apply_builds_chains_then_nothing_changes() {
        let mut fw = FakeFirewall::new();
        assert!(converge(&mut fw, &vm("web", 0, &["8080:80"])).unwrap());
        let forward = &fw.chains[&(Table::Filter, "MVM-FORWARD".to_string())];
        assert!(forward[0].contains("mvm:web") && forward[1].contains("mvm:web"), "{forward:?}");
        assert_eq!(forward[2], "-i mvmbr+ -o mvmbr+ -m comment --comment mvm -j DROP");
        assert_eq!(
            fw.chains[&(Table::Filter, "FORWARD".to_string())],
            ["-m comment --comment mvm -j MVM-FORWARD"]
        );
        assert_eq!(fw.scripts.len(), 1, "one restore for everything");
        assert!(!converge(&mut fw, &vm("web", 0, &["8080:80"])).unwrap());
        assert_eq!(fw.scripts.len(), 1, "a second apply sends nothing");
    }

    #[test]
    fn port_changes_touch_only_that_vm() {
        let mut fw = FakeFirewall::new();
        converge(&mut fw, &vm("web", 0, &["8080:80"])).unwrap();
        converge(&mut fw, &vm("api", 1, &[])).unwrap();
        let before = fw.rule_count();
        converge(&mut fw, &vm("web", 0, &["8080:80", "9090:90/udp"])).unwrap();
        assert_eq!(fw.rule_count(), before + 3);
        let script = fw.scripts.last().unwrap();
        assert!(!script.contains("mvm:api"), "{script}");
        converge(&mut fw, &vm("web", 0, &[])).unwrap();
        assert_eq!(fw.rule_count(), before - 3);
    }

    #[test]
    fn removing_vms_removes_their_rules_and_finally_everything() {
        let mut fw = FakeFirewall::new();
        converge(&mut fw, &vm("web", 0, &["8080:80"])).unwrap();
        let with_one = fw.rule_count();
        converge(&mut fw, &vm("api", 1, &["9090:90"])).unwrap();
        remove_vm(&mut fw, "api").unwrap();
        assert_eq!(fw.rule_count(), with_one);
        let text: String = fw.chains.values().flatten().cloned().collect();
        assert!(!text.contains("mvm:api"), "{text}");
        remove_vm(&mut fw, "web").unwrap();
        assert_eq!(fw.rule_count(), 0);
        assert!(!fw.chains.keys().any(|(_, chain)| chain.starts_with("MVM-")));
        assert!(!remove_vm(&mut fw, "web").unwrap(), "removing again changes nothing");
    }

    #[test]
    fn repairs_a_tampered_shared_chain_and_duplicate_jumps() {
        let mut fw = FakeFirewall::new();
        converge(&mut fw, &vm("web", 0, &[])).unwrap();
        fw.chains
            .get_mut(&(Table::Filter, "MVM-FORWARD".to_string()))
            .unwrap()
            .retain(|r| !r.contains("-o mvmbr+ -m comment --comment mvm -j DROP"));
        let jump = "-m comment --comment mvm -j MVM-INPUT".to_string();
        fw.chains.get_mut(&(Table::Filter, "INPUT".to_string())).unwrap().push(jump);
        assert!(converge(&mut fw, &vm("web", 0, &[])).unwrap());
        let forward = &fw.chains[&(Table::Filter, "MVM-FORWARD".to_string())];
        assert_eq!(forward.last().unwrap(), "-o mvmbr+ -m comment --comment mvm -j DROP");
        assert_eq!(fw.chains[&(Table::Filter, "INPUT".to_string())].len(), 1);
        assert!(!converge(&mut fw, &vm("web", 0, &[])).unwrap());
    }

    /// An index's next holder takes none of its last holder's rules: a DNAT to the
    /// address, a host-access or owner rule that would apply to the newcomer.
    #[test]
    fn a_vm_removes_rules_another_vm_left_on_its_index() {
        let mut fw = FakeFirewall::new();
        let old = VmFirewall { host_access: true, owner: Some(4242), ..vm("old", 4, &["8080:80"]) };
        converge(&mut fw, &old).unwrap();
        converge(&mut fw, &vm("web", 5, &["9090:80"])).unwrap();
        let rules_of = |fw: &mut FakeFirewall, name: &str| -> Vec<Rule> {
            let state = FirewallState::read(fw).unwrap();
            state.tagged(&plan::vm_tag(name)).cloned().collect()
        };
        let web = rules_of(&mut fw, "web");
        assert!(!web.is_empty());
        converge(&mut fw, &vm("new", 4, &[])).unwrap();
        assert_eq!(
            FirewallState::read(&mut fw).unwrap().vm_names(),
            ["new", "web"],
            "the old holder's rules stayed"
        );
        assert_eq!(rules_of(&mut fw, "web"), web, "another index's rules changed");
    }

    #[test]
    fn rule_count_grows_linearly_with_vms() {
        let mut counts = Vec::new();
        for vms in [1u32, 10, 100] {
            let mut fw = FakeFirewall::new();
            for i in 0..vms {
                converge(&mut fw, &vm(&format!("vm{i}"), i, &[])).unwrap();
            }
            let isolation =
                fw.chains.values().flatten().filter(|r| r.contains("-i mvmbr+ -o mvmbr+")).count();
            assert_eq!(isolation, 1);
            counts.push(fw.rule_count());
        }
        // 7 jumps + 10 shared rules, then per VM its egress rule, two for its DNS (UDP and
        // TCP) and the source its bridge takes.
        assert_eq!(counts, [21, 57, 417]);
    }

    #[test]
    fn state_lists_vms_with_rules() {
        let mut fw = FakeFirewall::new();
        converge(&mut fw, &vm("web", 0, &[])).unwrap();
        converge(&mut fw, &vm("api-2", 1, &["1:1"])).unwrap();
        assert_eq!(FirewallState::read(&mut fw).unwrap().vm_names(), ["api-2", "web"]);
    }
}
