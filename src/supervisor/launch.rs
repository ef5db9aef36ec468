//! What a VM's launch consists of, worked out before anything runs: the kernel and its
//! modules, the binaries, the shares and the hypervisor's launch spec. `mvm start` works
//! this out first so that a missing kernel, binary or project is a clear error before any
//! process is spawned; the supervisor works it out again and acts on it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::boot::kernel::{self, Kernel};
use crate::config::host::HostConfig;
use crate::config::vm::{MountMode, RootModel, VmConfig};
use crate::contract::config::{GuestConfig, GuestMount, GuestNetwork, GuestRoot};
use crate::error::UserError;
use crate::host::binaries::Tool;
use crate::host::kvm::{self, KvmSupport};
use crate::host::subids::SubIds;
use crate::runtime::{self, PINNED_PROJECT, PINNED_ROOT};
use crate::state::Paths;
use crate::vmm::qemu::Accel;
use crate::vmm::{kernel_cmdline, Disk, GuestIds, LaunchSpec, Share, Vmm, VOLUME_ID_BASE};

/// An overlay the supervisor mounts on the host before the shares start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

impl Overlay {
    /// overlayfs's mount options; refused when a path holds a character
    /// overlayfs would read as a separator.
    pub fn mount_options(&self) -> anyhow::Result<String> {
        for dir in [&self.lower, &self.upper, &self.work] {
            let text = dir.to_string_lossy();
            if text.contains([',', ':', '\\']) {
                bail!(
                    "{} contains ',', ':' or '\\', which overlayfs cannot take; use --mount rw",
                    dir.display()
                );
            }
        }
        Ok(format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        ))
    }
}

/// Who a VM's processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// Root: the project is pinned by a bind mount, overlays are mounted on the host,
    /// and virtiofsd translates the guest's ids (`GuestIds::Squash`, `Shift`).
    Root,
    /// The VM's owner, with no privilege: each virtiofsd runs in a user namespace of its
    /// own (where an overlay is mounted for it), with `GuestIds::Owner`; with the owner's
    /// subordinate ids `sub`, those of the VM's own trees in the VM's `MappedNamespace`,
    /// with `GuestIds::Subordinate`.
    User { uid: u32, gid: u32, sub: Option<SubIds> },
}

impl RunAs {
    /// This process's.
    pub fn this_process() -> RunAs {
        let uid = nix::unistd::geteuid().as_raw();
        if uid == 0 {
            RunAs::Root
        } else {
            RunAs::User { uid, gid: nix::unistd::getegid().as_raw(), sub: SubIds::of_this_user() }
        }
    }
}

/// What a launch takes from the host, checked before anything is made: the kernel, the
/// programs, the hypervisor `auto` chose and the acceleration, the project's owner.
/// `mvm start` checks these to fail early, on the caller's terminal; the supervisor
/// checks them again at each boot and plans the boot from them ([`Launch::prepare`]).
#[derive(Debug, Clone)]
pub struct Checked {
    pub kernel: Kernel,
    pub hypervisor: PathBuf,
    /// Which hypervisor that is (what `auto` chose), and the line that says why.
    pub vmm: Vmm,
    pub vmm_choice: String,
    pub virtiofsd: PathBuf,
    /// `mkfs.ext4`, for a VM that has a system disk.
    pub mkfs: Option<PathBuf>,
    /// vhost-device-vsock, for QEMU.
    pub vhost_vsock: Option<PathBuf>,
    pub accel: Accel,
    /// Set when `/dev/kvm` exists but cannot run ordinary kernels (only `kvm_pvm`).
    pub accel_warning: Option<String>,
    /// The project's owner (uid, gid), whom the guest's writes to it belong to.
    pub project_owner: (u32, u32),
}

/// Everything needed to launch one VM.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The VM's config, its root resolved (a VM that declares packages boots their image).
    pub config: VmConfig,
    pub checked: Checked,
    pub overlays: Vec<Overlay>,
    /// Who the VM's processes run as.
    pub run_as: RunAs,
    /// The recorded directories to bind where the shares and overlays take them from.
    pub pins: Vec<Pin>,
    pub spec: LaunchSpec,
    pub guest: GuestConfig,
    /// The socket vhost-device-vsock serves QEMU on.
    pub vhost_vsock_socket: PathBuf,
}

