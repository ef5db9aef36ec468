//! Host set-up (`sudo mvm setup`), the one time root is needed. Afterwards the members of mvm's group
//! run their own VMs as themselves (`privileged`): setup makes the group, gives it the
//! state and runtime roots (sticky, so no member removes another's entries), installs
//! mvm and its setuid helper, writes a default host config, and claims the network index
//! of every VM made before claims existed. Every step looks before it acts, so running it
//! again changes nothing; `--undo` takes the group's access and the helper away again
//! (VMs, config and the installed `mvm` stay).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::error::UserError;
use crate::host::subids::{SubIds, SUBGID_FILE, SUBUID_FILE};
use crate::state::Paths;

/// Where setup puts things; the real host's, or a test's.
#[derive(Debug, Clone)]
pub struct Target {
    pub paths: Paths,
    /// Where `mvm` is installed.
    pub binary: PathBuf,
    /// Where the setuid helper is installed.
    pub helper: PathBuf,
    /// The tmpfiles.d entry that makes the runtime root again at boot.
    pub tmpfiles: PathBuf,
    /// `/etc/subuid` and `/etc/subgid` (`host::subids`).
    pub subordinate_ids: [PathBuf; 2],
    /// The KVM device cloud-hypervisor needs.
    pub kvm: PathBuf,
}

impl Target {
    /// The host's own places, for the roots in `paths`.
    pub fn host(paths: &Paths) -> Target {
        Target {
            paths: paths.clone(),
            binary: "/usr/local/bin/mvm".into(),
            helper: crate::privileged::HELPER_PATH.into(),
            tmpfiles: "/etc/tmpfiles.d/mvm.conf".into(),
            subordinate_ids: [SUBUID_FILE.into(), SUBGID_FILE.into()],
            kvm: "/dev/kvm".into(),
        }
    }
}

/// The mode of the shared roots: the group may make entries, no one may remove another's.
const SHARED_DIR_MODE: u32 = 0o1770;
/// The helper's mode: setuid root, runnable by the group only.
const HELPER_MODE: u32 = 0o4750;

/// What setup would still change on this host (for `doctor`); empty once it ran.
pub fn pending(target: &Target, group: &str) -> Vec<String> {
    let mut pending = Vec::new();
    let Some(gid) = group_id(group) else {
        return vec![format!("group '{group}' does not exist")];
    };
    for dir in shared_dirs(&target.paths) {
        if !has_owner_mode(&dir, 0, gid, SHARED_DIR_MODE, true) {
            pending.push(format!("{} is not root:{group} {SHARED_DIR_MODE:o}", dir.display()));
        }
    }
    if !has_owner_mode(&target.helper, 0, gid, HELPER_MODE, false) {
        pending.push(format!("{} is not installed setuid for group '{group}'", target.helper.display()));
    }
    pending
}

/// The directories group members create entries in.
fn shared_dirs(paths: &Paths) -> Vec<PathBuf> {
    let state = &paths.state_dir;
    vec![
        state.clone(),
        state.join(".cache"),
        state.join(crate::state::claims::CLAIMS_DIR),
        state.join(".kept-volumes"),
        paths.run_dir.clone(),
    ]
}

fn has_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32, dir: bool) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| {
        meta.uid() == uid && meta.gid() == gid && meta.mode() & 0o7777 == mode && meta.is_dir() == dir
    })
}

fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name).ok().flatten().map(|group| group.gid.as_raw())
}

