//! The guest init: mvm running as PID 1 inside the VM.
//!
//! Mount the kernel file systems; load the modules the initramfs carries, in order;
//! assemble the root (the VM's system disk, with the host's `/usr` and package database
//! as read-only overlay lowers beneath it and the VM's own `/etc` and `/var` shares; or
//! a whole tree), then switch into it; mount the
//! project and volumes at their paths; configure `eth0`, hostname and DNS; start the
//! agent; reap children; power off cleanly when asked. PID 1 must never exit, so every
//! failure ends in a message on the console and a power-off.

use std::ffi::CString;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};

use crate::contract::config::{
    GuestConfig, GuestMount, GuestNetwork, GuestRoot, IMAGE_DISK_SERIAL, SHARES_MOUNT, SYSTEM_DISK_SERIAL,
};
use crate::contract::{GUEST_CONFIG, MODULE_LIST, READY_MARKER, REBOOT_MARKER};
use crate::guest::{agent, processes, reaper};
use crate::net::netlink::Netlink;

/// Where the new root is assembled before the switch.
const NEW_ROOT: &str = "/newroot";
/// Where the system disk is mounted (in `/run`, which moves into the new root).
const SYSTEM_MOUNT: &str = "/run/mvm/system";
/// Where the read-only base shares are mounted beneath the system layer.
const BASE_MOUNT: &str = "/run/mvm/base";
/// Where an image's VM mounts its `var` share, whose `log/mvm` is its `/var/log/mvm`.
const HOST_VAR_MOUNT: &str = "/run/mvm/host-var";

/// Runs the guest; never returns.
pub fn main() -> ! {
    let started = Instant::now();
    let listener = match boot() {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("mvm-init: boot failed: {error:#}");
            power_off();
        }
    };
    eprintln!("{READY_MARKER} after {} ms in init", started.elapsed().as_millis());
    std::thread::spawn(serve_initctl);
    std::thread::spawn(move || agent::serve(listener, power_off));
    reaper::reap_forever()
}

/// Syncs and powers the VM off.
pub fn power_off() -> ! {
    processes::stop_all(Duration::from_secs(5));
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Unreachable unless the kernel refused; idle rather than exit (which would panic).
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Serves `/run/initctl`, the SysV init FIFO that `poweroff`, `halt` and `reboot` (as
/// systemctl without systemd) write their request to: 384-byte records with the magic
/// 0x03091969, command 1 (change runlevel) and the runlevel.
fn serve_initctl() {
    const FIFO: &str = "/run/initctl";
    const MAGIC: i32 = 0x0309_1969;
    if nix::unistd::mkfifo(FIFO, nix::sys::stat::Mode::from_bits_truncate(0o600)).is_err() {
        return;
    }
    loop {
        let Ok(mut fifo) = File::open(FIFO) else { return };
        let mut record = [0u8; 384];
        while std::io::Read::read_exact(&mut fifo, &mut record).is_ok() {
            let field = |at: usize| i32::from_ne_bytes(record[at..at + 4].try_into().expect("4 bytes"));
            if field(0) != MAGIC || field(4) != 1 {
                continue;
            }
            match u8::try_from(field(8)).map(char::from) {
                Ok('0') => power_off(),
                Ok('6') => {
                    // The shares' virtiofsd end with this boot, so a reboot is a power-off
                    // that the supervisor, seeing this line, turns into a fresh start.
                    eprintln!("{REBOOT_MARKER}");
                    power_off();
                }
                _ => {}
            }
        }
    }
}

/// Brings the guest up; returns the agent's listening socket, bound before any declared
/// process started.
fn boot() -> anyhow::Result<std::os::fd::OwnedFd> {
    mount_kernel_filesystems()?;
    load_modules()?;
    load_file_event_module();
    let config: GuestConfig = serde_json::from_slice(
        &std::fs::read(Path::new("/").join(GUEST_CONFIG)).context("cannot read the guest config")?,
    )
    .context("invalid guest config")?;
    assemble_root(&config)?;
    switch_root()?;
    for share in &config.mounts {
        mount_share(share, Path::new(&share.share_path()))?;
        if let Some(layer) = &share.layer {
            mount_project_overlay(share, layer)?;
        }
    }
    nix::unistd::sethostname(&config.hostname).context("cannot set the hostname")?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(network) = GuestNetwork::from_cmdline(&cmdline) {
        configure_network(&network)?;
    }
    let listener = agent::listen_on_port()?;
    processes::start_all(config.processes);
    Ok(listener)
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("cannot create {target}"))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("cannot mount {fstype} on {target}"))
}

