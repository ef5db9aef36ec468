//! `mvm doctor`: is this host ready to run VMs? Each finding comes with a fix.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::boot::kernel;
use crate::config::host::HostConfig;
use crate::config::vm::{Hypervisor, VmRecord};
use crate::error::ExitCode;
use crate::host::binaries::Tool;
use crate::host::kvm::{self, KvmSupport};
use crate::net::host::HostNet;
use crate::output::print_json;
use crate::privileged::client::Privileges;
use crate::runtime::{clean_run_dir, KEPT_RUNTIME_FILES};
use crate::state::lock::RunLock;
use crate::state::store::{self, RunState};
use crate::state::Paths;

/// Arguments of `mvm doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Remove orphans: links, rules and runtime dirs of VMs that are not running
    #[arg(long)]
    pub fix: bool,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Error,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.to_string(), status: Status::Ok, detail: detail.into(), hint: None }
    }

    fn problem(name: &str, status: Status, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check { name: name.to_string(), status, detail: detail.into(), hint: Some(hint.into()) }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    checks: &'a [Check],
}

/// Runs `mvm doctor`; exits 5 when any check is an error.
pub fn run(args: DoctorArgs, paths: &Paths) -> anyhow::Result<i32> {
    let mut checks = checks(paths, Path::new("/"));
    checks.extend(network_checks(paths, args.fix));
    let ok = checks.iter().all(|check| check.status != Status::Error);
    if args.json {
        print_json(&Report { ok, checks: &checks })?;
    } else {
        for check in &checks {
            let mark = match check.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Error => "error",
            };
            println!("{mark:>5}  {:<20} {}", check.name, check.detail);
            if let Some(hint) = &check.hint {
                println!("{:>5}  {:<20} hint: {hint}", "", "");
            }
        }
    }
    Ok(if ok { 0 } else { ExitCode::MissingDependency.code() })
}

/// Every check, for the host whose file system is at `root`.
pub fn checks(paths: &Paths, root: &Path) -> Vec<Check> {
    let mut checks = vec![root_check()];
    let host = match HostConfig::load(&paths.config_file) {
        Ok(host) => {
            checks.push(Check::ok("host config", config_detail(paths)));
            host
        }
        Err(error) => {
            checks.push(Check::problem(
                "host config",
                Status::Error,
                format!("{error:#}"),
                "fix the file; until then mvm refuses to create VMs",
            ));
            HostConfig::default()
        }
    };
    // As this user meets it: cloud-hypervisor (run as them) opens /dev/kvm itself.
    let kvm = kvm::for_this_process(kvm::detect(root), &root.join("dev/kvm"));
    checks.push(kvm_check(&kvm));
    checks.extend(tool_checks(&host, &kvm));
    checks.push(hypervisor_check(&host, &kvm));
    checks.push(kernel_check(&host, root));
    checks.push(file_events_check(paths, &host, root));
    checks.push(privileged_ports_check(
        std::fs::read_to_string(root.join("proc/sys/net/ipv4/ip_unprivileged_port_start")).ok().as_deref(),
    ));
    checks.push(state_dir_check(&paths.state_dir));
    checks.push(loop_devices_check(&root.join("dev/loop-control")));
    checks.push(setup_check(paths));
    if !crate::host::is_root() {
        let uid = nix::unistd::geteuid().as_raw();
        let name = crate::host::user::name_of(uid);
        let can_map = crate::host::subids::can_map();
        checks.push(guest_ids_check(&name, crate::host::subids::SubIds::of(&name, uid), can_map));
    }
    checks
}

/// A member's VMs give their guests' users distinct host ids only from the member's
/// subordinate ranges, mapped with Debian's `newuidmap`.
fn guest_ids_check(name: &str, sub: Option<crate::host::subids::SubIds>, newuidmap: bool) -> Check {
    let ids = crate::host::subids::GUEST_IDS;
    match (sub, newuidmap) {
        (Some(sub), true) => Check::ok(
            "guest ids",
            format!("your guests' ids 0-{} are host ids {}-{} (subordinate)", ids - 1, sub.uid, sub.uid + ids - 1),
        ),
        (Some(_), false) => Check::problem(
            "guest ids",
            Status::Warn,
            "newuidmap/newgidmap are missing: every user in your guests writes as you",
            "install Debian's uidmap package: `sudo apt-get install uidmap`",
        ),
        (None, _) => Check::problem(
            "guest ids",
            Status::Warn,
            format!("{name} has no subordinate ids: every user in your guests writes as you (PostgreSQL cannot own its data)"),
            crate::host::subids::how_to_add(name),
        ),
    }
}