/// Checks what the launch of `declared` takes from the host; returns the config with its
/// root resolved, and what was found.
pub fn check(paths: &Paths, host: &HostConfig, declared: &VmConfig) -> anyhow::Result<(VmConfig, Checked)> {
    // A VM that declares packages boots their layer's image.
    let config = VmConfig { root: crate::image::packages::launch_root(paths, declared)?, ..declared.clone() };
    let kernel = kernel::discover(
        Path::new("/"),
        config.kernel.as_deref().or(host.paths.kernel.as_deref()),
        &crate::host::kernel_release(),
    )?;
    let kvm = kvm::for_this_process(kvm::detect(Path::new("/")), Path::new("/dev/kvm"));
    let cloud_hypervisor_installed = Tool::CloudHypervisor.find(&host.paths).is_ok();
    let (vmm, vmm_choice) =
        crate::vmm::choice::choose_hypervisor(config.hypervisor, &kvm, cloud_hypervisor_installed)?;
    let hypervisor_tool = match vmm {
        Vmm::CloudHypervisor => Tool::CloudHypervisor,
        Vmm::Qemu => Tool::Qemu,
    };
    let hypervisor = hypervisor_tool.find(&host.paths)?;
    let virtiofsd = Tool::Virtiofsd.find(&host.paths)?;
    let vhost_vsock = match vmm {
        Vmm::Qemu => Some(Tool::VhostDeviceVsock.find(&host.paths)?),
        Vmm::CloudHypervisor => None,
    };
    let (accel, accel_warning) = choose_accel(&kvm, host);
    // What guest root installs goes on a disk of the VM's own, which mkfs makes.
    let mkfs = config.root.has_system_layer().then(|| Tool::MkfsExt4.find(&host.paths)).transpose()?;
    // What the guest writes into the project becomes its owner's.
    let project_owner = match &config.project {
        Some(project) => {
            let tree = open_recorded(&project.path, "project", &config.name)?;
            let meta = tree.metadata(Path::new(""))?.context("the project vanished")?;
            (meta.uid(), meta.gid())
        }
        None => (0, 0),
    };
    if let RootModel::Dir(dir) = &config.root {
        open_recorded(dir, "root", &config.name)?;
    }
    let checked = Checked {
        kernel,
        hypervisor,
        vmm,
        vmm_choice,
        virtiofsd,
        mkfs,
        vhost_vsock,
        accel,
        accel_warning,
        project_owner,
    };
    Ok((config, checked))
}

impl Launch {
    /// Works out the launch of `declared`, checking every input exists.
    pub fn prepare(paths: &Paths, host: &HostConfig, declared: &VmConfig) -> anyhow::Result<Launch> {
        let (config, checked) = check(paths, host, declared)?;
        let Checked { vmm, accel, project_owner, .. } = checked;
        let run_dir = paths.vm_run_dir(&config.name);
        let vm_dir = paths.vm_dir(&config.name);
        let run_as = RunAs::this_process();
        let image_store = crate::image::store_dir(paths);
        let files = crate::state::disk::files_dir(&vm_dir);
        let (shares, overlays, mut guest) = plan_shares(&config, &files, &run_dir, project_owner, run_as);
        if let Some(environment) = crate::project_env::cached(&vm_dir, &config) {
            let workdir = config.project.as_ref().map_or("/".into(), |p| p.path.display().to_string());
            environment.apply_to(&mut guest.processes, &config.env, &workdir);
        }
        let network = GuestNetwork {
            address: config.network.address,
            prefix: config.network.subnet.prefix(),
            gateway: config.network.gateway,
            // The supervisor's resolver on the gateway answers as the host would (`dns`).
            dns: vec![config.network.gateway],
        };
        let control = match vmm {
            Vmm::CloudHypervisor => runtime::API_SOCKET,
            Vmm::Qemu => runtime::QMP_SOCKET,
        };
        let spec = LaunchSpec {
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            kernel: checked.kernel.image.clone(),
            initramfs: run_dir.join(runtime::BOOT_IMAGE),
            cmdline: kernel_cmdline(&guest_cmdline(&network, vmm, accel)),
            shares,
            disks: disks(&config, &vm_dir, &image_store),
            tap: config.network.tap.clone(),
            mac: config.network.mac.clone(),
            vsock_socket: run_dir.join(runtime::AGENT_SOCKET),
            control_socket: run_dir.join(control),
            console_log: vm_dir.join("log/console.log"),
        };
        // A user's processes see what the user sees: nothing to pin against.
        let pins = if run_as == RunAs::Root { pins(&config, &run_dir) } else { Vec::new() };
        Ok(Launch {
            config,
            overlays,
            run_as,
            pins,
            checked,
            spec,
            guest,
            vhost_vsock_socket: run_dir.join(runtime::VHOST_VSOCK_SOCKET),
        })
    }

    /// The hypervisor's argv (without the program).
    pub fn hypervisor_args(&self) -> Vec<String> {
        match self.checked.vmm {
            Vmm::CloudHypervisor => crate::vmm::cloud_hypervisor::args(&self.spec),
            Vmm::Qemu => crate::vmm::qemu::args(&self.spec, self.checked.accel, &self.vhost_vsock_socket),
        }
    }
}