fn mount_kernel_filesystems() -> anyhow::Result<()> {
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", quiet, None)?;
    mount_fs("sysfs", "/sys", "sysfs", quiet, None)?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mount_fs("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    mount_fs("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    Ok(())
}

fn load_modules() -> anyhow::Result<()> {
    let list = std::fs::read_to_string(Path::new("/").join(MODULE_LIST)).unwrap_or_default();
    for path in list.lines().filter(|line| !line.is_empty()) {
        let file = File::open(path).with_context(|| format!("cannot open module {path}"))?;
        let compressed = path.ends_with(".xz") || path.ends_with(".zst") || path.ends_with(".gz");
        // MODULE_INIT_COMPRESSED_FILE: the kernel decompresses the file itself.
        let flags = if compressed { ModuleInitFlags::from_bits_retain(4) } else { ModuleInitFlags::empty() };
        match finit_module(&file, &CString::default(), flags) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(errno) => bail!("cannot load module {path}: {errno}"),
        }
    }
    Ok(())
}

/// Loads the file-event module when the initramfs carries one. Without it the guest runs
/// on, with no file events for host changes: said on the console, and to the host when it
/// asks for them.
fn load_file_event_module() {
    let path = Path::new("/").join(crate::contract::NOTIFY_MODULE);
    let Ok(file) = File::open(&path) else { return };
    match finit_module(&file, &CString::default(), ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(errno) => eprintln!("mvm-init: no file events: cannot load the file-event module: {errno}"),
    }
}

fn mount_share(share: &GuestMount, target: &Path) -> anyhow::Result<()> {
    let flags = if share.read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    std::fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    mount(Some(share.tag.as_str()), target, Some("virtiofs"), flags, None::<&str>)
        .with_context(|| format!("cannot mount share {} on {}", share.tag, target.display()))
}

fn share(tag: &str, read_only: bool) -> GuestMount {
    GuestMount { tag: tag.to_string(), path: String::new(), read_only, layer: None }
}

