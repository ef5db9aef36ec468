//! A VM's processes found without its supervisor: the hypervisor, each virtiofsd and
//! vhost-device-vsock all name a socket in the VM's runtime dir on their command line.
//! With the parent-death signal they die with the supervisor; this finds any that did
//! not (a supervisor killed before it could ask for the signal, a helper that reset it),
//! so that `list` never calls such a VM stopped, `start` never adds a second hypervisor,
//! and `stop` and `doctor --fix` can end them.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A process of the VM whose runtime dir is `run_dir`: its pid and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub pid: i32,
    pub cmdline: String,
}

/// Whether `cmdline` (arguments joined by spaces) names a socket in `run_dir`.
pub fn names_a_socket_of(cmdline: &str, run_dir: &Path) -> bool {
    let dir = run_dir.display().to_string();
    ["fs-", super::QMP_SOCKET, super::API_SOCKET, super::AGENT_SOCKET, super::VHOST_VSOCK_SOCKET]
        .iter()
        .any(|socket| cmdline.contains(&format!("{dir}/{socket}")))
}

/// Whether `argv0` is one of the programs a VM is made of (not, say, a `socat` or an
/// `strace` someone pointed at one of its sockets).
pub fn is_vm_program(argv0: &str) -> bool {
    let program = argv0.rsplit('/').next().unwrap_or(argv0);
    program.starts_with("qemu-system-")
        || ["cloud-hypervisor", "virtiofsd", "vhost-device-vsock"].contains(&program)
}

/// The real user id of process `pid` (which no process can change to another user's).
fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// Every VM program of `owner` (or root) whose command line names a socket of `run_dir`.
/// Another user's process naming those sockets is not the VM's: it neither blocks a start
/// nor is killed by a stop.
pub fn find(run_dir: &Path, owner: u32) -> Vec<Orphan> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let own = std::process::id() as i32;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv0 = String::from_utf8_lossy(raw.split(|byte| *byte == 0).next()?).into_owned();
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ").trim_end().to_string();
            let ours = real_uid(pid).is_some_and(|uid| uid == 0 || uid == owner);
            (ours && is_vm_program(&argv0) && names_a_socket_of(&cmdline, run_dir))
                .then_some(Orphan { pid, cmdline })
        })
        .collect()
}

/// Kills `orphans` with SIGKILL and waits (up to 5 s) until they are gone.
pub fn kill_all(orphans: &[Orphan]) -> bool {
    for orphan in orphans {
        let _ = kill(Pid::from_raw(orphan.pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while orphans.iter().any(|orphan| kill(Pid::from_raw(orphan.pid), None).is_ok() && !is_zombie(orphan.pid))
    {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_process_is_known_by_its_sockets() {
        let run = Path::new("/run/mvm/web");
        assert!(names_a_socket_of("qemu-system-x86_64 -qmp unix:/run/mvm/web/qmp.sock,server=on", run));
        assert!(names_a_socket_of("virtiofsd --socket-path=/run/mvm/web/fs-usr.sock --shared-dir=/usr", run));
        assert!(!names_a_socket_of("virtiofsd --socket-path=/run/mvm/web2/fs-usr.sock", run));
        assert!(!names_a_socket_of("ls /run/mvm/web/", run));
        assert!(is_vm_program("/usr/bin/qemu-system-x86_64") && is_vm_program("virtiofsd"));
        assert!(!is_vm_program("socat") && !is_vm_program("/usr/bin/strace"));
    }

    #[test]
    fn finds_and_kills_a_process_naming_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("web");
        let socket = format!("unix:{}/qmp.sock", run.display());
        // What looks like a QEMU of that VM; a socat at the same socket does not count.
        let mut child = disguised("qemu-system-x86_64", &socket);
        let mut bystander = disguised("socat", &socket);
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = find(&run, 0);
            if !found.is_empty() || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, child.id() as i32);
        assert!(kill_all(&found));
        assert!(child.wait().unwrap().code().is_none(), "not killed");
        assert!(find(&run, 0).is_empty());
        assert!(bystander.try_wait().unwrap().is_none(), "a bystander was killed");
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    /// Another user's process dressed as the VM's QEMU neither blocks its start nor is
    /// killed by its stop; the same as the owner's is the VM's.
    #[test]
    fn another_users_disguised_process_is_not_the_vms() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to run a process as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("web");
        let script = format!(
            "exec -a qemu-system-x86_64 /usr/bin/python3 -c 'import time; time.sleep(1000)' -qmp unix:{}/qmp.sock",
            run.display()
        );
        let mut other = std::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "bash", "-c", &script])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while find(&run, 65534).is_empty() {
            assert!(Instant::now() < deadline, "the owner's own process was not found");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(find(&run, 1000).is_empty(), "user 65534's process counted as user 1000's VM's");
        other.kill().unwrap();
        other.wait().unwrap();
    }

    /// A sleeping process whose argv[0] is `program` and whose arguments name `socket`.
    pub(crate) fn disguised(program: &str, socket: &str) -> std::process::Child {
        let script =
            format!("exec -a {program} /usr/bin/python3 -c 'import time; time.sleep(1000)' -qmp {socket}");
        std::process::Command::new("bash").args(["-c", &script]).spawn().unwrap()
    }
}