/// The disks of `config`'s VM: its system disk, when it runs on the host's `/usr` or an
/// image, and the image's (in `image_store`), read-only.
pub fn disks(config: &VmConfig, vm_dir: &Path, image_store: &Path) -> Vec<Disk> {
    let system = || Disk {
        path: crate::state::system_disk::path(vm_dir),
        serial: crate::contract::config::SYSTEM_DISK_SERIAL.to_string(),
        read_only: false,
    };
    match &config.root {
        RootModel::Host => vec![system()],
        RootModel::Image(image) => vec![
            system(),
            Disk {
                path: image_store.join(image.as_str()).join(crate::image::ROOTFS),
                serial: crate::image::DISK_SERIAL.to_string(),
                read_only: true,
            },
        ],
        RootModel::Dir(_) => Vec::new(),
    }
}

/// The mvm-specific part of the kernel command line: the network, and what TCG needs.
fn guest_cmdline(network: &GuestNetwork, vmm: Vmm, accel: Accel) -> String {
    let mut cmdline = network.to_cmdline();
    if vmm == Vmm::Qemu && accel == Accel::Tcg {
        if let Some(args) = crate::vmm::qemu::tcg_kernel_args() {
            cmdline.push(' ');
            cmdline.push_str(&args);
        }
    }
    cmdline
}

/// QEMU's acceleration: the host config's choice, else KVM where it can run ordinary
/// kernels, else TCG (with a warning when `/dev/kvm` exists but is only `kvm_pvm`).
pub fn choose_accel(kvm: &KvmSupport, host: &HostConfig) -> (Accel, Option<String>) {
    match host.defaults.accel.as_deref() {
        Some("kvm") => return (Accel::Kvm, None),
        Some("tcg") => return (Accel::Tcg, None),
        _ => {}
    }
    match kvm {
        KvmSupport::Hardware { .. } | KvmSupport::Unknown => (Accel::Kvm, None),
        KvmSupport::PvmOnly => (
            Accel::Tcg,
            Some(
                "warning: /dev/kvm is backed only by kvm_pvm, which cannot run ordinary kernels; \
                 using QEMU's TCG emulation (slow)"
                    .to_string(),
            ),
        ),
        KvmSupport::Missing => {
            (Accel::Tcg, Some("warning: no /dev/kvm; using QEMU's TCG emulation (slow)".into()))
        }
        KvmSupport::NoAccess => (
            Accel::Tcg,
            Some(
                "warning: you may not open /dev/kvm; using QEMU's TCG emulation (slow): \
                 `sudo usermod -aG kvm $USER`, then log in again"
                    .into(),
            ),
        ),
    }
}

/// Opens directory `path` that VM `name` recorded as its `what` (project or root),
/// refusing it when a symlink now stands anywhere on its path.
fn open_recorded(path: &Path, what: &str, name: &crate::name::VmName) -> anyhow::Result<crate::fs::Tree> {
    crate::fs::Tree::open_exact(path).map_err(|error| {
        let why =
            if error.kind() == std::io::ErrorKind::NotFound { "has vanished" } else { "cannot be used" };
        UserError::not_found(format!("the {what} directory {} {why}: {error}", path.display()))
            .hint(format!(
                "restore the directory itself at that path (mvm never follows a symlink there), \
                 or remove the VM with `mvm rm {name}` and create it again"
            ))
            .into()
    })
}

/// A directory the VM recorded, bound (`host::mounts::pin_directory`) at a path in its
/// runtime dir before anything uses it: the shares and overlays see that directory
/// even if its path is later turned into a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub source: PathBuf,
    pub at: PathBuf,
    /// Only read through (an overlay's lower layer, an `ro` project).
    pub read_only: bool,
}

/// The host's package database, which describes the `/usr` a VM's system layer sits on.
pub const HOST_DPKG_DATABASE: &str = "/var/lib/dpkg";

/// The directories of `config` to pin, in mount order.
pub fn pins(config: &VmConfig, run_dir: &Path) -> Vec<Pin> {
    let mut pins = Vec::new();
    if let RootModel::Dir(dir) = &config.root {
        pins.push(Pin { source: dir.clone(), at: run_dir.join(PINNED_ROOT), read_only: true });
    }
    if let Some(project) = &config.project {
        let read_only = project.mount != MountMode::Rw;
        pins.push(Pin { source: project.path.clone(), at: run_dir.join(PINNED_PROJECT), read_only });
    }
    pins
}

/// Where a persistent project overlay keeps its layers, under the VM's state dir.
pub const PERSISTENT_LAYERS: &str = "layer";

/// The tag of the share that holds a project overlay's `upper/` and `work/`.
pub const PROJECT_LAYER: &str = "project-layer";

/// Where a non-persistent project overlay keeps its layers, under the VM's state dir;
/// removed at every stop and before every start.
pub const SCRATCH_LAYERS: &str = "scratch";

/// The overlay of `config`'s project, when it is mounted `overlay`.
pub fn project_overlay(config: &VmConfig, files: &Path, run_dir: &Path, run_as: RunAs) -> Option<Overlay> {
    let project = config.project.as_ref().filter(|project| project.mount == MountMode::Overlay)?;
    // On the state disk, never in /run (memory): the guest decides its size.
    let layers = if project.persist { files.join(PERSISTENT_LAYERS) } else { files.join(SCRATCH_LAYERS) };
    Some(Overlay {
        lower: lower(run_as, &project.path, run_dir, PINNED_PROJECT),
        upper: layers.join("upper"),
        work: layers.join("work"),
        merged: run_dir.join(runtime::PROJECT_MERGED),
    })
}

