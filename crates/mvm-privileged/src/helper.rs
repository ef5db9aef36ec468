//! The helper's side: check a request against its caller, then act.
//!
//! The caller is the real uid the kernel started the helper with. What it acts on comes
//! from two files root trusts and one the caller owns: the host config (which must be
//! root's and writable by no one else), the index claim (`claims`, which must be
//! the caller's and name the VM) and the VM's `vm.toml` (in a VM directory that must be
//! the caller's; read beneath the state root without following any symlink, size
//! capped). From the record it takes only the index, the forwards and the network
//! switches; the bridge, tap, subnet and addresses are derived again from the index and
//! the host's pool, so no record can name another VM's links. Forwards of a host port
//! below 1024, or of one another VM forwards, are refused; a tap of another user's is
//! never used or removed (`net::host`).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;

use mvm_base::error::UserError;
// The largest `vm.toml` the helper reads.
use mvm_base::fs::RECORD_CAP;
use mvm_base::name::VmName;

use crate::claims;
use crate::net::host::HostNet;
use crate::record::{HostRecord, VmRecord};
use crate::request::Request;
use crate::roots::Roots;

/// Carries out `request` for the user `caller` (uid), under the roots `paths`.
pub fn serve(request: &Request, caller: u32, paths: &Roots) -> anyhow::Result<()> {
    let host = trusted_host_config(&paths.config_file)?;
    if let Request::DiskUp(name) | Request::DiskDown(name) | Request::DiskRemove(name) = request {
        let vm = owned_record(paths, name, caller)?;
        let owner = owner_ids(caller)?;
        return match request {
            Request::DiskUp(_) => {
                let mkfs = mvm_base::binaries::Tool::MkfsExt4.find(&host.paths)?;
                crate::disk::up(paths, &vm, owner, &mkfs)
            }
            Request::DiskDown(_) => crate::disk::down(paths, &vm, owner, false),
            _ => crate::disk::down(paths, &vm, owner, true),
        };
    }
    let vm = verified_record(paths, &host, request.vm(), caller)?;
    let open = || -> anyhow::Result<HostNet> {
        let net = HostNet::open(paths, &host.network)?;
        Ok(if caller == 0 { net } else { net.for_user(caller) })
    };
    // A DNAT rule shadows a host listener: no user's VM takes a port a host process
    // serves (`mvm` checks this too; the helper is the check a caller cannot skip).
    if caller != 0
        && matches!(request, Request::NetworkUp(_) | Request::NetworkRules(_) | Request::DnsSockets(_))
    {
        for forward in &vm.ports {
            crate::net::ports::check_host_port(forward, false)?;
        }
    }
    match request {
        Request::NetworkUp(_) => open()?.up(&vm),
        Request::NetworkRules(_) => open()?.update_rules(&vm).map(drop),
        Request::NetworkDown(_) => open()?.down(&vm),
        Request::DnsSockets(_) => {
            let channel = std::io::stdin();
            check_channel(channel.as_fd(), caller)?;
            // For a bridge made for this VM of the caller's, which its tap is on now; the
            // network lock held until they are bound, so that bridge is still the one.
            let live = open()?;
            live.check_live(&vm)?;
            let sockets = crate::dns_sockets::bind(vm.network.gateway, &vm.network.bridge)
                .with_context(|| format!("cannot bind DNS on {}", vm.network.gateway))?;
            drop(live);
            send_dns_sockets(channel.as_fd(), &sockets)
        }
        Request::DiskUp(_) | Request::DiskDown(_) | Request::DiskRemove(_) => unreachable!("served above"),
    }
}

/// The uid and primary gid of user `uid` (a disk's root is theirs).
pub fn owner_ids(uid: u32) -> anyhow::Result<(u32, u32)> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?
        .with_context(|| format!("uid {uid} is no user of this host"))?;
    Ok((uid, user.gid.as_raw()))
}

/// Refuses a `channel` that is not the caller's own socket pair: a Unix stream socket
/// whose other end `caller` made (never, say, a root daemon's socket the caller connected,
/// which would then get a message from root).
pub fn check_channel(channel: BorrowedFd, caller: u32) -> anyhow::Result<()> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    let refused = || {
        UserError::usage(
            "dns-sockets passes the sockets back over stdin, which must be a socket pair of yours",
        )
    };
    let unix = getsockname::<UnixAddr>(channel.as_raw_fd()).map_err(|_| refused())?;
    let kind = getsockopt(&channel, sockopt::SockType).map_err(|_| refused())?;
    let peer = getsockopt(&channel, sockopt::PeerCredentials).map_err(|_| refused())?;
    if kind != SockType::Stream || unix.path().is_some() || peer.uid() != caller {
        return Err(refused().into());
    }
    Ok(())
}

