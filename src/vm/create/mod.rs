//! Creating a VM: validate everything, allocate an index, write the VM's state directory.
//!
//! Nothing is started. The directory is built under a hidden staging name and renamed
//! into place at the end, so a crash at any point leaves either a complete VM or none.
//! Index allocation (lowest free) and the name and host-port checks happen under the
//! global create lock, so concurrent creates never share an index, a name or a port.

mod directories;
mod request;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::atomic::sync_dir;
use crate::config::host::HostConfig;
use crate::config::template::Catalog;
use crate::config::vm::{Hypervisor, MountMode, VmConfig};
use crate::error::UserError;
use crate::failpoint;
use crate::name::VmName;
use crate::state::claims;
use crate::state::lock::FileLock;
use crate::state::store::{self, STAGING_PREFIX};
use crate::state::Paths;

use request::validate;

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
    /// The most the VM may take on the host's disk, everything its guest writes included
    /// (its system layer, /etc, /var, the project's overlay, volumes), e.g. 8G; at least 2G
    /// [default: 20G, or the host config's defaults.disk]
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
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
    /// Boot an image built with `mvm image build` (a clean Debian tree, shared read-only)
    /// instead of the host's /usr
    #[arg(long, value_name = "IMAGE", conflicts_with = "root")]
    pub image: Option<String>,
    /// Debian packages the VM runs on, installed once into a cached layer shared by every
    /// VM that asks for the same (repeatable or comma-separated; adds to a template's)
    #[arg(long = "package", value_name = "PKG", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// Drop what guest root installs (the system layer) at every start [default: kept,
    /// like /var]
    #[arg(long)]
    pub ephemeral_system: bool,
    /// No network egress at all
    #[arg(long)]
    pub offline: bool,
    /// Let the guest reach services listening on the host
    #[arg(long)]
    pub host_access: bool,
    /// Do not forward the guest's listeners by themselves (see `mvm port`)
    #[arg(long)]
    pub no_auto_ports: bool,
    /// Never forward these guest ports by themselves: PORT or FIRST-LAST, repeatable or
    /// comma-separated
    #[arg(long = "ignore-port", value_name = "PORT[-PORT]", value_delimiter = ',')]
    pub ignore_ports: Vec<String>,
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
    let mut request = validate(args, paths, template.as_ref(), host, limits)?;
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
    crate::config::vm::check_forward_count(request.ports.len())?;
    crate::vm::ports::choose_host_ports(&mut request.ports, &existing, allow_privileged)?;
    crate::vm::ports::check_host_ports_free(&request.ports, &existing, allow_privileged)?;
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
) -> anyhow::Result<crate::addr::VmNetwork> {
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

/// Staging dirs left by a create that crashed. Only called under the create lock, so no
/// live create can own one.
fn remove_stale_staging_dirs(paths: &Paths) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(&paths.state_dir)
        .with_context(|| format!("cannot read {}", paths.state_dir.display()))?
    {
        let entry = entry?;
        // Another user's are theirs to remove (the state root is shared with a group).
        if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX)
            && crate::fs::is_own_dir(&entry.path())
        {
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
    // The guest's other trees (`/etc` seeded from the host's, `/var`) are made on the
    // VM's disk at its first start (`state::disk`), which these volumes move onto.
    config.save(&staging.join(crate::config::vm::VM_CONFIG_FILE))?;
    failpoint::hit("create-staged");
    let target = paths.vm_dir(&config.name);
    std::fs::rename(&staging, &target)
        .with_context(|| format!("cannot move {} to {}", staging.display(), target.display()))?;
    sync_dir(&paths.state_dir)
}
