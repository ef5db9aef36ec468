//! `mvm inspect`: everything mvm knows about one VM.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;

use crate::config::vm::VmConfig;
use crate::name::VmName;
use crate::output::print_json;
use crate::project_env;
use crate::state::lease;
use crate::state::{store, Paths};
use crate::view::{processes_of, summary_of, ProcessView, VmSummary};

/// Arguments of `mvm inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The VM to inspect
    pub name: String,
    /// Print JSON (stable field names) instead of text
    #[arg(long)]
    pub json: bool,
}

/// The JSON form: the list summary, the whole config, and where its files are.
#[derive(Debug, Serialize)]
struct Inspection {
    #[serde(flatten)]
    summary: VmSummary,
    config: VmConfig,
    processes: Vec<ProcessView>,
    /// Set when `mvm up` started the VM: it stops after this idle time.
    auto_stop: Option<AutoStop>,
    /// The hypervisor a start on this host runs (what `auto` picks), and why.
    hypervisor_choice: String,
    /// What guest root installed: the VM's system disk (none for a `--root DIR` VM).
    system_layer: Option<SystemLayer>,
    /// The package layer the VM boots, when it declares packages.
    package_layer: Option<PackageLayer>,
    /// Whether the running guest hears of host changes to its project, and if not, why.
    file_events: Option<String>,
    state_dir: PathBuf,
    run_dir: PathBuf,
}

/// The VM's system layer (`state::system_disk`).
#[derive(Debug, Serialize)]
struct SystemLayer {
    /// Kept across stops (else made anew at every start).
    persistent: bool,
    /// What its disk takes on the host; `None` until the first start makes it.
    used_bytes: Option<u64>,
    /// The most it can take.
    size_bytes: u64,
}

impl SystemLayer {
    fn of(config: &VmConfig, vm_dir: &std::path::Path) -> Option<SystemLayer> {
        config.root.has_system_layer().then(|| SystemLayer {
            persistent: !config.ephemeral_system,
            used_bytes: crate::state::system_disk::allocated_bytes(vm_dir),
            // A disk made before limits keeps the size it was made with.
            size_bytes: std::fs::symlink_metadata(crate::state::system_disk::path(vm_dir))
                .map_or(crate::state::disk::system_mib(config.disk_mib) << 20, |meta| meta.len()),
        })
    }

    fn describe(&self) -> String {
        let kind = if self.persistent { "persistent" } else { "ephemeral" };
        let size = crate::spec::MemorySize::from_mib(self.size_bytes >> 20);
        match self.used_bytes {
            Some(used) => format!("{kind}, {} used of {size}", crate::output::format_bytes(used)),
            None => format!("{kind}, made at the next start (up to {size})"),
        }
    }
}

/// The image a VM's packages are cached as (`image::packages`).
#[derive(Debug, Serialize)]
struct PackageLayer {
    image: String,
    suite: String,
    /// Everything the image holds beyond Debian's minimal system.
    include: Vec<String>,
    /// Whether it is built (else the next start builds it).
    built: bool,
}

impl PackageLayer {
    fn of(paths: &Paths, config: &VmConfig) -> Option<PackageLayer> {
        let layer = crate::image::packages::layer_of(paths, config).ok()??;
        Some(PackageLayer {
            built: crate::image::load(paths, &layer.name).is_ok(),
            image: layer.name.to_string(),
            suite: layer.suite,
            include: layer.include,
        })
    }

    fn describe(&self) -> String {
        let state = if self.built { "built" } else { "built at the next start" };
        format!("{} ({} {}, {state})", self.image, self.suite, self.include.join(","))
    }
}

/// A VM's auto-stop (`mvm up`): the idle time and the shells holding leases.
#[derive(Debug, Serialize)]
struct AutoStop {
    idle_seconds: u64,
    shells: Vec<u32>,
}

/// Where the project's environment comes from, and whether it is ready.
fn environment_of(inspection: &Inspection) -> String {
    let Some(project) = &inspection.config.project else { return "none".into() };
    let Some(kind) = project_env::detect(&project.path) else { return "none".into() };
    let source = format!("{} ({})", kind.program(), project.path.display());
    match project_env::cached(&inspection.state_dir, &inspection.config) {
        Some(environment) => format!(
            "{source}: {} variables, {} processes",
            environment.variables.len(),
            environment.processes.len()
        ),
        None if !project_env::HostTools::has(kind) => {
            format!("{source}: {} is not installed", kind.program())
        }
        None => format!("{source}: made at the next start or shell"),
    }
}

/// What a start of `config` runs on this host, and why (or why it cannot).
fn hypervisor_choice(paths: &Paths, config: &VmConfig) -> String {
    let host = crate::config::host::HostConfig::load(&paths.config_file).unwrap_or_default();
    let installed = crate::host::binaries::Tool::CloudHypervisor.find(&host.paths).is_ok();
    let kvm = crate::host::kvm::detect(std::path::Path::new("/"));
    match crate::vmm::choice::choose_hypervisor(config.hypervisor, &kvm, installed) {
        Ok((_, why)) => why.trim_start_matches("hypervisor: ").to_string(),
        Err(error) => format!("none: {error}"),
    }
}

