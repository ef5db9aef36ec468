//! `mvm create`: validate everything, allocate an index, write the VM's state directory.
//!
//! Nothing is started. The directory is built under a hidden staging name and renamed
//! into place at the end, so a crash at any point leaves either a complete VM or none.
//! Index allocation (lowest free) and the name and host-port checks happen under the
//! global create lock, so concurrent creates never share an index, a name or a port.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::config::host::HostConfig;
use crate::config::template::{Catalog, Template};
use crate::config::vm::{Hypervisor, MountMode, Process, Project, RootModel, VmConfig};
use crate::error::UserError;
use crate::failpoint;
use crate::host::user::with_rights_of_invoking_user;
use crate::name::VmName;
use crate::spec::{self, EnvVar, MemorySize, PortForward, Volume};
use crate::state::atomic::sync_dir;
use crate::state::claims;
use crate::state::lock::FileLock;
use crate::state::store::{self, STAGING_PREFIX};
use crate::state::Paths;

/// Arguments of `mvm create`.
#[derive(Debug, Clone, Default, Args)]
pub struct CreateArgs {
    /// Name of the new VM: 1-32 lowercase letters, digits and '-', starting with a letter
    pub name: String,
    /// Start from a template (`mvm templates` lists them; a path to a .toml file works too);
    /// the other options add to it or override it
    #[arg(long, short = 't', value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Set by `mvm up`: no privileged host ports, whoever runs it
    #[arg(skip)]
    pub via_up: bool,
    /// Project directory, seen in the guest at the same absolute path
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Virtual CPUs [default: 2, or the host config's defaults.cpus]
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Memory, e.g. 512M or 2G; at least 128M [default: 1G]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Forward a host port to a guest port (repeatable); HOST 0 picks one, the guest's
    /// number when it is free
    #[arg(long = "port", value_name = "HOST:GUEST[/udp]")]
    pub ports: Vec<String>,
    /// How the guest sees the project
    #[arg(long, value_enum, value_name = "MODE", requires = "project")]
    pub mount: Option<MountMode>,
    /// Keep the overlay's writable layer across stops
    #[arg(long, requires = "project")]
    pub persist: bool,
    /// A persistent volume mounted in the guest (repeatable)
    #[arg(long = "volume", value_name = "NAME:GUEST_PATH")]
    pub volumes: Vec<String>,
    /// An environment variable for the guest (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The VMM that runs the VM [default: auto (cloud-hypervisor where hardware KVM works and it is installed, else QEMU), or the host config's]
    #[arg(long, value_enum)]
    pub hypervisor: Option<Hypervisor>,
    /// Kernel image to boot [default: the host's]
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Root file system: the host's /usr read-only, or a directory tree
    #[arg(long, value_name = "host|DIR", default_value = "host")]
    pub root: String,
    /// No network egress at all
    #[arg(long)]
    pub offline: bool,
    /// Let the guest reach services listening on the host
    #[arg(long)]
    pub host_access: bool,
}

/// What the host allows a VM to have.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    pub cpus: u32,
    pub memory_mib: Option<u64>,
}

impl HostLimits {
    /// The limits of this machine.
    pub fn of_this_host() -> HostLimits {
        HostLimits { cpus: crate::host::cpu_count(), memory_mib: crate::host::memory_total_mib() }
    }
}

/// Runs `mvm create`.
pub fn run(args: CreateArgs, paths: &Paths) -> anyhow::Result<i32> {
    let host = HostConfig::load(&paths.config_file)?;
    let name = args.name.clone();
    let config = create(&args, paths, &host, HostLimits::of_this_host())
        .with_context(|| format!("cannot create VM '{name}'"))?;
    let network = &config.network;
    let plural = if config.cpus == 1 { "" } else { "s" };
    println!(
        "created VM '{}': {} CPU{plural}, {} memory, {}, address {}",
        config.name,
        config.cpus,
        config.memory(),
        config.hypervisor,
        network.address
    );
    for port in &config.ports {
        println!("  host port {}/{} → guest port {}", port.host, port.protocol, port.guest);
    }
    for process in &config.processes {
        println!("  runs process '{}' at boot", process.name);
    }
    Ok(0)
}

