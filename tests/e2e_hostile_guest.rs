//! End-to-end tier: the guest as an attacker (issue 11, docs/architecture.md "Trust").
//! Guest root plants symlinks where mvm reads and writes, FIFOs where it reads, setuid
//! files and device nodes where it copies, a huge log, and a squatter on the agent's
//! port; the host then checks that nothing outside the VM's trees changed, that no decoy
//! secret reached any mvm output, and that mvm still works.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use support::e2e::{begin, Lab};
use support::Run;

const SECRET: &str = "DECOY-SECRET-7f3a9c";

/// Every output mvm gave, to check at the end that no secret is in any of them.
struct Seen<'a> {
    lab: &'a Lab,
    outputs: Vec<String>,
}

impl Seen<'_> {
    fn mvm(&mut self, args: &[&str]) -> Run {
        let run = self.lab.mvm(args);
        self.outputs.push(format!("mvm {args:?}:\n{}{}", run.stdout, run.stderr));
        run
    }

    fn sh(&mut self, name: &str, script: &str) -> Run {
        self.mvm(&["shell", name, "--", "sh", "-c", script])
    }

    #[track_caller]
    fn assert_no_secret(&self) {
        for output in &self.outputs {
            assert!(!output.contains(SECRET), "a host secret reached mvm's output: {output}");
        }
    }
}

/// The decoy: a private host directory with a secret, which nothing may touch.
struct Decoy {
    dir: std::path::PathBuf,
}

impl Decoy {
    fn new(lab: &Lab) -> Decoy {
        let dir = lab.sandbox.mkdir("host-decoy");
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Decoy { dir }
    }

    fn path(&self) -> String {
        self.dir.display().to_string()
    }

