//! One boot's host side: everything brought up before the hypervisor runs (the VM's
//! files disk, the boot image, the network and the guest's DNS, pinned directories and
//! overlays, the project's watcher, one virtiofsd per share, vhost-device-vsock), the
//! hypervisor itself, and the teardown that takes it all down again whatever state the
//! bring-up reached.

use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::launch::{self, Launch, RunAs};
use super::processes::{self, Processes};
use super::{disk, sandbox, userns, watch, Event};
use crate::boot::initramfs::{self, BaseSpec};
use crate::config::host::HostConfig;
use crate::config::vm::VmConfig;
use crate::contract::GUEST_CONFIG;
use crate::name::VmName;
use crate::privileged::client::Privileges;
use crate::runtime::status::{Phase, RuntimeStatus};
use crate::runtime::{self, clean_run_dir};
use crate::state::{store, Paths};

/// What a boot brought up on the host that its teardown takes down: the VM's files disk
/// and its network (each recorded before it is brought up, so a half-way bring-up is
/// taken down too).
#[derive(Default)]
pub(super) struct BroughtUp {
    disk: Option<VmConfig>,
    network: Option<VmConfig>,
}

/// A boot whose hypervisor runs: its launch, and what lives as long as the boot does.
pub(super) struct Booted {
    pub launch: Launch,
    pub hypervisor_pid: u32,
    /// The hypervisor's path, for the log.
    pub program: String,
    /// The guest's DNS, on this boot's bridge.
    _dns: crate::dns::Server,
    /// The project's watcher (a rebooted guest gets one of its own).
    _file_events: Option<watch::Watcher>,
}