/// Prepares the host; returns what it changed.
pub fn setup(target: &Target, group: &str) -> anyhow::Result<Vec<String>> {
    let mut changes = Vec::new();
    let gid = match group_id(group) {
        Some(gid) => gid,
        None => {
            run_tool(Command::new("groupadd").args(["--system", group]))?;
            changes.push(format!("made group '{group}'"));
            group_id(group).with_context(|| format!("group '{group}' is missing after groupadd"))?
        }
    };
    changes.extend(share_roots(&target.paths, group, gid)?);
    let boot_entry = format!("d {} {SHARED_DIR_MODE:o} root {group} -\n", target.paths.run_dir.display());
    if std::fs::read_to_string(&target.tmpfiles).ok().as_deref() != Some(boot_entry.as_str()) {
        install_file(&target.tmpfiles, boot_entry.as_bytes(), 0o644, 0)?;
        changes.push(format!(
            "{} makes {} at boot",
            target.tmpfiles.display(),
            target.paths.run_dir.display()
        ));
    }
    if !target.paths.config_file.exists() {
        install_file(&target.paths.config_file, DEFAULT_CONFIG.as_bytes(), 0o644, 0)?;
        changes.push(format!("wrote the default host config {}", target.paths.config_file.display()));
    }
    let me = std::env::current_exe().context("cannot find the mvm binary")?;
    let binary = std::fs::read(&me)?;
    if std::fs::read(&target.binary).ok().as_deref() != Some(binary.as_slice()) {
        install_file(&target.binary, &binary, 0o755, 0)?;
        changes.push(format!("installed {}", target.binary.display()));
    }
    let helper = me.with_file_name("mvm-helper");
    if !helper.is_file() {
        bail!("{} is missing: build it with `cargo build` beside mvm", helper.display());
    }
    let installed = std::fs::read(&target.helper).ok();
    if installed.as_deref() != Some(std::fs::read(&helper)?.as_slice())
        || !has_owner_mode(&target.helper, 0, gid, HELPER_MODE, false)
    {
        install_file(&target.helper, &std::fs::read(&helper)?, HELPER_MODE, gid)?;
        changes.push(format!("installed {} (setuid root, group '{group}' only)", target.helper.display()));
    }
    changes.extend(claim_old_vms(&target.paths)?);
    changes.extend(build_file_event_module(&target.paths));
    let unprivileged = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    if unprivileged.ok().and_then(|text| text.trim().parse::<u32>().ok()).is_some_and(|start| start <= 53) {
        changes.push(
            "warning: any user may bind port 53 (net.ipv4.ip_unprivileged_port_start), so another user could \
             answer the guests' DNS: `sysctl -w net.ipv4.ip_unprivileged_port_start=1024`"
                .to_string(),
        );
    }
    Ok(changes)
}

/// What each member of `group` still lacks for VMs as capable as root's: subordinate ids
/// (else every guest user of theirs writes as them) and access to KVM (which
/// cloud-hypervisor needs; QEMU falls back to emulation).
pub fn member_notes(target: &Target, group: &str) -> Vec<String> {
    let Some(entry) = nix::unistd::Group::from_name(group).ok().flatten() else { return Vec::new() };
    let [subuid, subgid] = &target.subordinate_ids;
    let kvm_group = std::fs::metadata(&target.kvm).ok().map(|meta| meta.gid());
    let mut notes = Vec::new();
    for name in &entry.mem {
        let Some(user) = nix::unistd::User::from_name(name).ok().flatten() else { continue };
        if SubIds::from_files(subuid, subgid, name, user.uid.as_raw()).is_none() {
            notes.push(format!(
                "note: {name} has no subordinate ids, so every user in their VMs' guests writes as {name} \
                 (PostgreSQL cannot own its data): {}",
                crate::host::subids::how_to_add(name)
            ));
        }
        if let Some(kvm_gid) = kvm_group.filter(|gid| *gid != 0) {
            let groups = nix::unistd::getgrouplist(
                &std::ffi::CString::new(name.as_str()).unwrap_or_default(),
                user.gid,
            );
            if !groups.is_ok_and(|groups| groups.iter().any(|gid| gid.as_raw() == kvm_gid)) {
                let kvm_name = nix::unistd::Group::from_gid(kvm_gid.into())
                    .ok()
                    .flatten()
                    .map_or(kvm_gid.to_string(), |g| g.name);
                notes.push(format!(
                    "note: {name} cannot open {}, which cloud-hypervisor needs (QEMU emulates without it): \
                     sudo usermod -aG {kvm_name} {name}",
                    target.kvm.display()
                ));
            }
        }
    }
    notes
}