/// Runs `mvm inspect`.
pub fn run(args: InspectArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    let config = store::load(paths, &name)?;
    let summary = summary_of(paths, &name)?;
    let running = matches!(summary.state, crate::view::VmState::Running | crate::view::VmState::Paused);
    let processes = processes_of(paths, &config, running);
    let run_dir = paths.vm_run_dir(&name);
    let auto_stop = lease::auto_stop(&run_dir).filter(|_| running).map(|idle| AutoStop {
        idle_seconds: idle.as_secs(),
        shells: lease::holders(&run_dir).iter().map(|(holder, _)| holder.pid).collect(),
    });
    let hypervisor_choice = hypervisor_choice(paths, &config);
    let system_layer = SystemLayer::of(&config, &paths.vm_dir(&name));
    let package_layer = PackageLayer::of(paths, &config);
    let file_events = running.then(|| crate::runtime::file_events(&run_dir)).flatten();
    let inspection = Inspection {
        file_events,
        system_layer,
        package_layer,
        summary,
        processes,
        auto_stop,
        hypervisor_choice,
        config,
        state_dir: paths.vm_dir(&name),
        run_dir,
    };
    if args.json {
        print_json(&inspection)?;
    } else {
        for (key, value) in text_fields(&inspection) {
            println!("{key:<12} {value}");
        }
    }
    Ok(0)
}

fn text_fields(inspection: &Inspection) -> Vec<(&'static str, String)> {
    let config = &inspection.config;
    let network = &config.network;
    let yes_no = |flag: bool| if flag { "yes" } else { "no" };
    let list_or_none = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let created = UNIX_EPOCH + Duration::from_secs(config.created_at);
    vec![
        ("name", config.name.to_string()),
        ("state", inspection.summary.state.as_str().to_string()),
        ("hypervisor", format!("{} → {}", config.hypervisor, inspection.hypervisor_choice)),
        ("cpus", config.cpus.to_string()),
        (
            "memory",
            match inspection.summary.memory_used_mib {
                Some(used) => format!("{} (the host holds {used} MiB of it now)", config.memory()),
                None => config.memory().to_string(),
            },
        ),
        (
            "disk",
            inspection.summary.disk.map_or("-".to_string(), |disk| {
                let limit = crate::spec::DiskSize::from_mib(disk.limit_bytes >> 20);
                let unset =
                    if config.disk_mib.is_none() { ", the default (set at its next start)" } else { "" };
                format!("{} used of {limit}{unset}", crate::output::format_bytes(disk.used_bytes))
            }),
        ),
        ("root", config.root.to_string()),
        ("packages", inspection.package_layer.as_ref().map_or("none".to_string(), PackageLayer::describe)),
        (
            "system",
            inspection
                .system_layer
                .as_ref()
                .map_or("the root tree's own layer".to_string(), SystemLayer::describe),
        ),
        ("file events", inspection.file_events.clone().unwrap_or_else(|| "-".to_string())),
        (
            "kernel",
            config.kernel.as_ref().map_or("the host's".to_string(), |path| path.display().to_string()),
        ),
        (
            "project",
            config.project.as_ref().map_or("none".to_string(), |project| {
                let kept = if project.persist { ", persistent" } else { "" };
                format!("{} ({}{kept})", project.path.display(), project.mount)
            }),
        ),
        ("address", format!("{}/{} via {}", network.address, network.subnet.prefix(), network.gateway)),
        ("interfaces", format!("bridge {}, tap {}, mac {}", network.bridge, network.tap, network.mac)),
        ("offline", yes_no(config.offline).to_string()),
        ("host access", yes_no(config.host_access).to_string()),
        ("ports", list_or_none(config.ports.iter().map(ToString::to_string).collect())),
        (
            "volumes",
            list_or_none(
                config.volumes.iter().map(|v| format!("{}:{}", v.name, v.guest_path.display())).collect(),
            ),
        ),
        ("env", list_or_none(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect())),
        (
            "processes",
            list_or_none(
                inspection
                    .processes
                    .iter()
                    .map(|p| match &p.state {
                        Some(state) => format!("{} ({}, {} restarts)", p.name, state.state, state.restarts),
                        None => p.name.clone(),
                    })
                    .collect(),
            ),
        ),
        ("created", humantime::format_rfc3339_seconds(created).to_string()),
        ("environment", environment_of(inspection)),
        (
            "auto-stop",
            inspection.auto_stop.as_ref().map_or("no".to_string(), |auto| {
                let shells: Vec<String> = auto.shells.iter().map(ToString::to_string).collect();
                format!(
                    "after {} with no shell in the project (shells: {})",
                    humantime::format_duration(Duration::from_secs(auto.idle_seconds)),
                    if shells.is_empty() { "none".to_string() } else { shells.join(", ") }
                )
            }),
        ),
        ("last run", inspection.summary.reason.clone().unwrap_or_else(|| "-".to_string())),
        ("state dir", inspection.state_dir.display().to_string()),
        ("run dir", inspection.run_dir.display().to_string()),
    ]
}
