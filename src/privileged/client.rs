//! How mvm asks for the privileged operations: root does them in-process; anyone else
//! runs the setuid helper (`HELPER_PATH`, or `MVM_HELPER`: pointing it elsewhere gains
//! nothing, since only the installed file is setuid). Code that needs them is handed a
//! [`Privileges`]: [`ThisProcess`] in mvm, a [`recording::Recorder`] in unit tests.

pub mod recording;

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::config::host::HostConfig;
use crate::config::vm::VmConfig;
use crate::error::UserError;
use crate::net::host::HostNet;
use crate::privileged::{Request, HELPER_PATH};
use crate::state::paths::Roots;
use crate::state::Paths;

/// The privileged operations on a VM's host network.
pub trait HostNetwork {
    /// Bridge, tap and rules up (idempotent).
    fn up(&mut self, vm: &VmConfig) -> anyhow::Result<()>;
    /// Rules converged to the VM's record.
    fn update_rules(&mut self, vm: &VmConfig) -> anyhow::Result<()>;
    /// Tap, bridge and rules removed.
    fn down(&mut self, vm: &VmConfig) -> anyhow::Result<()>;
    /// The VM's DNS sockets, bound to port 53 of its gateway.
    fn dns_sockets(&mut self, vm: &VmConfig) -> anyhow::Result<crate::dns::Sockets>;
}

/// The privileged operations on a VM's files disk (`state::disk`).
pub trait HostDisk {
    /// The disk made if missing and mounted on the VM's `files/` (idempotent).
    fn up(&mut self, vm: &VmConfig) -> anyhow::Result<()>;
    /// The disk unmounted (idempotent).
    fn down(&mut self, vm: &VmConfig) -> anyhow::Result<()>;
    /// The disk unmounted and deleted.
    fn remove(&mut self, vm: &VmConfig) -> anyhow::Result<()>;
}

/// Where a command gets the privileged operations from: passed down from the command
/// (or the supervisor) to the code that needs them, so unit tests pass a
/// [`recording::Recorder`] in their place.
pub trait Privileges {
    fn network(&self) -> Box<dyn HostNetwork>;
    fn disk(&self) -> Box<dyn HostDisk>;
}

/// This process's way: in-process as root, else through the helper.
#[derive(Debug, Clone)]
pub struct ThisProcess {
    paths: Paths,
}

impl ThisProcess {
    pub fn new(paths: &Paths) -> ThisProcess {
        ThisProcess { paths: paths.clone() }
    }

    fn in_process(&self) -> Option<InProcess> {
        nix::unistd::geteuid().is_root().then(|| InProcess { roots: self.paths.roots() })
    }
}

impl Privileges for ThisProcess {
    fn network(&self) -> Box<dyn HostNetwork> {
        match self.in_process() {
            Some(root) => Box::new(root),
            None => Box::new(Helper { program: helper_path() }),
        }
    }

    fn disk(&self) -> Box<dyn HostDisk> {
        match self.in_process() {
            Some(root) => Box::new(root),
            None => Box::new(Helper { program: helper_path() }),
        }
    }
}

/// The helper's path: `MVM_HELPER`, else where `mvm setup` installs it.
pub fn helper_path() -> PathBuf {
    std::env::var_os("MVM_HELPER")
        .filter(|path| !path.is_empty())
        .map_or_else(|| HELPER_PATH.into(), PathBuf::from)
}

/// Root's way: the work itself, under the network lock.
struct InProcess {
    roots: Roots,
}

impl InProcess {
    fn open(&self) -> anyhow::Result<HostNet> {
        HostNet::open(&self.roots, &HostConfig::load(&self.roots.config_file)?.network)
    }
}

impl HostNetwork for InProcess {
    fn up(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.open()?.up(&vm.record())
    }

    fn update_rules(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.open()?.update_rules(&vm.record()).map(drop)
    }

    fn down(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.open()?.down(&vm.record())
    }

    fn dns_sockets(&mut self, vm: &VmConfig) -> anyhow::Result<crate::dns::Sockets> {
        // Under the network lock, so the bridge checked is the one bound to.
        let live = self.open()?;
        live.check_live(&vm.record())?;
        crate::dns::bind(vm.network.gateway, &vm.network.bridge)
            .with_context(|| format!("cannot bind DNS on {}", vm.network.gateway))
    }
}

impl InProcess {
    /// The owner (uid, gid) of `vm`'s directory: a disk's root is theirs.
    fn owner(&self, vm: &VmConfig) -> anyhow::Result<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.roots.vm_dir(&vm.name);
        let meta =
            std::fs::symlink_metadata(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        Ok((meta.uid(), meta.gid()))
    }
}