/// Validates `args`, then writes the new VM's state directory; returns its config.
pub fn create(
    args: &CreateArgs,
    paths: &Paths,
    host: &HostConfig,
    limits: HostLimits,
) -> anyhow::Result<VmConfig> {
    let template = match &args.template {
        Some(reference) => Some(Catalog::beside(&paths.config_file).get(reference)?),
        None => None,
    };
    let mut request = validate(args, template.as_ref(), host, limits)?;
    check_socket_paths_fit(paths, &request.name)?;
    crate::state::paths::ensure_root(&paths.state_dir)?;

    let _lock = FileLock::exclusive(&paths.create_lock())?;
    if store::exists(paths, &request.name) {
        return Err(UserError::conflict(format!("a VM named '{}' already exists", request.name))
            .hint(format!("pick another name, or remove the old VM with `mvm rm {}`", request.name))
            .into());
    }
    remove_stale_staging_dirs(paths)?;
    let existing = store::list(paths)?;
    // Through `mvm up` (what an .envrc runs) nobody is "really root".
    let allow_privileged = crate::host::is_root() && !args.via_up;
    choose_host_ports(&mut request.ports, &existing, allow_privileged)?;
    check_host_ports_free(&request.ports, &existing, allow_privileged)?;
    let network = claim_index(paths, host, &existing, &request.name)?;
    let config = request.into_config(network);
    write_vm_dir(paths, &config).inspect_err(|_| claims::release(&paths.state_dir, &config.name))?;
    Ok(config)
}

/// Claims the lowest free network index for VM `name` (`state::claims`): free of every
/// claim, and of every VM this caller can read (those made before claims were).
fn claim_index(
    paths: &Paths,
    host: &HostConfig,
    existing: &[store::VmEntry],
    name: &VmName,
) -> anyhow::Result<crate::net::addr::VmNetwork> {
    let me = nix::unistd::geteuid().as_raw();
    let mut used: BTreeSet<u32> =
        existing.iter().filter_map(|vm| vm.config.as_ref().ok()).map(|config| config.network.index).collect();
    for (index, holder, owner) in claims::all(&paths.state_dir) {
        let gone = holder.parse::<VmName>().map_or(true, |holder| !store::exists(paths, &holder));
        if gone && (owner == me || me == 0) {
            // Left by a VM removed without `mvm rm`: ours to give up.
            let _ = std::fs::remove_file(paths.state_dir.join(claims::CLAIMS_DIR).join(index.to_string()));
        } else {
            used.insert(index);
        }
    }
    let pool = host.address_pool()?;
    for index in (0..pool.capacity()).filter(|index| !used.contains(index)) {
        if claims::claim(&paths.state_dir, index, name)? {
            return pool.vm(index).context("an index of the pool has no network");
        }
    }
    Err(UserError::conflict(format!("the address pool {} is full ({} VMs)", pool.network(), pool.capacity()))
        .hint("remove unused VMs, or set a larger network.pool in /etc/mvm/config.toml")
        .into())
}

/// A create request that passed every check that needs no lock.
struct Request {
    name: VmName,
    cpus: u32,
    memory: MemorySize,
    ports: Vec<PortForward>,
    volumes: Vec<Volume>,
    env: BTreeMap<String, String>,
    project: Option<Project>,
    hypervisor: Hypervisor,
    kernel: Option<PathBuf>,
    root: RootModel,
    offline: bool,
    host_access: bool,
    processes: Vec<Process>,
}

impl Request {
    fn into_config(self, network: crate::net::addr::VmNetwork) -> VmConfig {
        VmConfig {
            name: self.name,
            created_at: crate::output::unix_now(),
            hypervisor: self.hypervisor,
            cpus: self.cpus,
            memory_mib: self.memory.mib(),
            root: self.root,
            kernel: self.kernel,
            offline: self.offline,
            host_access: self.host_access,
            env: self.env,
            project: self.project,
            network,
            ports: self.ports,
            volumes: self.volumes,
            processes: self.processes,
        }
    }
}