/// Uplink, pool and orphans: these need root and a netlink connection.
pub fn network_checks(paths: &Paths, fix: bool) -> Vec<Check> {
    if !crate::host::is_root() {
        return vec![Check::problem(
            "network",
            Status::Warn,
            "not inspected (needs root)",
            "run `sudo mvm doctor` to check the uplink, the address pool and orphans",
        )];
    }
    let host = HostConfig::load(&paths.config_file).unwrap_or_default();
    let mut net = match HostNet::open(&paths.roots(), &host.network) {
        Ok(net) => net,
        Err(error) => {
            return vec![Check::problem(
                "network",
                Status::Error,
                format!("{error:#}"),
                "see the error above",
            )]
        }
    };
    let mut checks = Vec::new();
    checks.push(match net.default_uplink() {
        Ok(Some(uplink)) => Check::ok("uplink", format!("default route via {uplink}")),
        Ok(None) => Check::problem(
            "uplink",
            Status::Warn,
            "no default route: VMs will have no internet",
            "connect the host to a network, or set network.uplink in /etc/mvm/config.toml",
        ),
        Err(error) => Check::problem("uplink", Status::Warn, format!("{error:#}"), "check `ip route`"),
    });
    checks.push(match net.check_pool() {
        Ok(()) => Check::ok("address pool", format!("{} is free", host.network.pool)),
        Err(error) => Check::problem(
            "address pool",
            Status::Error,
            error.to_string(),
            crate::error::hint_of(&error).unwrap_or_default(),
        ),
    });
    checks.push(orphan_check(paths, &mut net, fix));
    checks
}

fn orphan_check(paths: &Paths, net: &mut HostNet, fix: bool) -> Check {
    let running: Vec<VmRecord> = store::list(paths)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| entry.config.ok())
        .filter(|config| matches!(store::run_state(paths, &config.name), Ok(RunState::Running)))
        .map(|config| config.record())
        .collect();
    let stale_run_dirs = stale_run_dirs(paths);
    let orphans = match net.orphans(&running) {
        Ok(orphans) => orphans,
        Err(error) => {
            return Check::problem("orphans", Status::Error, format!("{error:#}"), "check iptables")
        }
    };
    if orphans.is_empty() && stale_run_dirs.is_empty() {
        return Check::ok("orphans", "none");
    }
    let mut found = Vec::new();
    if !orphans.links.is_empty() {
        found.push(format!("links {}", orphans.links.join(", ")));
    }
    if !orphans.rule_owners.is_empty() {
        found.push(format!("firewall rules of {}", orphans.rule_owners.join(", ")));
    }
    if !stale_run_dirs.is_empty() {
        let names: Vec<String> = stale_run_dirs.iter().map(|dir| dir.display().to_string()).collect();
        found.push(format!("runtime dirs {}", names.join(", ")));
    }
    let found = found.join("; ");
    if !fix {
        return Check::problem("orphans", Status::Warn, found, "`sudo mvm doctor --fix` removes them");
    }
    let removed = net
        .remove_orphans(&orphans)
        .and_then(|()| stale_run_dirs.iter().try_for_each(|dir| clean_stale_run_dir(paths, dir)));
    match removed {
        Ok(()) => Check::ok("orphans", format!("removed {found}")),
        Err(error) => Check::problem("orphans", Status::Error, format!("{error:#}"), "remove them by hand"),
    }
}

/// Runtime dirs whose run lock nobody holds.
/// Runtime dirs with no live supervisor that hold more than a stopped VM keeps (its lock
/// and last status): sockets, mounts, boot images left by a crash, or a removed VM's dir.
fn stale_run_dirs(paths: &Paths) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(&paths.run_dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        // A user's runtime dir is theirs to clean (`mvm stop`): root never works in it.
        .filter(|entry| crate::fs::is_own_dir(&entry.path()))
        .map(|entry| entry.path())
        .filter(|dir| !RunLock::is_held(&dir.join("lock")).unwrap_or(true))
        .filter(|dir| {
            let vm_exists = dir.file_name().is_some_and(|name| paths.state_dir.join(name).is_dir());
            let leftovers = std::fs::read_dir(dir).map_or(0, |files| {
                files
                    .filter_map(Result::ok)
                    .filter(|f| !KEPT_RUNTIME_FILES.iter().any(|k| f.file_name() == *k))
                    .count()
            });
            !vm_exists || leftovers > 0
        })
        .collect()
}