/// Brings VM `name` up and starts its hypervisor, whose exit is sent on `events`;
/// records in `brought_up` what [`teardown`] must take down, however far it got.
pub(super) fn bring_up(
    paths: &Paths,
    privileges: &dyn Privileges,
    name: &VmName,
    events: &(Receiver<Event>, Sender<Event>),
    status: &mut RuntimeStatus,
    processes: &mut Processes,
    brought_up: &mut BroughtUp,
) -> anyhow::Result<Booted> {
    // `mvm start` watches the console for the guest's ready line: drop the last boot's first.
    let _ = std::fs::remove_file(paths.vm_dir(name).join("log/console.log"));
    let started = Instant::now();
    let host = HostConfig::load(&paths.config_file)?;
    let config = store::load(paths, name)?;
    launch::ensure_dirs(paths, &config)?;
    // Recorded first, like the network below.
    brought_up.disk = Some(config.clone());
    let moved = disk::bring_up(paths, privileges, &config, &launch::RunAs::this_process())?;
    if !moved.is_empty() {
        log!("moved {} onto the VM's disk ({} ms)", moved.join(", "), started.elapsed().as_millis());
    }
    let files = crate::state::disk::files_dir(&paths.vm_dir(name));
    launch::ensure_trees(&files, &config)?;
    let mut launch = Launch::prepare(paths, &host, &config)?;
    launch::prepare_project_layer(&launch.config, &files, launch.checked.project_owner)?;
    log!("{}", launch.checked.vmm_choice);
    if let Some(mkfs) = &launch.checked.mkfs {
        let vm_dir = paths.vm_dir(name);
        let size = crate::state::disk::system_mib(config.disk_mib);
        if crate::state::system_disk::ensure(&vm_dir, size, config.ephemeral_system, mkfs)? {
            let kind = if config.ephemeral_system { "an ephemeral" } else { "a" };
            log!("made {kind} system disk ({} ms)", started.elapsed().as_millis());
        }
    }
    if let Some(warning) = &launch.checked.accel_warning {
        log!("{warning}");
    }
    let run_dir = paths.vm_run_dir(name);

    let notify_module = file_event_module(paths, &launch);
    let base = {
        let cache = paths.user_cache();
        std::fs::create_dir_all(cache.parent().expect("the cache has a parent"))?;
        crate::state::paths::own_dir(&cache, 0o700)?;
        initramfs::cached_base(&cache, &BaseSpec::for_kernel(&launch.checked.kernel, notify_module.clone())?)?
    };
    let guest = serde_json::to_vec(&launch.guest)?;
    initramfs::write_boot_image(&base, &[(GUEST_CONFIG, &guest)], &launch.spec.initramfs)?;
    log!("boot image ready ({} ms)", started.elapsed().as_millis());

    // Recorded first: a bring-up that fails half-way is torn down like a finished one.
    brought_up.network = Some(config.clone());
    privileges.network().up(&config)?;
    log!("network up ({} ms)", started.elapsed().as_millis());
    // Until this boot ends: the sockets belong to this boot's bridge.
    let dns = serve_dns(privileges, &config)?;
    for pin in &launch.pins {
        crate::host::mounts::pin_directory(
            &crate::fs::Tree::open_exact(&pin.source)?,
            &pin.at,
            pin.read_only,
        )?;
    }
    // The shares were planned for the project's owner: the directory now bound must be
    // theirs still (not another directory renamed into its place meanwhile).
    if launch.config.project.is_some() && launch.run_as == RunAs::Root {
        use std::os::unix::fs::MetadataExt;
        let bound = std::fs::metadata(run_dir.join(runtime::PINNED_PROJECT))?;
        if (bound.uid(), bound.gid()) != launch.checked.project_owner {
            bail!("the project directory changed owner while the VM was starting");
        }
    }
    if launch.run_as == RunAs::Root {
        for overlay in &launch.overlays {
            processes::mount_overlay(overlay)?;
        }
    }
    // Until this boot ends (a rebooted guest gets a watcher of its own).
    let file_events = notify_module.and_then(|_| file_events_target(paths, &launch)).map(watch::spawn);
    // Every host change is then pushed to the guest, which drops what it cached: the
    // project's entries and attributes may be cached for long (no revalidation round
    // trips), unless part of the project goes unwatched.
    if file_events.as_ref().is_some_and(|watcher| watcher.coverage == watch::Coverage::Whole) {
        for share in launch.spec.shares.iter_mut().filter(|share| share.tag == "project") {
            share.changes_pushed = true;
        }
    }
    let log_dir = paths.vm_dir(name).join("log");
    let filter = sandbox::no_privilege_filter()?;
    // This boot's: the VM's own trees' ids are the owner's subordinate ones.
    let mapped = match launch.run_as {
        RunAs::User { uid, gid, sub: Some(sub) } => Some(userns::MappedNamespace::make((uid, gid), sub)?),
        _ => None,
    };
    for share in &launch.spec.shares {
        let log = log_dir.join(format!("virtiofsd-{}.log", share.tag));
        let overlay = launch.overlays.iter().find(|overlay| overlay.merged == share.dir);
        let namespace = match (launch.run_as, &mapped) {
            (RunAs::Root, _) => None,
            (_, Some(namespace)) if share.ids == crate::vmm::GuestIds::Subordinate => {
                Some(userns::Namespace::Mapped { namespace, overlay, shared_dir: &share.dir })
            }
            (RunAs::User { uid, gid, .. }, _) => Some(userns::Namespace::Own { owner: (uid, gid), overlay }),
        };
        processes.spawn(
            &format!("virtiofsd[{}]", share.tag),
            &launch.checked.virtiofsd,
            &crate::vmm::virtiofsd::args(share),
            &log,
            namespace,
            (!share.read_only).then(|| filter.clone()),
        )?;
    }
    if let Some(vhost_vsock) = &launch.checked.vhost_vsock {
        let args = crate::vmm::qemu::vhost_vsock_args(&launch.vhost_vsock_socket, &launch.spec);
        processes.spawn(
            "vhost-device-vsock",
            vhost_vsock,
            &args,
            &log_dir.join("vhost-device-vsock.log"),
            None,
            None,
        )?;
    }
    let mut sockets: Vec<&Path> = launch.spec.shares.iter().map(|s| s.socket.as_path()).collect();
    if launch.checked.vhost_vsock.is_some() {
        sockets.push(&launch.vhost_vsock_socket);
    }
    processes.wait_for_sockets(&sockets, Duration::from_secs(10))?;
    log!("{} device backends ready ({} ms)", sockets.len(), started.elapsed().as_millis());

    let program = launch.checked.hypervisor.display().to_string();
    let mut hypervisor = processes::spawn_hypervisor(
        &launch.checked.hypervisor,
        &launch.hypervisor_args(),
        &log_dir.join("hypervisor.log"),
    )?;
    let hypervisor_pid = hypervisor.id();
    log!("{program} running as {hypervisor_pid} ({} ms)", started.elapsed().as_millis());
    status.phase = Phase::Running;
    status.hypervisor_pid = Some(hypervisor_pid);
    status.write(&run_dir)?;
    let sender = events.1.clone();
    std::thread::spawn(move || {
        if let Ok(exit) = hypervisor.wait() {
            let _ = sender.send(Event::HypervisorExited(exit));
        }
    });

    Ok(Booted { launch, hypervisor_pid, program, _dns: dns, _file_events: file_events })
}