fn validate(
    args: &CreateArgs,
    template: Option<&Template>,
    host: &HostConfig,
    limits: HostLimits,
) -> anyhow::Result<Request> {
    let name: VmName = args.name.parse()?;
    let suggested_cpus = template.and_then(|t| t.cpus).unwrap_or(host.defaults.cpus);
    let cpus = args.cpus.unwrap_or(suggested_cpus.min(limits.cpus));
    if cpus == 0 || cpus > limits.cpus {
        return Err(UserError::usage(format!("--cpus {cpus} is outside 1-{}", limits.cpus))
            .hint(format!("this host has {} CPUs; give a number from 1 to {}", limits.cpus, limits.cpus))
            .into());
    }
    let memory = match &args.memory {
        Some(text) => text.parse::<MemorySize>()?,
        None => template.and_then(|t| t.memory).unwrap_or(host.defaults.memory),
    };
    if let Some(total) = limits.memory_mib.filter(|total| memory.mib() > *total) {
        return Err(UserError::usage(format!(
            "--memory {memory} is more than this host's {}",
            MemorySize::from_mib(total)
        ))
        .hint("give a smaller size, e.g. 1G")
        .into());
    }
    let given_ports: Vec<PortForward> =
        args.ports.iter().map(|text| PortForward::parse_with_auto_host(text)).collect::<Result<_, _>>()?;
    let given_volumes = parse_all::<Volume>(&args.volumes)?;
    let given_env = parse_all::<EnvVar>(&args.env)?.into_iter().map(|var| (var.key, var.value));
    // What the command line gives replaces what the template says for the same guest port,
    // volume name or guest path, and variable.
    let (ports, volumes, mut env, processes) = match template {
        Some(template) => (
            overridden(&template.ports, given_ports, |a, b| a.guest == b.guest && a.protocol == b.protocol),
            overridden(&template.volumes, given_volumes, |a, b| {
                a.name == b.name || a.guest_path == b.guest_path
            }),
            template.env.clone(),
            template.processes.clone(),
        ),
        None => (given_ports, given_volumes, BTreeMap::new(), Vec::new()),
    };
    let explicit_ports: Vec<PortForward> = ports.iter().filter(|port| port.host != 0).copied().collect();
    spec::check_unique_host_ports(&explicit_ports)?;
    spec::check_unique_volumes(&volumes)?;
    env.extend(given_env);
    let mount = args.mount.unwrap_or_default();
    if args.persist && mount != MountMode::Overlay {
        return Err(UserError::usage(format!("--persist keeps the overlay's layer, but --mount is {mount}"))
            .hint("drop --persist, or use --mount overlay")
            .into());
    }
    let project = match &args.project {
        Some(dir) => {
            let path = check_directory(dir, "--project", mount == MountMode::Rw)?;
            Some(Project { path, mount, persist: args.persist })
        }
        None => None,
    };
    let root = match args.root.parse::<RootModel>() {
        Ok(RootModel::Dir(dir)) => RootModel::Dir(check_directory(&dir, "--root", false)?),
        Ok(RootModel::Host) => RootModel::Host,
        Err(why) => {
            return Err(UserError::usage(why).hint("use --root host or an absolute directory").into())
        }
    };
    let kernel = match &args.kernel {
        Some(path) => {
            // Opened as the invoking user: a kernel they cannot read is not theirs to boot.
            let readable =
                with_rights_of_invoking_user(|| std::fs::File::open(path).and_then(|f| f.metadata()))?;
            match readable {
                Ok(meta) if meta.is_file() => Some(absolute(path)?),
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    return Err(UserError::not_found(format!(
                        "--kernel {} cannot be read: {error}",
                        path.display()
                    ))
                    .hint("give the path of a bzImage or vmlinux you can read, or drop --kernel")
                    .into())
                }
                _ => {
                    return Err(UserError::not_found(format!("--kernel {} is not a file", path.display()))
                        .hint("give the path of a bzImage or vmlinux, or drop --kernel to use the host's")
                        .into())
                }
            }
        }
        None => None,
    };
    Ok(Request {
        name,
        cpus,
        memory,
        ports,
        volumes,
        env,
        project,
        hypervisor: args.hypervisor.unwrap_or(host.defaults.hypervisor),
        kernel,
        root,
        offline: args.offline,
        host_access: args.host_access,
        processes,
    })
}

/// `defaults` without the items `given` replaces, then `given`.
fn overridden<T: Clone>(defaults: &[T], given: Vec<T>, same: impl Fn(&T, &T) -> bool) -> Vec<T> {
    let kept = defaults.iter().filter(|default| !given.iter().any(|item| same(default, item)));
    kept.cloned().collect::<Vec<T>>().into_iter().chain(given).collect()
}