/// Sends `sockets` over the Unix socket `channel` (`SCM_RIGHTS`): the bytes `UT` for the
/// sockets that follow (UDP, then TCP).
pub fn send_dns_sockets(channel: BorrowedFd, sockets: &crate::dns_sockets::Sockets) -> anyhow::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [sockets.udp.as_raw_fd(), sockets.tcp.as_raw_fd()];
    let kinds: &[u8] = b"UT";
    sendmsg::<()>(
        channel.as_raw_fd(),
        &[std::io::IoSlice::new(kinds)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("cannot pass the DNS sockets back (stdin must be a Unix socket)")?;
    Ok(())
}

/// The host config, when root alone can have written it (and every directory above it).
pub fn trusted_host_config(path: &Path) -> anyhow::Result<HostRecord> {
    let untrusted = |why: String| -> anyhow::Error {
        UserError::usage(format!("{} is not trusted: {why}", path.display()))
            .hint("it must be root's and writable by no one else: `sudo chown root: FILE; sudo chmod go-w FILE`")
            .into()
    };
    let mut dir = path.parent();
    while let Some(current) = dir {
        let meta = std::fs::symlink_metadata(current)
            .with_context(|| format!("cannot read {}", current.display()))?;
        if meta.uid() != 0 || (meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0) {
            return Err(untrusted(format!("{} may be changed by a user", current.display())));
        }
        dir = current.parent();
    }
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(HostRecord::default()),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(untrusted("it is not a regular file of root's, writable by root alone".into()));
    }
    let mut text = String::new();
    file.take(RECORD_CAP).read_to_string(&mut text)?;
    HostRecord::parse(&text).with_context(|| format!("invalid host config {}", path.display()))
}

/// VM `name`'s record, checked to be `caller`'s, with its network derived again from
/// its index and the host's pool.
pub fn verified_record(
    paths: &Roots,
    host: &HostRecord,
    name: &VmName,
    caller: u32,
) -> anyhow::Result<VmRecord> {
    let mut vm = owned_record(paths, name, caller)?;
    let index = vm.network.index;
    vm.network = host
        .network
        .address_pool()?
        .vm(index)
        .with_context(|| format!("VM '{name}''s index {index} is outside the address pool"))?;
    if caller != 0 {
        match claims::holder(&paths.state_dir, index) {
            Some((holder, owner)) if holder == name.as_str() && owner == caller => {}
            _ => {
                return Err(UserError::conflict(format!(
                    "VM '{name}''s network index {index} is not claimed for it by you"
                ))
                .hint(format!("remove the VM and create it again: `mvm rm {name}`"))
                .into())
            }
        }
        if let Some(forward) =
            vm.ports.iter().find(|forward| forward.host < crate::net::ports::FIRST_UNPRIVILEGED_PORT)
        {
            return Err(UserError::needs_root(format!(
                "host port {} is below {}: only root forwards those",
                forward.host,
                crate::net::ports::FIRST_UNPRIVILEGED_PORT
            ))
            .into());
        }
    }
    Ok(vm)
}