impl HostDisk for InProcess {
    fn up(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        let host = HostConfig::load(&self.roots.config_file)?;
        let mkfs = crate::host::binaries::Tool::MkfsExt4.find(&host.paths)?;
        crate::privileged::disk::up(&self.roots, &vm.record(), self.owner(vm)?, &mkfs)
    }

    fn down(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        crate::privileged::disk::down(&self.roots, &vm.record(), self.owner(vm)?, false)
    }

    fn remove(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        crate::privileged::disk::down(&self.roots, &vm.record(), self.owner(vm)?, true)
    }
}

/// A user's way: one run of the setuid helper per request.
pub struct Helper {
    pub program: PathBuf,
}

impl Helper {
    /// Runs the helper for `request`; its error message becomes this one.
    pub fn ask(&self, request: &Request) -> anyhow::Result<()> {
        self.ask_with_stdin(request, Stdio::null())
    }

    /// Runs the helper for `request` with `stdin`.
    fn ask_with_stdin(&self, request: &Request, stdin: Stdio) -> anyhow::Result<()> {
        let output = Command::new(&self.program)
            .args(request.to_args())
            .env_clear()
            .stdin(stdin)
            .output()
            .map_err(|error| self.unusable(&error))?;
        if output.status.success() {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&output.stderr);
        let message = message.trim().trim_start_matches("mvm-helper: ").trim_start_matches("error: ");
        let code = match output.status.code() {
            Some(code) if code == crate::error::ExitCode::NeedsRoot as i32 => {
                crate::error::ExitCode::NeedsRoot
            }
            Some(code) if code == crate::error::ExitCode::Conflict as i32 => crate::error::ExitCode::Conflict,
            _ => crate::error::ExitCode::Failure,
        };
        Err(UserError::new(code, format!("{request}: {message}")).into())
    }

    fn unusable(&self, error: &std::io::Error) -> anyhow::Error {
        let program = self.program.display();
        match error.kind() {
            std::io::ErrorKind::NotFound => {
                UserError::needs_root(format!("{program} is missing: mvm is not set up for use without root"))
                    .hint("run `sudo mvm setup` once (or use sudo)")
                    .into()
            }
            std::io::ErrorKind::PermissionDenied => {
                UserError::needs_root(format!("you may not run {program}: you are not in mvm's group"))
                    .hint("ask an admin to `sudo usermod -aG mvm $USER` (then log in again), or use sudo")
                    .into()
            }
            _ => anyhow::Error::new(std::io::Error::new(error.kind(), error.to_string()))
                .context(format!("cannot run {program}")),
        }
    }
}

impl HostDisk for Helper {
    fn up(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.ask(&Request::DiskUp(vm.name.clone())).context("cannot mount the VM's disk")
    }

    fn down(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.ask(&Request::DiskDown(vm.name.clone())).context("cannot unmount the VM's disk")
    }

    fn remove(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.ask(&Request::DiskRemove(vm.name.clone())).context("cannot remove the VM's disk")
    }
}

impl HostNetwork for Helper {
    fn up(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.ask(&Request::NetworkUp(vm.name.clone())).context("cannot bring the VM's network up")
    }

    fn update_rules(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.ask(&Request::NetworkRules(vm.name.clone())).context("cannot update the VM's firewall rules")
    }

    fn down(&mut self, vm: &VmConfig) -> anyhow::Result<()> {
        self.ask(&Request::NetworkDown(vm.name.clone())).context("cannot take the VM's network down")
    }

    fn dns_sockets(&mut self, vm: &VmConfig) -> anyhow::Result<crate::dns::Sockets> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        self.ask_with_stdin(
            &Request::DnsSockets(vm.name.clone()),
            Stdio::from(std::os::fd::OwnedFd::from(theirs)),
        )
        .context("cannot get the VM's DNS sockets")?;
        receive_dns_sockets(std::os::fd::AsFd::as_fd(&ours))
    }
}

/// Receives what the helper's `send_dns_sockets` sent on `channel` (already there: the sender has
/// finished).
pub fn receive_dns_sockets(channel: BorrowedFd) -> anyhow::Result<crate::dns::Sockets> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut kinds = [0u8; 2];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(&mut kinds)];
    let message = recvmsg::<()>(
        channel.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("the helper passed no DNS sockets")?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = control {
            // SAFETY: the kernel just installed these descriptors in this process for this
            // message; nothing else owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let count = message.bytes;
    let kinds = &kinds[..count];
    let mut fds = fds.into_iter();
    match (kinds, fds.next(), fds.next()) {
        (b"UT", Some(udp), Some(tcp)) => Ok(crate::dns::Sockets { udp: udp.into(), tcp: tcp.into() }),
        _ => anyhow::bail!("the helper passed something else than DNS sockets"),
    }
}