fn parse_all<T: std::str::FromStr<Err = UserError>>(texts: &[String]) -> Result<Vec<T>, UserError> {
    texts.iter().map(|text| text.parse()).collect()
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// Checks, with the invoking user's rights, that `dir` is an existing directory they can
/// read (and write, when `writable`); returns its canonical path.
fn check_directory(dir: &Path, flag: &str, writable: bool) -> anyhow::Result<PathBuf> {
    let path = with_rights_of_invoking_user(|| check_directory_as_caller(dir, flag, writable))??;
    // Guest root reads everything in a share as host root sees it: through sudo, only a
    // directory of the invoking user's own may become one (not `/`, not someone's home).
    let user = crate::host::user::invoking_user();
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path)?);
    if crate::host::is_root() && user.uid != 0 && owner != user.uid {
        return Err(UserError::usage(format!(
            "{flag} {} belongs to uid {owner}, not to you ({}, uid {}): through sudo, mvm shares only your own directories",
            path.display(),
            user.name,
            user.uid
        ))
        .hint("use a directory you own, or create the VM as root itself")
        .into());
    }
    Ok(path)
}

fn check_directory_as_caller(dir: &Path, flag: &str, writable: bool) -> anyhow::Result<PathBuf> {
    use nix::fcntl::{AtFlags, AT_FDCWD};
    use nix::unistd::{faccessat, AccessFlags};
    let shown = dir.display();
    let metadata = match std::fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            return Err(UserError::not_found(format!("{flag} {shown} does not exist"))
                .hint("check the path, or create the directory first")
                .into())
        }
        Err(error) => {
            return Err(UserError::usage(format!("{flag} {shown} cannot be read: {error}"))
                .hint("check the path's permissions")
                .into())
        }
    };
    if !metadata.is_dir() {
        return Err(UserError::usage(format!("{flag} {shown} is not a directory"))
            .hint("give the directory itself, not a file in it")
            .into());
    }
    // AT_EACCESS: checked with this thread's file-system ids, not the process's real ones.
    let access = |mode| faccessat(AT_FDCWD, dir, mode, AtFlags::AT_EACCESS).is_ok();
    if !access(AccessFlags::R_OK | AccessFlags::X_OK) || std::fs::read_dir(dir).is_err() {
        return Err(UserError::usage(format!("{flag} {shown} is not readable"))
            .hint("check the directory's permissions (it needs read and search access)")
            .into());
    }
    if writable && !access(AccessFlags::W_OK) {
        return Err(UserError::usage(format!("{flag} {shown} is not writable, and --mount rw writes to it"))
            .hint("use --mount overlay (the default) to work on a copy, or a directory you own")
            .into());
    }
    absolute(dir)
}

/// The longest socket file name under a VM's runtime dir (`vsock.sock_<port>` for
/// guest-initiated connections); unix socket paths are limited to 107 bytes.
const LONGEST_SOCKET_NAME: &str = "vsock.sock_1073741824";
const SUN_PATH_MAX: usize = 107;

fn check_socket_paths_fit(paths: &Paths, name: &VmName) -> Result<(), UserError> {
    let longest = paths.vm_run_dir(name).join(LONGEST_SOCKET_NAME);
    let length = longest.as_os_str().len();
    if length > SUN_PATH_MAX {
        return Err(UserError::usage(format!(
            "VM name '{name}' makes socket paths like {} ({length} bytes) longer than the kernel's limit of {SUN_PATH_MAX}",
            longest.display()
        ))
        .hint("use a shorter name, or a shorter MVM_RUN_DIR"));
    }
    Ok(())
}

/// Gives each forward with host port 0 a host port: the guest's number when it is free.
fn choose_host_ports(
    ports: &mut [PortForward],
    existing: &[store::VmEntry],
    allow_privileged: bool,
) -> anyhow::Result<()> {
    for i in 0..ports.len() {
        if ports[i].host == 0 {
            let chosen: Vec<PortForward> = ports.iter().filter(|port| port.host != 0).copied().collect();
            ports[i].host = store::pick_host_port(existing, &chosen, ports[i], allow_privileged)?;
        }
    }
    Ok(())
}

/// Refuses host ports that another VM forwards, a host process holds, or that are
/// privileged when `allow_privileged` is not set.
fn check_host_ports_free(
    ports: &[PortForward],
    existing: &[store::VmEntry],
    allow_privileged: bool,
) -> Result<(), UserError> {
    for port in ports {
        if let Some(owner) = store::host_port_forwarder(existing, port, None) {
            return Err(store::port_forwarded_by(port, owner));
        }
        store::check_host_port(port, allow_privileged)?;
    }
    Ok(())
}