/// The host directory `config`'s project is read from (in overlay mode, the lower layer).
pub fn project_source(config: &VmConfig, run_dir: &Path, run_as: RunAs) -> Option<PathBuf> {
    let project = config.project.as_ref()?;
    Some(lower(run_as, &project.path, run_dir, PINNED_PROJECT))
}

/// Where a recorded directory is read from: root reads its pin, a user the directory.
fn lower(run_as: RunAs, recorded: &Path, run_dir: &Path, pinned: &str) -> PathBuf {
    match run_as {
        RunAs::Root => run_dir.join(pinned),
        RunAs::User { .. } => recorded.to_path_buf(),
    }
}

/// The shares, overlays and guest mount plan of `config`. What the guest writes into its
/// project belongs to `project_owner` (uid, gid) on the host.
pub fn plan_shares(
    config: &VmConfig,
    files: &Path,
    run_dir: &Path,
    project_owner: (u32, u32),
    run_as: RunAs,
) -> (Vec<Share>, Vec<Overlay>, GuestConfig) {
    // Under a user, every share is theirs; the guest's own trees look root's, and get the
    // user's subordinate ids when the user has them (read-only ones are the host's).
    let ids = |root_ids: GuestIds| match run_as {
        RunAs::Root => root_ids,
        RunAs::User { .. } => GuestIds::Owner { shown_as: (0, 0) },
    };
    let own_ids = |root_ids: GuestIds| match run_as {
        RunAs::User { sub: Some(_), .. } => GuestIds::Subordinate,
        _ => ids(root_ids),
    };
    let socket = |tag: &str| runtime::share_socket(run_dir, tag);
    let share = |tag: &str, dir: PathBuf, read_only: bool, ids: GuestIds| Share {
        tag: tag.to_string(),
        socket: socket(tag),
        dir,
        read_only,
        ids,
        overlay_layer: false,
        changes_pushed: false,
    };
    let mut shares = Vec::new();
    let mut overlays = Vec::new();
    let root = match &config.root {
        RootModel::Host => {
            shares.push(share("usr", PathBuf::from("/usr"), true, ids(GuestIds::AsIs)));
            shares.push(share("etc", files.join("etc"), false, own_ids(GuestIds::AsIs)));
            shares.push(share("var", files.join("var"), false, own_ids(GuestIds::AsIs)));
            // The package database of the host's /usr, read-only beneath the guest's own.
            let dpkg = Path::new(HOST_DPKG_DATABASE).is_dir();
            if dpkg {
                shares.push(share("dpkg", PathBuf::from(HOST_DPKG_DATABASE), true, ids(GuestIds::AsIs)));
            }
            let nix = Path::new("/nix/store").is_dir();
            if nix {
                shares.push(share("nix", PathBuf::from("/nix/store"), true, ids(GuestIds::AsIs)));
            }
            GuestRoot::Host { nix, dpkg }
        }
        RootModel::Dir(dir) => {
            let merged = run_dir.join(runtime::ROOT_MERGED);
            overlays.push(Overlay {
                lower: lower(run_as, dir, run_dir, PINNED_ROOT),
                upper: files.join("root/upper"),
                work: files.join("root/work"),
                merged: merged.clone(),
            });
            shares.push(share("root", merged, false, own_ids(GuestIds::AsIs)));
            GuestRoot::Dir
        }
        RootModel::Image(_) => {
            // The image itself is a disk (`disks`); this only for the processes' logs and
            // states, which the host reads.
            shares.push(share("var", files.join("var"), false, own_ids(GuestIds::AsIs)));
            GuestRoot::Image
        }
    };
    let mut mounts = Vec::new();
    if let Some(project) = &config.project {
        let (uid, gid) = project_owner;
        let project_ids = match run_as {
            RunAs::Root => GuestIds::Squash { uid, gid },
            RunAs::User { .. } => GuestIds::Owner { shown_as: project_owner },
        };
        // In overlay mode the guest mounts the overlay itself: the project read-only
        // beneath the VM's layer share, which keeps only the overlay's attributes.
        let layer = project_overlay(config, files, run_dir, run_as).map(|overlay| {
            let dir = overlay.upper.parent().expect("the upper layer has a parent").to_path_buf();
            shares.push(Share { overlay_layer: true, ..share(PROJECT_LAYER, dir, false, project_ids) });
            PROJECT_LAYER.to_string()
        });
        let read_only = project.mount == MountMode::Ro || layer.is_some();
        let dir = lower(run_as, &project.path, run_dir, PINNED_PROJECT);
        shares.push(share("project", dir, read_only, project_ids));
        mounts.push(GuestMount {
            tag: "project".into(),
            path: project.path.display().to_string(),
            read_only: project.mount == MountMode::Ro,
            layer,
        });
    }
    for volume in &config.volumes {
        let tag = format!("vol-{}", volume.name);
        let volume_ids = own_ids(GuestIds::Shift { base: VOLUME_ID_BASE });
        shares.push(share(&tag, files.join("volumes").join(&volume.name), false, volume_ids));
        mounts.push(GuestMount {
            tag,
            path: volume.guest_path.display().to_string(),
            read_only: false,
            layer: None,
        });
    }
    let default_workdir = config.project.as_ref().map_or("/".to_string(), |p| p.path.display().to_string());
    let processes = config
        .processes
        .iter()
        .map(|process| {
            let mut env = config.env.clone();
            env.extend(process.env.clone());
            crate::config::vm::Process {
                workdir: Some(process.workdir.clone().unwrap_or_else(|| default_workdir.clone())),
                env,
                ..process.clone()
            }
        })
        .collect();
    let guest = GuestConfig { hostname: config.name.to_string(), root, mounts, processes };
    (shares, overlays, guest)
}