fn assemble_root(config: &GuestConfig) -> anyhow::Result<()> {
    let root = Path::new(NEW_ROOT);
    match config.root {
        GuestRoot::Dir => mount_share(&share("root", false), root)?,
        GuestRoot::Image => {
            let system = Path::new(SYSTEM_MOUNT);
            mount_system_disk(system)?;
            let image = Path::new(BASE_MOUNT).join("image");
            mount_disk(IMAGE_DISK_SERIAL, &image, MsFlags::MS_RDONLY, "noload")?;
            mount_layer(&image, &system.join("image"), root)?;
            // The processes' logs and states go where the host reads them.
            let host_var = Path::new(HOST_VAR_MOUNT);
            mount_share(&share("var", false), host_var)?;
            let logs = host_var.join("log/mvm");
            make_dir(&logs, 0o755)?;
            make_dir(&root.join("var/log/mvm"), 0o755)?;
            mount(Some(&logs), &root.join("var/log/mvm"), None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .context("cannot bind the VM's log directory")?;
        }
        GuestRoot::Host { nix, dpkg } => {
            let system = Path::new(SYSTEM_MOUNT);
            mount_system_disk(system)?;
            // `/` itself is the system disk's `root/`: /opt, /srv, /root are the VM's.
            let tree = system.join("root");
            make_dir(&tree, 0o755)?;
            make_dir(root, 0o755)?;
            mount(Some(&tree), root, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .context("cannot bind the system disk's root")?;
            let base = Path::new(BASE_MOUNT);
            mount_share(&share("usr", true), &base.join("usr"))?;
            mount_layer(&base.join("usr"), &system.join("usr"), &root.join("usr"))?;
            for (link, target) in
                [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")]
            {
                if root.join(target).exists() && std::fs::symlink_metadata(root.join(link)).is_err() {
                    std::os::unix::fs::symlink(target, root.join(link))?;
                }
            }
            mount_share(&share("etc", false), &root.join("etc"))?;
            mount_share(&share("var", false), &root.join("var"))?;
            if dpkg {
                mount_share(&share("dpkg", true), &base.join("dpkg"))?;
                mount_layer(&base.join("dpkg"), &system.join("dpkg"), &root.join("var/lib/dpkg"))?;
                own_dpkg_locks(&system.join("dpkg/upper"), &root.join("var/lib/dpkg"))?;
            }
            if nix {
                mount_share(&share("nix", true), &root.join("nix/store"))?;
            }
            std::fs::create_dir_all(root.join("var/home"))?;
            std::fs::create_dir_all(root.join("home"))?;
            mount(
                Some(&root.join("var/home")),
                &root.join("home"),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .context("cannot bind /var/home on /home")?;
            make_dir(&root.join("root"), 0o700)?;
            for dir in ["opt", "srv", "mnt", "media"] {
                make_dir(&root.join(dir), 0o755)?;
            }
        }
    }
    mount_fs(
        "tmpfs",
        &format!("{NEW_ROOT}/tmp"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    for dir in ["proc", "sys", "dev", "run"] {
        let target = root.join(dir);
        std::fs::create_dir_all(&target)?;
        mount(Some(&Path::new("/").join(dir)), &target, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .with_context(|| format!("cannot move /{dir} into the new root"))?;
    }
    Ok(())
}

/// Makes directory `path` with `mode` unless it exists.
fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Mounts the VM's system disk (ext4) on `target`. The host made it sparse: its inode
/// tables read as zeros already, and what the guest frees goes back (`discard`).
fn mount_system_disk(target: &Path) -> anyhow::Result<()> {
    mount_disk(SYSTEM_DISK_SERIAL, target, MsFlags::MS_NOATIME, "noinit_itable,discard")
}

/// Mounts the ext4 disk whose serial is `serial` on `target`.
fn mount_disk(serial: &str, target: &Path, flags: MsFlags, options: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let device = loop {
        if let Some(device) = block_device_with_serial(serial) {
            break device;
        }
        if Instant::now() > deadline {
            bail!("no disk with serial {serial} appeared");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    mount(Some(&device), target, Some("ext4"), flags, Some(options))
        .with_context(|| format!("cannot mount disk {serial} ({}) on {}", device.display(), target.display()))
}

/// `/dev/NAME` of the block device whose serial is `serial`.
fn block_device_with_serial(serial: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/sys/block").ok()?.filter_map(Result::ok).find_map(|entry| {
        let found = std::fs::read_to_string(entry.path().join("serial")).ok()?;
        (found.trim() == serial).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

/// Mounts the overlay of `share` (mounted at its share path, read-only) under the layer
/// share `layer`, at the share's path. The guest's kernel owns it, so a host change to
/// the lower share is the guest's to see (the file-event module drops what both cached);
/// its attributes are `user.overlay.*`, the only ones the layer's virtiofsd stores.
fn mount_project_overlay(share: &GuestMount, layer: &str) -> anyhow::Result<()> {
    let layer_mount =
        GuestMount { tag: layer.to_string(), path: String::new(), read_only: false, layer: None };
    let layer_dir = Path::new(SHARES_MOUNT).join(layer);
    mount_share(&layer_mount, &layer_dir)?;
    let (upper, work) = (layer_dir.join("upper"), layer_dir.join("work"));
    for dir in [&upper, &work] {
        make_dir(dir, 0o755)?;
    }
    let target = Path::new(&share.path);
    std::fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        share.share_path(),
        upper.display(),
        work.display()
    );
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .with_context(|| format!("cannot mount the project's overlay on {}", target.display()))
}

/// Mounts at `target` an overlay of `lower` (read-only) under the writable layer kept in
/// `layer` (`upper/`, `work/`, made when missing).
fn mount_layer(lower: &Path, layer: &Path, target: &Path) -> anyhow::Result<()> {
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for dir in [&upper, &work, &target.to_path_buf()] {
        make_dir(dir, 0o755)?;
    }
    let options =
        format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .with_context(|| format!("cannot mount the system layer on {}", target.display()))
}

/// dpkg's lock files, beneath its database.
const DPKG_LOCKS: [&str; 3] = ["lock", "lock-frontend", "triggers/Lock"];

/// Gives the VM lock files of its own in its package database (`database`, whose
/// writable layer is `upper`). The host's are empty and readable by root alone, and a
/// user's virtiofsd is not root: the overlay could not copy them up to open them for
/// writing. Replacing them needs no read.
fn own_dpkg_locks(upper: &Path, database: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    for lock in DPKG_LOCKS {
        let path = database.join(lock);
        if std::fs::symlink_metadata(upper.join(lock)).is_ok() || std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        std::fs::remove_file(&path).with_context(|| format!("cannot replace {}", path.display()))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(())
}

fn switch_root() -> anyhow::Result<()> {
    free_initramfs();
    std::env::set_current_dir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("cannot move the new root onto /")?;
    nix::unistd::chroot(".").context("cannot chroot into the new root")?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Deletes the initramfs's files (the rootfs keeps them in RAM otherwise), as
/// `switch_root` does: everything on the root's device but the new root's mount point. The
/// running init and its libraries stay mapped.
fn free_initramfs() {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::metadata("/") else { return };
    let Ok(entries) = std::fs::read_dir("/") else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if path == Path::new(NEW_ROOT) || meta.dev() != root.dev() {
            continue;
        }
        let _ = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

fn configure_network(network: &GuestNetwork) -> anyhow::Result<()> {
    let netlink = Netlink::open()?;
    if let Some(lo) = netlink.link("lo")? {
        netlink.set_up(lo.index)?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let eth0 = loop {
        if let Some(link) = netlink.link("eth0")? {
            break link;
        }
        if Instant::now() > deadline {
            bail!("no eth0 appeared");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    netlink.set_address(eth0.index, network.address, network.prefix)?;
    netlink.set_up(eth0.index)?;
    netlink.set_default_route(network.gateway)?;
    if !network.dns.is_empty() {
        let resolv: String = network.dns.iter().map(|dns| format!("nameserver {dns}\n")).collect();
        // A host's resolv.conf is often a symlink into /run, which the guest's /run lacks.
        let _ = std::fs::remove_file("/etc/resolv.conf");
        std::fs::write("/etc/resolv.conf", resolv).context("cannot write /etc/resolv.conf")?;
    }
    Ok(())
}