    #[track_caller]
    fn assert_untouched(&self) {
        let meta = std::fs::metadata(&self.dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "the decoy directory's mode changed");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "the decoy directory's owner changed");
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["secret"], "something was written into the decoy directory");
        let secret = self.dir.join("secret");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), SECRET);
        let meta = std::fs::metadata(&secret).unwrap();
        assert_eq!((meta.permissions().mode() & 0o7777, meta.uid()), (0o600, 0));
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_hostile_guest_gains_nothing_on_the_host() {
    let Some((_serial, lab)) = begin("a_hostile_guest_gains_nothing_on_the_host") else { return };
    let decoy = Decoy::new(&lab);
    let mut seen = Seen { lab: &lab, outputs: Vec::new() };
    let project = lab.sandbox.mkdir("victim");
    std::fs::write(project.join("README"), "hello\n").unwrap();
    // A symlink the project's owner made (say, in an earlier `--mount rw` VM).
    std::os::unix::fs::symlink(&decoy.dir, project.join("config")).unwrap();
    std::os::unix::fs::chown(&project, Some(65534), Some(65534)).unwrap();
    let p = project.display().to_string();
    seen.mvm(&["create", "evil", "--project", &p, "--persist", "--volume", "data:/srv/data"]).ok();
    let vm_dir = lab.sandbox.state_dir().join("evil");
    let vm_toml = vm_dir.join("vm.toml");
    let mut text = std::fs::read_to_string(&vm_toml).unwrap();
    text.push_str(
        r#"
[[processes]]
name = "squat"
command = "exec python3 -c 'import socket; s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); s.bind((socket.VMADDR_CID_ANY, 1024)); s.listen(); print(\"SQUATTING\", flush=True); s.accept()'"
restart = "never"

[[processes]]
name = "noisy"
command = "head -c 25165824 /dev/zero | tr '\\0' x; echo; exec sleep 100000"
restart = "never"
"#,
    );
    std::fs::write(&vm_toml, text).unwrap();

    // State is private: vm.toml holds [env].
    assert_eq!(std::fs::metadata(&vm_dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&vm_toml).unwrap().permissions().mode() & 0o777, 0o600);

    seen.mvm(&["start", "evil"]).ok();

    // The agent's port was bound before any declared process ran.
    assert_eq!(seen.sh("evil", "echo agent-ok").ok(), "agent-ok\n");
    let var = vm_dir.join("files/var/log/mvm");
    wait_for("the squatter to give up", Duration::from_secs(60), || {
        std::fs::read_to_string(var.join("squat.state")).is_ok_and(|state| state.contains("exited"))
    });
    let squat_log = std::fs::read_to_string(var.join("squat.log")).unwrap();
    assert!(squat_log.contains("Address already in use") && !squat_log.contains("SQUATTING"), "{squat_log}");

    // The agent answers the host alone: a guest user reaching its port over vsock loopback
    // (guest root loads the transport) gets the connection closed, no shell.
    let loopback = seen.sh(
        "evil",
        "modprobe vsock_loopback; cat > /tmp/loop.py <<'EOF'
import socket
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect((1, 1024))
except OSError as error:
    print('NO-LOOPBACK', error)
    raise SystemExit
print('CONNECTED')
try:
    s.sendall(bytes([0, 0, 0, 1, 6]))
    answer = s.recv(64)
except OSError:
    answer = b''
print('ANSWERED' if answer else 'CLOSED')
EOF
setpriv --reuid 65534 --regid 65534 --clear-groups python3 /tmp/loop.py",
    );
    assert_eq!(loopback.ok().trim(), "CONNECTED\nCLOSED", "a guest user over vsock loopback");

    // /etc holds no host password hash: shadow is generated and locked.
    let shadow = seen.sh("evil", "cat /etc/shadow").ok().to_string();
    assert!(shadow.starts_with("root:*:") && !shadow.contains('$'), "{shadow}");

    // Guest root plants its traps.
    let d = decoy.path();
    seen.sh(
        "evil",
        &format!(
            "set -e; rm -rf /var/tmp /var/cache; ln -s {d} /var/tmp; ln -s {d} /var/cache
             ln -sf {d}/secret /var/log/mvm/squat.log; ln -sf {d}/secret /var/log/mvm/squat.state
             rm -f /var/log/mvm/noisy.state; mkfifo /var/log/mvm/noisy.state
             ln -s {d}/secret {p}/leak
             rm {p}/config; mkdir {p}/config; echo pwned > {p}/config/secret
             cp /bin/sh {p}/tool; echo made > {p}/made-by-root"
        ),
    )
    .ok();
    // No setuid/setgid file or device node reaches the host, in the project or a volume.
    for dir in [p.as_str(), "/srv/data"] {
        let refused = seen.sh(
            "evil",
            &format!(
                "cd {dir}; touch s; chmod 4755 s && echo SUID-SET; chmod 2755 s && echo SGID-SET; \
                 mknod null c 1 3 && echo DEVICE-MADE; true"
            ),
        );
        let out = refused.ok();
        assert!(!out.contains("SET") && !out.contains("DEVICE-MADE"), "{dir}: {out}");
    }
    for dir in [vm_dir.join("files/layer/upper"), vm_dir.join("files/volumes/data")] {
        let meta = std::fs::symlink_metadata(dir.join("s")).unwrap();
        assert_eq!(meta.mode() & 0o6000, 0, "{} carries setuid/setgid bits", dir.join("s").display());
        assert!(std::fs::symlink_metadata(dir.join("null")).is_err(), "a device node in {}", dir.display());
    }
    // A volume's ids round-trip for the guest and are nobody's on the host.
    assert_eq!(seen.sh("evil", "chown 104:110 /srv/data/s && stat -c %u:%g /srv/data/s").ok(), "104:110\n");
    let volume_file = std::fs::metadata(vm_dir.join("files/volumes/data/s")).unwrap();
    let base = mvm::vmm::VOLUME_ID_BASE;
    assert_eq!((volume_file.uid(), volume_file.gid()), (base + 104, base + 110));
    // What guest root made in the project belongs to the project's owner.
    let made = std::fs::metadata(vm_dir.join("files/layer/upper/made-by-root")).unwrap();
    assert_eq!((made.uid(), made.gid()), (65534, 65534));

    // Logs: a symlinked log is refused, a FIFO state is not opened, a huge log is capped.
    let refused = seen.mvm(&["logs", "evil", "--process", "squat"]);
    refused.fails(1, &["symlink"]);
    let inspect = lab.command(&["inspect", "evil", "--json"]).output().unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    seen.outputs.push(String::from_utf8_lossy(&inspect.stdout).into_owned());
    // The noisy process writes 24 MiB: the guest rotates its log, mvm prints at most the cap.
    let cap = mvm::log_cap::LOG_CAP;
    let size = |file: &str| std::fs::metadata(var.join(file)).map_or(0, |meta| meta.len());
    wait_for("the noisy process's log to rotate", Duration::from_secs(180), || {
        size("noisy.log.1") > cap && size("noisy.log") <= cap
    });
    let noisy = lab.command(&["logs", "evil", "--process", "noisy"]).output().unwrap();
    assert!(noisy.status.success());
    assert!(noisy.stdout.len() as u64 <= cap, "the log was not capped: {}", noisy.stdout.len());

    // Review: a symlink shows as a symlink; apply never writes through the project's.
    let patch = seen.mvm(&["diff", "evil", "--patch"]).ok().to_string();
    assert!(patch.contains(&format!("+symlink -> {d}/secret")), "{patch}");
    seen.mvm(&["apply", "evil", "config/secret"]).fails(1, &["symlink"]);
    decoy.assert_untouched();
    seen.mvm(&["apply", "evil", "leak", "tool", "made-by-root"]).ok();
    assert_eq!(std::fs::read_link(project.join("leak")).unwrap(), decoy.dir.join("secret"));
    let tool = std::fs::metadata(project.join("tool")).unwrap();
    assert_eq!((tool.uid(), tool.mode() & 0o6000), (65534, 0));

    // A restart must not repair the guest's /var through its symlinks.
    seen.mvm(&["restart", "evil"]).ok();
    decoy.assert_untouched();
    assert_eq!(seen.sh("evil", "echo still-works").ok(), "still-works\n");
    seen.mvm(&["stop", "evil"]).ok();
    seen.mvm(&["rm", "evil"]).ok();
    decoy.assert_untouched();
    seen.assert_no_secret();
    lab.assert_nothing_left();
    assert!(Path::new(&p).join("README").exists());
}

/// Not the guest but a host user: after create, the project's path becomes a symlink to
/// `/`. A start refuses it instead of sharing `/` (what the VM shares is bound by
/// descriptor, so a swap after the check changes nothing either).
#[test]
fn a_project_path_turned_into_a_symlink_is_refused() {
    let Some((_serial, lab)) = begin("a_project_path_turned_into_a_symlink_is_refused") else { return };
    let project = lab.sandbox.mkdir("swapped");
    let p = project.display().to_string();
    lab.mvm(&["create", "swap", "--project", &p, "--mount", "rw"]).ok();
    std::fs::rename(&project, lab.sandbox.root().join("moved")).unwrap();
    std::os::unix::fs::symlink("/", &project).unwrap();
    lab.mvm(&["start", "swap"]).fails(3, &["cannot be used", "never follows a symlink"]);
    assert!(lab.leftover_processes().is_empty());
    lab.mvm(&["rm", "swap"]).ok();
    assert!(lab.sandbox.root().join("moved").is_dir(), "the project was touched");
}