/// Builds the guests' file-event module for the kernel they boot. Without the kernel's
/// headers it is said, not failed: VMs then run without file events.
fn build_file_event_module(paths: &Paths) -> Option<String> {
    let host = crate::config::host::HostConfig::load(&paths.config_file).unwrap_or_default();
    let kernel = crate::boot::kernel::discover(
        Path::new("/"),
        host.paths.kernel.as_deref(),
        &crate::host::kernel_release(),
    )
    .ok()?;
    let (release, modules_dir) = (kernel.release?, kernel.modules_dir?);
    match crate::boot::notify::ensure_built(paths, &release, &modules_dir) {
        Ok(built) => built,
        Err(error) => Some(format!("no file events in guests: {error:#}")),
    }
}

/// Gives the shared roots (and the create lock) to root and the group; returns what it
/// changed.
fn share_roots(paths: &Paths, group: &str, gid: u32) -> anyhow::Result<Vec<String>> {
    let mut changes = Vec::new();
    for dir in shared_dirs(paths) {
        if !has_owner_mode(&dir, 0, gid, SHARED_DIR_MODE, true) {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            match std::fs::create_dir(&dir) {
                Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(error).with_context(|| format!("cannot create {}", dir.display()))
                }
                _ => {}
            }
            set_owner_mode(&open_roots(&dir, true)?, &dir, gid, SHARED_DIR_MODE)?;
            changes.push(format!("{} is root:{group} {SHARED_DIR_MODE:o}", dir.display()));
        }
    }
    // Root's alone, made now: a member who made it first would stop every image build.
    let images = crate::image::store_dir(paths);
    let missing = std::fs::symlink_metadata(&images).is_err();
    crate::state::paths::own_dir(&images, 0o755)?;
    if missing {
        changes.push(format!("{} is root's", images.display()));
    }
    let create_lock = paths.create_lock();
    if !has_owner_mode(&create_lock, 0, gid, 0o660, false) {
        set_owner_mode(&open_roots(&create_lock, false)?, &create_lock, gid, 0o660)?;
        changes.push(format!("{} is root:{group} 660", create_lock.display()));
    }
    Ok(changes)
}

/// Reverses [`setup`]; returns what it changed.
pub fn undo(target: &Target, group: &str) -> anyhow::Result<Vec<String>> {
    let mut changes = Vec::new();
    for file in [&target.helper, &target.tmpfiles] {
        if std::fs::symlink_metadata(file).is_ok() {
            std::fs::remove_file(file).with_context(|| format!("cannot remove {}", file.display()))?;
            changes.push(format!("removed {}", file.display()));
        }
    }
    if let Some(dir) = target.helper.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    for dir in shared_dirs(&target.paths) {
        if std::fs::symlink_metadata(&dir).is_ok_and(|meta| meta.gid() != 0 || meta.mode() & 0o7777 != 0o755)
        {
            set_owner_mode(&open_roots(&dir, true)?, &dir, 0, 0o755)?;
            changes.push(format!("{} is root's again", dir.display()));
        }
    }
    if group_id(group).is_some() {
        run_tool(Command::new("groupdel").arg(group))?;
        changes.push(format!("removed group '{group}'"));
    }
    Ok(changes)
}

/// Claims the index of every VM that has none (made before claims existed), for the
/// VM's owner.
fn claim_old_vms(paths: &Paths) -> anyhow::Result<Vec<String>> {
    let claimed: Vec<String> =
        crate::state::claims::all(&paths.state_dir).into_iter().map(|(_, name, _)| name).collect();
    let mut changes = Vec::new();
    for entry in crate::state::store::list(paths)? {
        let Ok(config) = entry.config else { continue };
        if claimed.contains(&entry.name) {
            continue;
        }
        let index = config.network.index;
        if crate::state::claims::claim(&paths.state_dir, index, &config.name)? {
            let owner = crate::state::store::owner(paths, &config.name).unwrap_or(0);
            let claim = paths.state_dir.join(crate::state::claims::CLAIMS_DIR).join(index.to_string());
            std::os::unix::fs::chown(&claim, Some(owner), Some(0))?;
            changes.push(format!("claimed index {index} for VM '{}'", config.name));
        }
    }
    Ok(changes)
}