/// Whether the console's first MiB (the boot, before any guest program ran) holds the
/// guest init's ready line.
pub fn guest_ready(console: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(console).and_then(|file| file.take(1 << 20).read_to_end(&mut head)).is_ok()
        && String::from_utf8_lossy(&head).contains(crate::contract::READY_MARKER)
}

/// Reads the last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let tail = std::fs::File::open(path).and_then(|mut file| crate::fs::read_tail(&mut file, 64 * 1024));
    let text = String::from_utf8_lossy(&tail.unwrap_or_default()).into_owned();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Moves a volume's owners into the range its guest ids are shifted to
/// ([`GuestIds::Shift`]): the volume itself on its first start, and everything in it when
/// it was written before volumes were shifted (a guest id below [`crate::vmm::SHIFTED_IDS`]
/// at its root). Walked beneath the volume, never through a symlink.
pub fn shift_volume_ids(volume: &Path) -> anyhow::Result<()> {
    let tree = crate::fs::Tree::open(volume)?;
    let root = tree.metadata(Path::new(""))?.context("the volume vanished")?;
    if root.uid() >= VOLUME_ID_BASE {
        return Ok(());
    }
    let shift = |id: u32| if id < crate::vmm::SHIFTED_IDS { VOLUME_ID_BASE + id } else { id };
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        for entry in tree.entries(&dir)? {
            let path = dir.join(&entry.name);
            tree.set_owner(&path, shift(entry.meta.uid()), shift(entry.meta.gid()))?;
            if entry.meta.is_dir() {
                pending.push(path);
            }
        }
    }
    tree.set_owner(Path::new(""), shift(root.uid()), shift(root.gid()))
        .with_context(|| format!("cannot shift the owners of {}", volume.display()))
}

/// Readies the layer share of `config`'s project overlay (the guest mounts the overlay):
/// `upper/` and `work/`, owned by the project's owner under root (the guest's writes
/// arrive through virtiofsd as theirs). A persistent upper layer where mvm kept it before
/// the guest mounted the overlay (`VM/upper`, made by the host's overlayfs) moves into
/// place once, its opaque directories marked as the guest's overlay reads them.
pub fn prepare_project_layer(config: &VmConfig, files: &Path, owner: (u32, u32)) -> anyhow::Result<()> {
    let Some(project) = config.project.as_ref().filter(|project| project.mount == MountMode::Overlay) else {
        return Ok(());
    };
    let vm = crate::fs::Tree::open(files)?;
    let layers = Path::new(if project.persist { PERSISTENT_LAYERS } else { SCRATCH_LAYERS });
    let as_root = RunAs::this_process() == RunAs::Root;
    let owner = as_root.then_some(owner);
    let old_upper = Path::new("upper");
    if project.persist
        && vm.metadata(layers)?.is_none()
        && vm.metadata(old_upper)?.is_some_and(|m| m.is_dir())
    {
        vm.create_dir_all(layers, 0o755, owner)?;
        std::fs::rename(files.join(old_upper), files.join(layers).join("upper"))
            .with_context(|| format!("cannot move {} into {}", old_upper.display(), layers.display()))?;
        vm.remove(Path::new("work"))?;
        if as_root {
            mark_opaque_for_the_guest(&vm.subtree(&layers.join("upper"))?)?;
        }
    }
    for dir in [layers.to_path_buf(), layers.join("upper"), layers.join("work")] {
        vm.create_dir_all(&dir, 0o755, owner)?;
        if let Some((uid, gid)) = owner {
            vm.set_owner(&dir, uid, gid)?;
        }
    }
    Ok(())
}

/// Copies the host overlay's `trusted.overlay.opaque` of every directory beneath `upper`
/// to `user.overlay.opaque`, the name the guest's (`userxattr`) overlay reads.
fn mark_opaque_for_the_guest(upper: &crate::fs::Tree) -> anyhow::Result<()> {
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        if let Some(value) = upper.dir_xattr(&dir, "trusted.overlay.opaque")? {
            upper.set_dir_xattr(&dir, "user.overlay.opaque", &value)?;
        }
        pending.extend(upper.subdirs(&dir)?.into_iter().map(|name| dir.join(name)));
    }
    Ok(())
}