/// VM `name`'s record, checked to be `caller`'s (its directory and `vm.toml`), as its
/// owner wrote it: what a request on the VM's disk needs (its network plays no part).
pub fn owned_record(paths: &Roots, name: &VmName, caller: u32) -> anyhow::Result<VmRecord> {
    let state = mvm_base::fs::Tree::open_exact(&paths.state_dir)
        .with_context(|| format!("cannot open {}", paths.state_dir.display()))?;
    let Some(dir) = state.metadata(Path::new(name.as_str()))?.filter(|meta| meta.is_dir()) else {
        return Err(crate::record::no_such_vm(name).into());
    };
    let not_yours = |what: &str| -> anyhow::Error {
        UserError::needs_root(format!("VM '{name}''s {what} is not yours"))
            .hint("only its owner (or root) can start, stop or forward ports of a VM")
            .into()
    };
    if caller != 0 && dir.uid() != caller {
        return Err(not_yours("directory"));
    }
    let file =
        state.subtree(Path::new(name.as_str()))?.open_file(Path::new(crate::record::VM_CONFIG_FILE))?;
    if caller != 0 && file.metadata()?.uid() != caller {
        return Err(not_yours("vm.toml"));
    }
    let mut text = String::new();
    file.take(RECORD_CAP).read_to_string(&mut text)?;
    let vm = VmRecord::parse(&text).with_context(|| format!("VM '{name}''s vm.toml is corrupt"))?;
    if &vm.name != name {
        return Err(UserError::usage(format!("VM '{name}''s vm.toml names another VM")).into());
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sockets go back only over the caller's own socket pair.
    #[test]
    fn dns_sockets_go_back_over_the_callers_socket_pair_only() {
        let me = nix::unistd::geteuid().as_raw();
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(check_channel(ours.as_fd(), me).is_ok());
        assert!(check_channel(ours.as_fd(), me + 1).is_err(), "another uid's pair");
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("daemon.sock")).unwrap();
        let connected = std::os::unix::net::UnixStream::connect(dir.path().join("daemon.sock")).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(check_channel(accepted.as_fd(), me).is_err(), "a named (daemon's) socket");
        drop(connected);
        let (datagrams, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert!(check_channel(datagrams.as_fd(), me).is_err(), "a datagram socket");
        let file = tempfile::tempfile().unwrap();
        assert!(check_channel(file.as_fd(), me).is_err(), "a file");
    }
    use std::os::unix::fs::{chown, symlink, PermissionsExt};

    const ALICE: u32 = 4242;
    const BOB: u32 = 4343;

    /// State with VM `web` of Alice's (index 4, claimed), in a root-owned temp dir.
    fn state() -> (tempfile::TempDir, Roots, VmRecord) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Roots::under(dir.path());
        let mut vm = crate::record::tests::sample();
        vm.ports = vec!["8080:3000".parse().unwrap()];
        let vm_dir = paths.vm_dir(&vm.name);
        std::fs::create_dir_all(&vm_dir).unwrap();
        crate::record::tests::save(&vm, &paths.vm_config(&vm.name));
        assert!(claims::claim(&paths.state_dir, vm.network.index, &vm.name).unwrap());
        for path in [vm_dir.clone(), paths.vm_config(&vm.name), paths.state_dir.join(".index/4")] {
            chown(path, Some(ALICE), Some(ALICE)).unwrap();
        }
        (dir, paths, vm)
    }

    fn needs_root(test: &str) -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("SKIP {test}: needs root to give files to test users");
        }
        root
    }

    fn refused(result: anyhow::Result<VmRecord>, needle: &str) {
        let error = format!("{:#}", result.expect_err("accepted"));
        assert!(error.contains(needle), "{error}");
    }

    #[test]
    fn the_owner_gets_the_record_with_a_network_derived_from_the_index() {
        if !needs_root("the_owner_gets_the_record") {
            return;
        }
        let (_dir, paths, mut vm) = state();
        // A record naming other links keeps only its index.
        vm.network.bridge = "eth0".into();
        vm.network.tap = "mvmtap0".into();
        crate::record::tests::save(&vm, &paths.vm_config(&vm.name));
        chown(paths.vm_config(&vm.name), Some(ALICE), Some(ALICE)).unwrap();
        let host = HostRecord::default();
        let verified = verified_record(&paths, &host, &vm.name, ALICE).unwrap();
        assert_eq!(verified.network, host.network.address_pool().unwrap().vm(4).unwrap());
        assert_eq!(verified.network.bridge, "mvmbr4");
    }

    #[test]
    fn another_users_vm_is_refused() {
        if !needs_root("another_users_vm_is_refused") {
            return;
        }
        let (_dir, paths, vm) = state();
        refused(verified_record(&paths, &HostRecord::default(), &vm.name, BOB), "is not yours");
        // Bob's record planted in Alice's directory: still hers.
        chown(paths.vm_config(&vm.name), Some(BOB), Some(BOB)).unwrap();
        refused(verified_record(&paths, &HostRecord::default(), &vm.name, BOB), "directory is not yours");
        chown(paths.vm_config(&vm.name), Some(ALICE), Some(ALICE)).unwrap();
        // Bob's directory with Alice's record planted in it: still not his.
        chown(paths.vm_dir(&vm.name), Some(BOB), Some(BOB)).unwrap();
        refused(verified_record(&paths, &HostRecord::default(), &vm.name, BOB), "vm.toml is not yours");
    }

    #[test]
    fn an_index_claimed_by_someone_else_or_for_another_vm_is_refused() {
        if !needs_root("an_index_claimed_by_someone_else") {
            return;
        }
        let (_dir, paths, vm) = state();
        let claim = paths.state_dir.join(".index/4");
        chown(&claim, Some(BOB), Some(BOB)).unwrap();
        refused(
            verified_record(&paths, &HostRecord::default(), &vm.name, ALICE),
            "not claimed for it by you",
        );
        std::fs::write(&claim, "api\n").unwrap();
        chown(&claim, Some(ALICE), Some(ALICE)).unwrap();
        refused(
            verified_record(&paths, &HostRecord::default(), &vm.name, ALICE),
            "not claimed for it by you",
        );
        std::fs::remove_file(&claim).unwrap();
        refused(
            verified_record(&paths, &HostRecord::default(), &vm.name, ALICE),
            "not claimed for it by you",
        );
        // Her disk is hers whatever became of the index (`rm` still removes it); never Bob's.
        assert_eq!(owned_record(&paths, &vm.name, ALICE).unwrap().name, vm.name);
        refused(owned_record(&paths, &vm.name, BOB), "is not yours");
    }

    #[test]
    fn a_privileged_port_is_refused_but_root_may() {
        if !needs_root("a_privileged_port_is_refused") {
            return;
        }
        let (_dir, paths, mut vm) = state();
        vm.ports = vec!["80:3000".parse().unwrap()];
        crate::record::tests::save(&vm, &paths.vm_config(&vm.name));
        chown(paths.vm_config(&vm.name), Some(ALICE), Some(ALICE)).unwrap();
        refused(verified_record(&paths, &HostRecord::default(), &vm.name, ALICE), "below 1024");
        assert!(verified_record(&paths, &HostRecord::default(), &vm.name, 0).is_ok());
    }

    #[test]
    fn a_symlinked_or_oversized_record_is_not_read() {
        if !needs_root("a_symlinked_or_oversized_record") {
            return;
        }
        let (dir, paths, vm) = state();
        let record = paths.vm_config(&vm.name);
        let elsewhere = dir.path().join("root-record.toml");
        std::fs::rename(&record, &elsewhere).unwrap();
        symlink(&elsewhere, &record).unwrap();
        refused(verified_record(&paths, &HostRecord::default(), &vm.name, ALICE), "symlink");
        std::fs::remove_file(&record).unwrap();
        std::fs::write(&record, vec![b'#'; (RECORD_CAP + 10) as usize]).unwrap();
        chown(&record, Some(ALICE), Some(ALICE)).unwrap();
        assert!(verified_record(&paths, &HostRecord::default(), &vm.name, ALICE).is_err());
        // A VM directory that is a symlink to another's is no VM.
        std::fs::remove_dir_all(paths.vm_dir(&vm.name)).unwrap();
        std::fs::create_dir(dir.path().join("other")).unwrap();
        symlink(dir.path().join("other"), paths.vm_dir(&vm.name)).unwrap();
        refused(verified_record(&paths, &HostRecord::default(), &vm.name, ALICE), "no VM named");
    }

    #[test]
    fn only_a_host_config_root_alone_can_write_is_trusted() {
        if !needs_root("only_a_host_config_root_alone_can_write") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = etc.join("config.toml");
        assert_eq!(
            trusted_host_config(&config).unwrap(),
            HostRecord::default(),
            "a missing file is the defaults"
        );
        std::fs::write(&config, "[network]\npool = \"10.9.0.0/16\"\n").unwrap();
        assert_eq!(trusted_host_config(&config).unwrap().network.pool.to_string(), "10.9.0.0/16");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(trusted_host_config(&config).is_err(), "a world-writable config was trusted");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        chown(&config, Some(ALICE), None).unwrap();
        assert!(trusted_host_config(&config).is_err(), "a user's config was trusted");
        chown(&config, Some(0), None).unwrap();
        chown(&etc, Some(ALICE), None).unwrap();
        assert!(trusted_host_config(&config).is_err(), "a config in a user's directory was trusted");
    }
}
