//! The checks of a create request that need no lock: names, sizes, limits, the
//! template's defaults overridden by the flags, paths opened as the caller.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::PathBuf;

use crate::config::host::HostConfig;
use crate::config::template::Template;
use crate::config::vm::{Hypervisor, MountMode, Process, Project, RootModel, VmConfig};
use crate::error::UserError;
use crate::host::user::with_rights_of_invoking_user;
use crate::name::VmName;
use crate::spec::{self, DiskSize, EnvVar, MemorySize, PortForward, Volume};

use super::directories::{absolute, check_directory};
use super::{CreateArgs, HostLimits};

/// A create request that passed every check that needs no lock.
pub(super) struct Request {
    pub(super) name: VmName,
    pub(super) cpus: u32,
    pub(super) memory: MemorySize,
    pub(super) disk: DiskSize,
    pub(super) ports: Vec<PortForward>,
    pub(super) volumes: Vec<Volume>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) project: Option<Project>,
    pub(super) hypervisor: Hypervisor,
    pub(super) kernel: Option<PathBuf>,
    pub(super) root: RootModel,
    pub(super) ephemeral_system: bool,
    pub(super) offline: bool,
    pub(super) host_access: bool,
    pub(super) auto_ports: Option<bool>,
    pub(super) auto_ports_ignore: Vec<spec::PortRange>,
    pub(super) processes: Vec<Process>,
    pub(super) packages: Vec<String>,
}

impl Request {
    pub(super) fn into_config(self, network: crate::addr::VmNetwork) -> VmConfig {
        VmConfig {
            name: self.name,
            created_at: crate::output::unix_now(),
            hypervisor: self.hypervisor,
            cpus: self.cpus,
            memory_mib: self.memory.mib(),
            disk_mib: Some(self.disk.mib()),
            root: self.root,
            ephemeral_system: self.ephemeral_system,
            kernel: self.kernel,
            offline: self.offline,
            host_access: self.host_access,
            auto_ports: self.auto_ports,
            auto_ports_ignore: self.auto_ports_ignore,
            env: self.env,
            project: self.project,
            network,
            ports: self.ports,
            volumes: self.volumes,
            packages: self.packages,
            processes: self.processes,
        }
    }
}

pub(super) fn validate(
    args: &CreateArgs,
    paths: &crate::state::Paths,
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
    let disk = match &args.disk {
        Some(text) => text.parse::<DiskSize>()?,
        None => host.defaults.disk,
    };
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
    let root = match args
        .image
        .as_deref()
        .map_or_else(|| args.root.parse(), |image| format!("image:{image}").parse())
    {
        Ok(RootModel::Dir(dir)) => RootModel::Dir(check_directory(&dir, "--root", false)?),
        Ok(RootModel::Host) => RootModel::Host,
        Ok(RootModel::Image(image)) => {
            crate::image::load(paths, &image)?;
            RootModel::Image(image)
        }
        Err(why) => {
            return Err(UserError::usage(why).hint("use --root host or an absolute directory").into())
        }
    };
    if args.ephemeral_system && !root.has_system_layer() {
        return Err(UserError::usage("--ephemeral-system is for a VM on the host's /usr or an image")
            .hint("a --root DIR tree keeps its own layer; drop --ephemeral-system")
            .into());
    }
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
    let declared = template.map(|t| t.packages.clone()).unwrap_or_default();
    let packages = crate::spec::normalized_packages(&[declared, args.packages.clone()].concat())?;
    if !packages.is_empty() && !root.has_system_layer() {
        return Err(crate::image::packages::not_on_a_tree().into());
    }
    Ok(Request {
        name,
        cpus,
        memory,
        disk,
        ports,
        volumes,
        env,
        project,
        hypervisor: args.hypervisor.unwrap_or(host.defaults.hypervisor),
        kernel,
        root,
        ephemeral_system: args.ephemeral_system,
        offline: args.offline,
        host_access: args.host_access,
        auto_ports: if args.no_auto_ports { Some(false) } else { template.and_then(|t| t.auto_ports) },
        auto_ports_ignore: template
            .map(|t| t.auto_ports_ignore.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(parse_all(&args.ignore_ports)?)
            .collect(),
        processes,
        packages,
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