/// The guest's file-event module, when the VM has a project to raise events for and the
/// module is built and root's alone; otherwise the log says why there are none.
fn file_event_module(paths: &Paths, launch: &Launch) -> Option<std::path::PathBuf> {
    use crate::boot::notify::{self, Availability};
    launch.config.project.as_ref()?;
    let release = launch.checked.kernel.release.as_deref()?;
    match notify::find(paths, release) {
        Availability::Ready(module) => Some(module),
        other => {
            if let Some(why) = notify::why_off(&other, release) {
                log!("{why}");
                runtime::note_file_events(&paths.vm_run_dir(&launch.config.name), &format!("off: {why}"));
            }
            None
        }
    }
}

/// What the project's file events need (the guest having the module).
fn file_events_target(paths: &Paths, launch: &Launch) -> Option<watch::WatchTarget> {
    let project = launch.config.project.as_ref()?;
    let name = &launch.config.name;
    let (vm_dir, run_dir) = (paths.vm_dir(name), paths.vm_run_dir(name));
    let upper = launch::project_overlay(&launch.config, &vm_dir, &run_dir, launch.run_as).map(|o| o.upper);
    let guest_lower =
        launch.guest.mounts.iter().find(|mount| mount.tag == "project" && mount.layer.is_some());
    Some(watch::WatchTarget {
        project: launch::project_source(&launch.config, &run_dir, launch.run_as)?,
        upper,
        guest_root: project.path.display().to_string(),
        guest_lower: guest_lower.map(|mount| mount.share_path()),
        vsock: launch.spec.vsock_socket.clone(),
        console: launch.spec.console_log.clone(),
        run_dir,
    })
}

/// Answers the guest's DNS on its gateway until the returned server is dropped (`dns`).
/// Sockets that cannot be had end the start: a guest that resolves nothing, or only
/// over one transport, fails later in ways far harder to tell.
fn serve_dns(privileges: &dyn Privileges, config: &VmConfig) -> anyhow::Result<crate::dns::Server> {
    let sockets = privileges.network().dns_sockets(config).context(
        "no DNS for the guest (a host service holding port 53 on every address must allow others, \
         with SO_REUSEADDR as dnsmasq does, or listen on its own addresses only)",
    )?;
    let resolver = crate::dns::HostResolver::from_env();
    Ok(crate::dns::serve(sockets, config.network.address, resolver, config.offline)?)
}

/// Undoes everything [`bring_up`] did, whatever state it got to; the first error is returned
/// after every step was tried.
pub(super) fn teardown(
    paths: &Paths,
    privileges: &dyn Privileges,
    name: &VmName,
    processes: &mut Processes,
    brought_up: BroughtUp,
) -> anyhow::Result<()> {
    let mut first_error: Option<anyhow::Error> = None;
    let mut note = |result: anyhow::Result<()>| {
        if let Err(error) = result {
            log!("teardown: {error:#}");
            first_error.get_or_insert(error);
        }
    };
    processes.stop_all(Duration::from_secs(3));
    let run_dir = paths.vm_run_dir(name);
    for mounted in runtime::MOUNT_POINTS {
        note(crate::host::mounts::unmount_if_mounted(&run_dir.join(mounted)));
    }
    if !crate::host::mounts::is_mount_point(&run_dir.join(runtime::PROJECT_MERGED)) {
        note(launch::remove_scratch_layers(&crate::state::disk::files_dir(&paths.vm_dir(name))));
    }
    if let Some(config) = brought_up.network {
        note(privileges.network().down(&config));
    }
    // Last: the processes that wrote there have ended (a stopped VM holds no mount).
    if let Some(config) = brought_up.disk {
        note(privileges.disk().down(&config));
    }
    clean_run_dir(&run_dir);
    first_error.map_or(Ok(()), Err)
}