/// Staging dirs left by a create that crashed. Only called under the create lock, so no
/// live create can own one.
fn remove_stale_staging_dirs(paths: &Paths) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(&paths.state_dir)
        .with_context(|| format!("cannot read {}", paths.state_dir.display()))?
    {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove stale {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Builds the VM directory under a staging name, then renames it into place.
fn write_vm_dir(paths: &Paths, config: &VmConfig) -> anyhow::Result<()> {
    let staging = paths.state_dir.join(format!("{STAGING_PREFIX}{}-{}", config.name, std::process::id()));
    std::fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    // Private: vm.toml holds [env], and the guest's trees are nobody else's business.
    std::fs::set_permissions(&staging, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    for dir in ["log", "volumes"] {
        std::fs::create_dir(staging.join(dir))
            .with_context(|| format!("cannot create {}", staging.join(dir).display()))?;
    }
    let kept = paths.kept_volumes(&config.name);
    // Only the caller's own: the directory of kept volumes is shared by the group.
    let kept_is_mine = std::fs::symlink_metadata(&kept).is_ok_and(|meta| {
        use std::os::unix::fs::MetadataExt;
        meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw()
    });
    for volume in &config.volumes {
        let dir = staging.join("volumes").join(&volume.name);
        // A volume kept by `mvm rm --keep-volumes` comes back to a VM of the same name.
        if !kept_is_mine || std::fs::rename(kept.join(&volume.name), &dir).is_err() {
            std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    if kept_is_mine {
        let _ = std::fs::remove_dir(&kept);
    }
    crate::state::seed::seed_root(&staging, Path::new("/etc"))?;
    config.save(&staging.join(crate::config::vm::VM_CONFIG_FILE))?;
    failpoint::hit("create-staged");
    let target = paths.vm_dir(&config.name);
    std::fs::rename(&staging, &target)
        .with_context(|| format!("cannot move {} to {}", staging.display(), target.display()))?;
    sync_dir(&paths.state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HostLimits {
        HostLimits { cpus: 4, memory_mib: Some(8192) }
    }

    fn args(name: &str) -> CreateArgs {
        CreateArgs { name: name.to_string(), root: "host".to_string(), ..CreateArgs::default() }
    }

    fn setup() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        (dir, paths)
    }

    #[test]
    fn builds_the_expected_config() {
        let (dir, paths) = setup();
        let project = dir.path().join("project");
        std::fs::create_dir(&project).unwrap();
        let args = CreateArgs {
            project: Some(project.clone()),
            cpus: Some(3),
            memory: Some("2G".into()),
            ports: vec!["8080:3000".into(), "5353:53/udp".into()],
            persist: true,
            volumes: vec!["data:/data".into()],
            env: vec!["A=1".into()],
            hypervisor: Some(Hypervisor::Qemu),
            offline: true,
            ..args("web")
        };
        let config = create(&args, &paths, &HostConfig::default(), limits()).unwrap();
        let expected = VmConfig {
            name: "web".parse().unwrap(),
            created_at: config.created_at,
            hypervisor: Hypervisor::Qemu,
            cpus: 3,
            memory_mib: 2048,
            root: RootModel::Host,
            kernel: None,
            offline: true,
            host_access: false,
            env: BTreeMap::from([("A".into(), "1".into())]),
            project: Some(Project {
                path: project.canonicalize().unwrap(),
                mount: MountMode::Overlay,
                persist: true,
            }),
            network: HostConfig::default().address_pool().unwrap().vm(0).unwrap(),
            ports: vec!["8080:3000".parse().unwrap(), "5353:53/udp".parse().unwrap()],
            volumes: vec!["data:/data".parse().unwrap()],
            processes: vec![],
        };
        assert_eq!(config, expected);
        assert_eq!(store::load(&paths, &config.name).unwrap(), expected);
        assert!(paths.vm_dir(&config.name).join("volumes/data").is_dir());
    }

    #[test]
    fn uses_host_defaults() {
        let (_dir, paths) = setup();
        let host =
            HostConfig::parse("[defaults]\ncpus = 8\nmemory = \"512M\"\nhypervisor = \"qemu\"").unwrap();
        let config = create(&args("web"), &paths, &host, limits()).unwrap();
        assert_eq!((config.cpus, config.memory_mib, config.hypervisor), (4, 512, Hypervisor::Qemu));
    }

    #[test]
    fn allocates_the_lowest_free_index() {
        let (_dir, paths) = setup();
        let host = HostConfig::default();
        for name in ["a", "b", "c"] {
            create(&args(name), &paths, &host, limits()).unwrap();
        }
        std::fs::remove_dir_all(paths.state_dir.join("b")).unwrap();
        assert_eq!(create(&args("d"), &paths, &host, limits()).unwrap().network.index, 1);
        assert_eq!(create(&args("e"), &paths, &host, limits()).unwrap().network.index, 3);
    }

    #[test]
    fn refuses_a_full_pool() {
        let (_dir, paths) = setup();
        let host = HostConfig::parse("[network]\npool = \"10.9.0.0/29\"\nsubnet_prefix = 30").unwrap();
        create(&args("a"), &paths, &host, limits()).unwrap();
        create(&args("b"), &paths, &host, limits()).unwrap();
        let error = create(&args("c"), &paths, &host, limits()).unwrap_err();
        assert!(format!("{error:#}").contains("is full (2 VMs)"), "{error:#}");
    }

    #[test]
    fn removes_stale_staging_dirs() {
        let (_dir, paths) = setup();
        std::fs::create_dir_all(paths.state_dir.join(".staging-web-1/log")).unwrap();
        create(&args("web"), &paths, &HostConfig::default(), limits()).unwrap();
        assert!(!paths.state_dir.join(".staging-web-1").exists());
    }

    #[test]
    fn a_template_fills_in_what_the_command_line_leaves_out() {
        let (_dir, paths) = setup();
        let request = CreateArgs {
            template: Some("django-postgres".into()),
            memory: Some("512M".into()),
            ports: vec!["9000:8000".into()],
            volumes: vec!["db:/var/lib/mvm/postgresql".into()],
            env: vec!["PGPASSWORD=secret".into()],
            ..args("shop")
        };
        let config = create(&request, &paths, &HostConfig::default(), limits()).unwrap();
        assert_eq!((config.cpus, config.memory_mib), (2, 512));
        let names: Vec<&str> = config.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web", "postgres"]);
        assert_eq!(config.ports.len(), 2, "{:?}", config.ports);
        let postgres = config.ports.iter().find(|p| p.guest == 5432).unwrap();
        assert!(postgres.host != 0 && postgres.host != 9000, "{postgres:?}");
        assert!(config.ports.iter().any(|p| p.host == 9000 && p.guest == 8000), "{:?}", config.ports);
        assert_eq!(config.volumes, vec!["db:/var/lib/mvm/postgresql".parse::<Volume>().unwrap()]);
        assert_eq!(config.env["PGPASSWORD"], "secret");
        assert_eq!(config.env["PGUSER"], "postgres");

        // A second VM from the template gets other host ports than the first one's.
        let second = create(
            &CreateArgs { template: Some("postgres".into()), ..args("db") },
            &paths,
            &HostConfig::default(),
            limits(),
        )
        .unwrap();
        assert_ne!(second.ports[0].host, postgres.host);
        assert_eq!(second.ports[0].guest, 5432);
    }

    #[test]
    fn template_cpus_are_capped_by_the_host_but_explicit_ones_are_not() {
        let (dir, paths) = setup();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/big.toml"), "description = \"big\"\ncpus = 64\n").unwrap();
        let host = HostConfig::default();
        let big = create(&CreateArgs { template: Some("big".into()), ..args("a") }, &paths, &host, limits());
        assert_eq!(big.unwrap().cpus, 4);
        let error = create(&CreateArgs { cpus: Some(64), ..args("b") }, &paths, &host, limits()).unwrap_err();
        assert!(error.to_string().contains("outside 1-4"), "{error}");
        let error =
            create(&CreateArgs { template: Some("nope".into()), ..args("c") }, &paths, &host, limits())
                .unwrap_err();
        assert!(format!("{error:#}").contains("there is no template \"nope\""), "{error:#}");
        assert!(!paths.vm_dir(&"c".parse().unwrap()).exists());
    }

    #[test]
    fn refuses_socket_paths_past_the_kernel_limit() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(&dir.path().join("x".repeat(60)));
        let error = create(&args(&"a".repeat(32)), &paths, &HostConfig::default(), limits()).unwrap_err();
        assert!(error.to_string().contains("longer than the kernel's limit"), "{error}");
        assert!(!paths.state_dir.exists());
    }
}