/// Opens one of root's shared entries (a directory, or the create lock, made if missing)
/// never through a symlink, and only if root made it: a member of the group can make
/// entries in the shared roots, and setup must never hand one of theirs (or what a
/// symlink of theirs points at) to the group.
fn open_roots(path: &Path, dir: bool) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if dir {
        options.read(true).custom_flags(flags | nix::libc::O_DIRECTORY);
    } else {
        options.read(true).write(true).create(true).truncate(false).mode(0o600).custom_flags(flags);
    }
    let file = options.open(path).with_context(|| format!("cannot open {} (a symlink?)", path.display()))?;
    let meta = file.metadata()?;
    if meta.uid() != 0 || meta.is_dir() != dir {
        return Err(UserError::conflict(format!(
            "{} was made by uid {}, not by root; remove it and run setup again",
            path.display(),
            meta.uid()
        ))
        .into());
    }
    Ok(file)
}

/// Gives the open `file` (at `path`, for messages) to root and `gid`, with `mode`.
fn set_owner_mode(file: &std::fs::File, path: &Path, gid: u32, mode: u32) -> anyhow::Result<()> {
    // chown first: it clears the setuid bit.
    std::os::unix::fs::fchown(file, Some(0), Some(gid))
        .with_context(|| format!("cannot chown {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Writes `content` to `path` atomically, root:`gid` with `mode` (set before the rename,
/// so the file is never there with other rights).
fn install_file(path: &Path, content: &[u8], mode: u32, gid: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("an installed file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, content)?;
    set_owner_mode(temp.as_file(), temp.path(), gid, mode)?;
    temp.persist(path).with_context(|| format!("cannot install {}", path.display()))?;
    Ok(())
}

fn run_tool(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The host config `setup` writes when there is none: every key at its default.
pub(crate) const DEFAULT_CONFIG: &str = "\
# mvm host config (see `man mvm`). Every key is optional; these are the defaults.

[network]
# pool = \"10.200.0.0/16\"
# subnet_prefix = 24
# uplink = \"eth0\"

[defaults]
# hypervisor = \"auto\"
# cpus = 2
# memory = \"1G\"
# auto_ports = true   # forward every TCP port a guest listens on from 127.0.0.1
";

#[cfg(test)]
mod tests {
    use super::*;

    /// A member of the group can make entries in the state root before setup runs (again):
    /// a symlink there, or a directory of theirs, is never handed to the group.
    #[test]
    fn planted_entries_in_the_shared_roots_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP planted_entries_in_the_shared_roots_are_refused: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let nogroup = group_id("nogroup").unwrap_or(65534);
        let decoy = dir.path().join("etc");
        std::fs::create_dir(&decoy).unwrap();
        std::fs::set_permissions(&decoy, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(&paths.state_dir).unwrap();
        std::os::unix::fs::symlink(&decoy, paths.state_dir.join(".kept-volumes")).unwrap();
        assert!(share_roots(&paths, "nogroup", nogroup).is_err(), "a symlinked root was accepted");
        let meta = std::fs::metadata(&decoy).unwrap();
        assert_eq!((meta.gid(), meta.mode() & 0o7777), (0, 0o755), "the symlink's target was changed");
        std::fs::remove_file(paths.state_dir.join(".kept-volumes")).unwrap();
        std::fs::create_dir_all(paths.state_dir.join(".cache")).unwrap();
        std::os::unix::fs::chown(paths.state_dir.join(".cache"), Some(4242), None).unwrap();
        let error = format!("{:#}", share_roots(&paths, "nogroup", nogroup).unwrap_err());
        assert!(error.contains("made by uid 4242"), "{error}");
        std::fs::remove_dir(paths.state_dir.join(".cache")).unwrap();
        assert!(!share_roots(&paths, "nogroup", nogroup).unwrap().is_empty());
        assert!(
            share_roots(&paths, "nogroup", nogroup).unwrap().is_empty(),
            "a second run changed something"
        );
        assert!(has_owner_mode(&paths.create_lock(), 0, nogroup, 0o660, false));
    }
}