/// Drops a non-persistent overlay's layers (the guest's; removed without following
/// anything in them).
pub fn remove_scratch_layers(files: &Path) -> anyhow::Result<()> {
    let Ok(vm) = crate::fs::Tree::open(files) else { return Ok(()) };
    vm.remove(Path::new(SCRATCH_LAYERS))
        .with_context(|| format!("cannot remove {SCRATCH_LAYERS} of {}", files.display()))
}

/// Makes sure the guest's trees exist on the VM's files disk (mounted on `files`): its
/// `etc/` (seeded from the host's at the first start) and `var/` are the guest's after
/// that, so only what is missing is added beneath them; each volume gets its directory.
pub fn ensure_trees(files: &Path, config: &VmConfig) -> anyhow::Result<()> {
    // An image's VM has its image's /etc: nothing of the host's.
    if crate::image::packages::on_host_usr(config) && std::fs::symlink_metadata(files.join("etc")).is_err() {
        crate::state::seed::seed_etc(files, Path::new("/etc"))?;
    }
    // A guest that filled its disk and removed part of the skeleton still boots.
    if let Err(error) = crate::state::seed::repair_var(files) {
        eprintln!("warning: cannot add what is missing beneath the VM's /var: {error:#}");
    }
    remove_scratch_layers(files)?;
    let tree = crate::fs::Tree::open(files)?;
    let as_root = RunAs::this_process() == RunAs::Root;
    for volume in &config.volumes {
        let dir = Path::new("volumes").join(&volume.name);
        if tree.metadata(&dir)?.is_none() {
            tree.create_dir_all(&dir, 0o755, None)?;
        }
        // Under a user the volumes stay theirs (`GuestIds::Owner`).
        if as_root {
            shift_volume_ids(&files.join(&dir))?;
        }
    }
    Ok(())
}