/// Empties a stale runtime dir (unmounting what is mounted there); removes it too when
/// its VM no longer exists.
fn clean_stale_run_dir(paths: &Paths, dir: &std::path::Path) -> anyhow::Result<()> {
    let vm_dir = dir.file_name().map(|name| paths.state_dir.join(name)).filter(|vm_dir| vm_dir.is_dir());
    // No start of that VM meanwhile (its fresh helpers would look like survivors).
    let _lifecycle = match &vm_dir {
        Some(vm_dir) => Some(crate::state::lock::FileLock::exclusive(&vm_dir.join(".lifecycle.lock"))?),
        None => None,
    };
    if RunLock::is_held(&dir.join("lock"))? {
        return Ok(());
    }
    // Processes that outlived their supervisor go first: they hold the mounts.
    // The VM's owner's (or, the VM gone, the runtime dir's owner's), or root's: never
    // another user's process that names the sockets.
    use std::os::unix::fs::MetadataExt;
    let owned_by = vm_dir.clone().unwrap_or_else(|| dir.to_path_buf());
    let owner = std::fs::symlink_metadata(&owned_by).map_or(0, |meta| meta.uid());
    crate::runtime::orphans::kill_all(&crate::runtime::orphans::find(dir, owner));
    if let Some(vm_dir) = &vm_dir {
        clean_run_dir(dir);
        // The files disk a killed supervisor left mounted.
        if crate::state::disk::is_mounted(vm_dir) {
            let name: crate::name::VmName = dir.file_name().unwrap_or_default().to_string_lossy().parse()?;
            let config = crate::state::store::load(paths, &name)?;
            crate::privileged::client::ThisProcess::new(paths).disk().down(&config)?;
        }
    } else {
        crate::runtime::remove_run_dir(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

fn config_detail(paths: &Paths) -> String {
    if paths.config_file.exists() {
        format!("{} is valid", paths.config_file.display())
    } else {
        format!("{} absent; using defaults", paths.config_file.display())
    }
}

fn root_check() -> Check {
    if crate::host::is_root() {
        Check::ok("root", "running as root")
    } else {
        Check::problem(
            "root",
            Status::Warn,
            "not running as root",
            "starting VMs needs root (bridges, taps, iptables); run mvm with sudo",
        )
    }
}

fn kvm_check(kvm: &KvmSupport) -> Check {
    match kvm {
        KvmSupport::Hardware { module } => Check::ok("kvm", format!("/dev/kvm backed by {module}")),
        KvmSupport::Unknown => Check::ok("kvm", "/dev/kvm present (backing module not visible)"),
        KvmSupport::NoAccess => Check::problem(
            "kvm",
            Status::Warn,
            "/dev/kvm can accelerate, but you may not open it",
            "`sudo usermod -aG kvm $USER`, then log in again",
        ),
        KvmSupport::PvmOnly => Check::problem(
            "kvm",
            Status::Warn,
            "/dev/kvm is backed only by kvm_pvm (no VMX/SVM): ordinary guest kernels cannot run on it",
            "VMs will run under QEMU with TCG emulation, much slower; on a nested cloud machine, \
             enable nested virtualization for real KVM",
        ),
        KvmSupport::Missing => Check::problem(
            "kvm",
            Status::Warn,
            "no /dev/kvm: VMs can only run under QEMU with TCG emulation, much slower",
            "enable virtualization in the firmware and load kvm_intel or kvm_amd (modprobe kvm_intel)",
        ),
    }
}

/// What `defaults.hypervisor` (`auto` unless set) runs on this host, and why.
fn hypervisor_check(host: &HostConfig, kvm: &KvmSupport) -> Check {
    let installed = Tool::CloudHypervisor.find(&host.paths).is_ok();
    match crate::vmm::choice::choose_hypervisor(host.defaults.hypervisor, kvm, installed) {
        Ok((_, why)) => Check::ok("hypervisor", why.trim_start_matches("hypervisor: ").to_string()),
        Err(error) => Check::problem(
            "hypervisor",
            Status::Error,
            error.to_string(),
            error.hint_text().unwrap_or_default().to_string(),
        ),
    }
}

fn tool_checks(host: &HostConfig, kvm: &KvmSupport) -> Vec<Check> {
    let found = |tool: Tool| tool.find(&host.paths);
    let have_qemu = found(Tool::Qemu).is_ok();
    Tool::ALL
        .into_iter()
        .map(|tool| match found(tool) {
            Ok(path) => Check::ok(tool.program(), path.display().to_string()),
            Err(error) => {
                let status = match tool {
                    Tool::Virtiofsd | Tool::Iptables | Tool::Conntrack | Tool::MkfsExt4 => Status::Error,
                    Tool::Qemu if host.defaults.hypervisor == Hypervisor::Qemu || !kvm.can_accelerate() => {
                        Status::Error
                    }
                    Tool::CloudHypervisor if !have_qemu => Status::Error,
                    _ => Status::Warn,
                };
                let mut hint = error.hint_text().unwrap_or_default().to_string();
                if tool == Tool::CloudHypervisor && !kvm.can_accelerate() {
                    hint = "cloud-hypervisor needs hardware KVM, which this host lacks; \
                            the default hypervisor (auto) uses QEMU here"
                        .to_string();
                }
                Check::problem(tool.program(), status, error.to_string(), hint)
            }
        })
        .collect()
}

fn kernel_check(host: &HostConfig, root: &Path) -> Check {
    match kernel::discover(root, host.paths.kernel.as_deref(), &crate::host::kernel_release()) {
        Ok(found) => match (&found.release, &found.modules_dir) {
            (Some(release), Some(modules)) => Check::ok(
                "kernel",
                format!("{} ({release}), modules in {}", found.image.display(), modules.display()),
            ),
            (release, _) => Check::problem(
                "kernel",
                Status::Error,
                format!(
                    "{} found, but no modules for release {}",
                    found.image.display(),
                    release.as_deref().unwrap_or("(unknown)")
                ),
                "install the kernel's modules package (Debian: linux-image-amd64 ships both)",
            ),
        },
        Err(error) => {
            Check::problem("kernel", Status::Error, error.to_string(), error.hint_text().unwrap_or_default())
        }
    }
}

/// Whether guests get file events for host changes: the module built for their kernel.
fn file_events_check(paths: &Paths, host: &HostConfig, root: &Path) -> Check {
    use crate::boot::notify::{self, Availability};
    let Ok(found) = kernel::discover(root, host.paths.kernel.as_deref(), &crate::host::kernel_release())
    else {
        return Check::problem(
            "file events",
            Status::Warn,
            "no guest kernel to build for",
            "see the kernel check",
        );
    };
    let release = found.release.unwrap_or_default();
    match notify::find(paths, &release) {
        Availability::Ready(module) => Check::ok("file events", format!("guest module {}", module.display())),
        other => Check::problem(
            "file events",
            Status::Warn,
            notify::why_off(&other, &release).unwrap_or_default(),
            "`sudo mvm setup` builds it (it needs the kernel's headers: `apt install linux-headers-RELEASE make gcc`)",
        ),
    }
}

fn state_dir_check(dir: &Path) -> Check {
    let existing = dir.ancestors().find(|dir| dir.exists()).unwrap_or(Path::new("/"));
    let writable = nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_ok();
    match (dir.exists(), writable) {
        (true, true) => Check::ok("state dir", format!("{} is writable", dir.display())),
        (false, true) => Check::ok("state dir", format!("{} will be created", dir.display())),
        (_, false) => Check::problem(
            "state dir",
            Status::Warn,
            format!("{} is not writable by this user", dir.display()),
            "run `sudo mvm setup` once (then join group mvm), or set MVM_STATE_DIR",
        ),
    }
}

/// Each VM's disk limit is a disk image on a loop device (`state::disk`).
fn loop_devices_check(control: &Path) -> Check {
    if control.exists() {
        Check::ok("loop devices", "present: each VM's files are bounded by its disk limit")
    } else {
        Check::problem(
            "loop devices",
            Status::Error,
            format!("{} is missing: no VM can start (its disk limit is a disk image)", control.display()),
            "`sudo modprobe loop` (and add `loop` to /etc/modules)",
        )
    }
}

/// Whether `sudo mvm setup` ran (so group members need no root), and whether this
/// user is one of them.
/// The guests' DNS is port 53 on each gateway, which only a privileged port keeps another
/// user from binding first: `net.ipv4.ip_unprivileged_port_start` must be above 53.
fn privileged_ports_check(start: Option<&str>) -> Check {
    let name = "privileged ports";
    match start.and_then(|text| text.trim().parse::<u32>().ok()) {
        Some(start) if start > crate::dns::GATEWAY_DNS_PORT as u32 => {
            Check::ok(name, format!("ports below {start} need privilege (the guests' DNS on port 53 is safe)"))
        }
        Some(start) => Check::problem(
            name,
            Status::Error,
            format!(
                "any user may bind ports from {start} (net.ipv4.ip_unprivileged_port_start), so another user could answer the guests' DNS on their gateways"
            ),
            "`sudo sysctl -w net.ipv4.ip_unprivileged_port_start=1024` (and in /etc/sysctl.d to keep it)",
        ),
        None => Check::problem(
            name,
            Status::Warn,
            "cannot read net.ipv4.ip_unprivileged_port_start",
            "the guests' DNS on port 53 relies on ports below 1024 needing privilege",
        ),
    }
}

fn setup_check(paths: &Paths) -> Check {
    let group = "mvm";
    let pending = crate::setup::pending(&crate::setup::Target::host(paths), group);
    if !pending.is_empty() {
        return Check::problem(
            "setup",
            Status::Warn,
            format!("without root, mvm cannot run VMs yet: {}", pending.join("; ")),
            "`sudo mvm setup` prepares the host once; then members of group mvm need no sudo",
        );
    }
    let me = nix::unistd::getuid();
    let member = nix::unistd::Group::from_name(group).ok().flatten().is_some_and(|entry| {
        nix::unistd::getgroups().is_ok_and(|groups| groups.contains(&entry.gid))
            || nix::unistd::getgid() == entry.gid
    });
    if me.is_root() || member {
        Check::ok("setup", format!("done; members of group '{group}' run their VMs without root"))
    } else {
        Check::problem(
            "setup",
            Status::Warn,
            format!("done, but you are not in group '{group}'"),
            format!("`sudo usermod -aG {group} $USER`, then log in again"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|check| check.name == name).unwrap()
    }

    #[test]
    fn guest_ids_say_the_range_or_how_to_get_one() {
        let sub = crate::host::subids::SubIds { uid: 100000, gid: 200000 };
        let ok = guest_ids_check("alice", Some(sub), true);
        assert_eq!(
            (ok.status, ok.detail.as_str()),
            (Status::Ok, "your guests' ids 0-65535 are host ids 100000-165535 (subordinate)")
        );
        let none = guest_ids_check("alice", None, true);
        assert_eq!(none.status, Status::Warn);
        assert!(none.hint.unwrap().contains("usermod --add-subuids"));
        assert!(guest_ids_check("alice", Some(sub), false).hint.unwrap().contains("uidmap"));
    }

    #[test]
    fn reports_pvm_and_kernel_modules_of_a_fake_host() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/kvm"), "").unwrap();
        std::fs::create_dir_all(root.join("sys/module/kvm_pvm")).unwrap();
        crate::boot::kernel::tests::fake_bzimage(&root.join("boot/vmlinuz-6.1.0-9-amd64"), "6.1.0-9-amd64");
        let paths = Paths::under(root);
        let found = checks(&paths, root);
        let kvm = find(&found, "kvm");
        assert_eq!(kvm.status, Status::Warn);
        assert!(kvm.detail.contains("kvm_pvm"), "{}", kvm.detail);
        let kernel = find(&found, "kernel");
        assert_eq!(kernel.status, Status::Error);
        assert!(kernel.detail.contains("no modules for release 6.1.0-9-amd64"), "{}", kernel.detail);
        std::fs::create_dir_all(root.join("lib/modules/6.1.0-9-amd64")).unwrap();
        std::fs::write(root.join("lib/modules/6.1.0-9-amd64/modules.dep"), "").unwrap();
        assert_eq!(find(&checks(&paths, root), "kernel").status, Status::Ok);
    }

    #[test]
    fn a_broken_host_config_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        std::fs::write(&paths.config_file, "[network]\npool = 12").unwrap();
        let found = checks(&paths, root.path());
        assert_eq!(find(&found, "host config").status, Status::Error);
    }

    /// The DNS defence rests on port 53 being privileged: doctor says when it is not.
    #[test]
    fn an_unprivileged_port_53_is_an_error() {
        assert_eq!(privileged_ports_check(Some("1024\n")).status, Status::Ok);
        let open = privileged_ports_check(Some("0\n"));
        assert_eq!(open.status, Status::Error);
        assert!(open.detail.contains("another user could answer the guests' DNS"), "{}", open.detail);
        assert_eq!(privileged_ports_check(Some("53")).status, Status::Error);
        assert_eq!(privileged_ports_check(None).status, Status::Warn);
    }
}