/// Makes sure the directories a launch writes into, beside the VM's files disk, exist.
pub fn ensure_dirs(paths: &Paths, config: &VmConfig) -> anyhow::Result<()> {
    let vm_dir = paths.vm_dir(&config.name);
    // Private, also for VMs made before state was: `vm.toml` holds [env].
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&vm_dir, std::fs::Permissions::from_mode(0o700))?;
    let record = paths.vm_config(&config.name);
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", record.display()))?;
    std::fs::create_dir_all(vm_dir.join("log"))
        .with_context(|| format!("cannot create {}", vm_dir.join("log").display()))?;
    crate::state::paths::ensure_root(&paths.run_dir)?;
    // Its owner's alone: the project is bound there, past any permission of its parents
    // (the overlays mounted there are nosuid and nodev besides).
    let run_dir = paths.vm_run_dir(&config.name);
    crate::state::paths::own_dir(&run_dir, 0o700)?;
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::AddressPool;
    use crate::config::vm::Project;

    fn config(mount: MountMode, persist: bool) -> VmConfig {
        VmConfig {
            name: "web".parse().unwrap(),
            created_at: 0,
            hypervisor: crate::config::vm::Hypervisor::Qemu,
            cpus: 1,
            memory_mib: 512,
            disk_mib: Some(4096),
            root: RootModel::Host,
            ephemeral_system: false,
            kernel: None,
            offline: false,
            host_access: false,
            auto_ports: None,
            auto_ports_ignore: vec![],
            env: Default::default(),
            project: Some(Project { path: "/src/web".into(), mount, persist }),
            network: AddressPool::new("10.200.0.0/16".parse().unwrap(), 24).unwrap().vm(0).unwrap(),
            ports: vec![],
            volumes: vec!["data:/data".parse().unwrap()],
            packages: vec![],
            processes: vec![],
        }
    }

    /// In overlay mode the guest mounts the overlay: the project comes read-only, its
    /// layer share (upper and work) beside it keeps only the overlay's attributes, and
    /// nothing is mounted on the host.
    #[test]
    fn overlay_project_is_merged_in_the_guest_over_a_layer_share() {
        let (shares, overlays, guest) = plan_shares(
            &config(MountMode::Overlay, false),
            Path::new("/state/web"),
            Path::new("/run/mvm/web"),
            (1000, 100),
            RunAs::Root,
        );
        let tags: Vec<&str> = shares.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(&tags[..3], ["usr", "etc", "var"]);
        assert!(tags.ends_with(&["project-layer", "project", "vol-data"]), "{tags:?}");
        assert!(overlays.is_empty());
        let project = shares.iter().find(|s| s.tag == "project").unwrap();
        assert_eq!((project.dir.as_path(), project.read_only), (Path::new("/run/mvm/web/lower"), true));
        assert_eq!(project.socket, Path::new("/run/mvm/web/fs-project.sock"));
        let layer = shares.iter().find(|s| s.tag == PROJECT_LAYER).unwrap();
        assert_eq!((layer.dir.as_path(), layer.read_only), (Path::new("/state/web/scratch"), false));
        assert!(layer.overlay_layer && !project.overlay_layer);
        assert_eq!(
            guest.mounts[0],
            GuestMount {
                tag: "project".into(),
                path: "/src/web".into(),
                read_only: false,
                layer: Some(PROJECT_LAYER.into())
            }
        );
        assert_eq!(guest.mounts[0].share_path(), "/run/mvm/shares/project");
        assert_eq!(guest.mounts[1].path, "/data");
        assert!(shares.iter().find(|s| s.tag == "usr").unwrap().read_only);
        // The guest's writes carry no host privilege: the project and its layer stay its
        // owner's, volumes get shifted ids.
        assert_eq!(project.ids, GuestIds::Squash { uid: 1000, gid: 100 });
        assert_eq!(layer.ids, GuestIds::Squash { uid: 1000, gid: 100 });
        let volume = shares.iter().find(|s| s.tag == "vol-data").unwrap();
        assert_eq!(volume.ids, GuestIds::Shift { base: VOLUME_ID_BASE });
        assert_eq!(shares.iter().find(|s| s.tag == "etc").unwrap().ids, GuestIds::AsIs);
    }

    /// A member's VM: the project and read-only host trees keep the member's own ids; the
    /// VM's own trees get the member's subordinate ids when the member has them, else the
    /// member's id alone; and cloud-hypervisor's argv serves each share from the VM's
    /// runtime dir, as for root (it runs as the member, who needs /dev/kvm).
    #[test]
    fn a_members_launch_maps_the_vms_own_trees_onto_subordinate_ids() {
        let sub = SubIds { uid: 100000, gid: 200000 };
        let plan = |sub| {
            plan_shares(
                &config(MountMode::Rw, false),
                Path::new("/state/web"),
                Path::new("/run/mvm/web"),
                (1000, 100),
                RunAs::User { uid: 1000, gid: 100, sub },
            )
            .0
        };
        let ids = |shares: &[Share]| -> Vec<(String, GuestIds)> {
            shares.iter().map(|share| (share.tag.clone(), share.ids)).collect()
        };
        let root_shown = GuestIds::Owner { shown_as: (0, 0) };
        let project = GuestIds::Owner { shown_as: (1000, 100) };
        let mut expected = vec![
            ("usr".to_string(), root_shown),
            ("etc".to_string(), GuestIds::Subordinate),
            ("var".to_string(), GuestIds::Subordinate),
        ];
        if Path::new(HOST_DPKG_DATABASE).is_dir() {
            expected.push(("dpkg".to_string(), root_shown));
        }
        if Path::new("/nix/store").is_dir() {
            expected.push(("nix".to_string(), root_shown));
        }
        expected.extend([("project".to_string(), project), ("vol-data".to_string(), GuestIds::Subordinate)]);
        let shares = plan(Some(sub));
        assert_eq!(ids(&shares), expected);
        let without: Vec<(String, GuestIds)> = expected
            .iter()
            .map(|(tag, ids)| (tag.clone(), if *ids == GuestIds::Subordinate { root_shown } else { *ids }))
            .collect();
        assert_eq!(ids(&plan(None)), without, "no ranges: the member's id alone");

        let spec = LaunchSpec {
            shares: shares
                .iter()
                .filter(|share| ["etc", "project"].contains(&share.tag.as_str()))
                .cloned()
                .collect(),
            control_socket: "/run/mvm/web/api.sock".into(),
            ..crate::vmm::qemu::tests::spec()
        };
        let argv = crate::vmm::cloud_hypervisor::args(&spec);
        let fs = argv.iter().position(|arg| arg == "--fs").unwrap();
        assert_eq!(
            argv[fs..fs + 3],
            [
                "--fs",
                "tag=etc,socket=/run/mvm/web/fs-etc.sock",
                "tag=project,socket=/run/mvm/web/fs-project.sock"
            ]
        );
        assert_eq!(argv[..2], ["--api-socket", "path=/run/mvm/web/api.sock"]);
        let etc = crate::vmm::virtiofsd::args(&shares[shares.iter().position(|s| s.tag == "etc").unwrap()]);
        assert_eq!(etc[..2], ["--socket-path=/run/mvm/web/fs-etc.sock", "--shared-dir=."]);
    }

    #[test]
    fn persistent_overlay_keeps_layers_in_state_and_rw_ro_share_directly() {
        let dirs = |persist| {
            let overlay = project_overlay(
                &config(MountMode::Overlay, persist),
                Path::new("/state/web"),
                Path::new("/run/mvm/web"),
                RunAs::Root,
            )
            .unwrap();
            (overlay.upper, overlay.work)
        };
        assert_eq!(dirs(true), ("/state/web/layer/upper".into(), "/state/web/layer/work".into()));
        assert_eq!(dirs(false), ("/state/web/scratch/upper".into(), "/state/web/scratch/work".into()));
        for (mode, read_only) in [(MountMode::Rw, false), (MountMode::Ro, true)] {
            let (shares, overlays, guest) = plan_shares(
                &config(mode, false),
                Path::new("/state/web"),
                Path::new("/run/mvm/web"),
                (0, 0),
                RunAs::Root,
            );
            assert!(overlays.is_empty());
            assert!(shares.iter().all(|share| share.tag != PROJECT_LAYER));
            let project = shares.iter().find(|s| s.tag == "project").unwrap();
            assert_eq!(
                (project.dir.as_path(), project.read_only),
                (Path::new("/run/mvm/web/lower"), read_only)
            );
            assert_eq!(guest.mounts[0].read_only, read_only);
            assert_eq!(guest.mounts[0].layer, None);
        }
    }

    /// A persistent upper layer where the host's overlay kept it moves into the layer
    /// share once, its opaque directories marked for the guest's overlay; then the layer
    /// is its project owner's.
    #[test]
    fn an_old_upper_layer_moves_into_the_layer_share() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (trusted.* attributes, chown)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let vm_dir = dir.path();
        std::fs::create_dir_all(vm_dir.join("upper/replaced")).unwrap();
        std::fs::create_dir_all(vm_dir.join("work/work")).unwrap();
        std::fs::write(vm_dir.join("upper/replaced/new"), "x").unwrap();
        let upper = crate::fs::Tree::open(&vm_dir.join("upper")).unwrap();
        upper.set_dir_xattr(Path::new("replaced"), "trusted.overlay.opaque", b"y").unwrap();
        prepare_project_layer(&config(MountMode::Overlay, true), vm_dir, (65534, 65534)).unwrap();
        assert!(!vm_dir.join("upper").exists() && !vm_dir.join("work").exists());
        let layer = crate::fs::Tree::open(&vm_dir.join("layer/upper")).unwrap();
        assert_eq!(
            layer.dir_xattr(Path::new("replaced"), "user.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(std::fs::read_to_string(vm_dir.join("layer/upper/replaced/new")).unwrap(), "x");
        use std::os::unix::fs::MetadataExt;
        for made in ["layer", "layer/upper", "layer/work"] {
            assert_eq!(std::fs::metadata(vm_dir.join(made)).unwrap().uid(), 65534, "{made}");
        }
        // Once: a second start leaves it as it is.
        prepare_project_layer(&config(MountMode::Overlay, true), vm_dir, (65534, 65534)).unwrap();
        assert!(vm_dir.join("layer/upper/replaced/new").exists());
    }

    /// A volume written before ids were shifted is shifted once, beneath itself only.
    #[test]
    fn volume_owners_are_shifted_once_and_never_through_a_symlink() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP volume_owners_are_shifted_once: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("data");
        std::fs::create_dir_all(volume.join("pg")).unwrap();
        std::fs::write(volume.join("pg/PG_VERSION"), "15").unwrap();
        std::os::unix::fs::chown(volume.join("pg"), Some(104), Some(110)).unwrap();
        let outside = dir.path().join("host-file");
        std::fs::write(&outside, "host").unwrap();
        std::os::unix::fs::symlink(&outside, volume.join("link")).unwrap();
        shift_volume_ids(&volume).unwrap();
        let owner = |path: &Path| {
            let meta = std::fs::symlink_metadata(path).unwrap();
            (meta.uid(), meta.gid())
        };
        assert_eq!(owner(&volume), (VOLUME_ID_BASE, VOLUME_ID_BASE));
        assert_eq!(owner(&volume.join("pg")), (VOLUME_ID_BASE + 104, VOLUME_ID_BASE + 110));
        assert_eq!(owner(&volume.join("pg/PG_VERSION")), (VOLUME_ID_BASE, VOLUME_ID_BASE));
        assert_eq!(owner(&volume.join("link")), (VOLUME_ID_BASE, VOLUME_ID_BASE));
        assert_eq!(owner(&outside), (0, 0), "shifted through the symlink");
        shift_volume_ids(&volume).unwrap();
        assert_eq!(owner(&volume.join("pg")), (VOLUME_ID_BASE + 104, VOLUME_ID_BASE + 110));
    }

    #[test]
    fn accel_falls_back_to_tcg_on_pvm_with_a_warning() {
        let host = HostConfig::default();
        let (accel, warning) = choose_accel(&KvmSupport::PvmOnly, &host);
        assert_eq!(accel, Accel::Tcg);
        assert!(warning.unwrap().contains("kvm_pvm"));
        let hardware = KvmSupport::Hardware { module: "kvm_intel".into() };
        assert_eq!(choose_accel(&hardware, &host), (Accel::Kvm, None));
        let forced = HostConfig::parse("[defaults]\naccel = \"tcg\"").unwrap();
        assert_eq!(choose_accel(&hardware, &forced).0, Accel::Tcg);
    }
}
