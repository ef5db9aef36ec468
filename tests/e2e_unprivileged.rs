//! End-to-end tier, without root: `sudo mvm setup` once, then two users the test makes
//! (members of mvm's group) run the whole workflow as themselves, in a network namespace
//! the test made. Alice's VM runs with no process of root's; Bob can neither see nor
//! touch it, nor take its network index or its port; neither can reach, through mvm,
//! what they could not reach themselves.
//!
//! These VMs live in the installed roots (`/var/lib/microvms`, `/run/mvm`): the setuid
//! helper trusts no other.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::debs::{self, Repo};
use support::netns::{host_with_uplink, NetNs};
use support::Run;

const ALICE: &str = "mvmt-alice";
const BOB: &str = "mvmt-bob";
const CAROL: &str = "mvmt-carol";
const SECRET: &str = "TOPSECRET-e2e-unprivileged";

struct User {
    name: &'static str,
    uid: u32,
    home: PathBuf,
}

impl User {
    fn create(name: &'static str) -> User {
        remove_user(name);
        run_ok(Command::new("useradd").args([
            "--create-home",
            "--shell",
            "/bin/sh",
            "--groups",
            "mvm",
            name,
        ]));
        let entry = nix::unistd::User::from_name(name).unwrap().unwrap();
        std::fs::set_permissions(&entry.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        User { name, uid: entry.uid.as_raw(), home: entry.dir }
    }

    /// Makes directory `name` in the user's home, as the user, with a README.
    fn project(&self, name: &str) -> PathBuf {
        let dir = self.home.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("README"), "the project\n").unwrap();
        run_ok(Command::new("chown").args(["-R", &format!("{0}:{0}", self.name)]).arg(&dir));
        dir
    }
}

fn remove_user(name: &str) {
    let _ = Command::new("pkill").args(["-KILL", "-u", name]).status();
    let _ = Command::new("userdel").args(["--remove", name]).stderr(Stdio::null()).status();
}

#[track_caller]
fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The host, the users, and the installed `mvm`.
struct Lab {
    host: NetNs,
    _internet: NetNs,
    mvm: PathBuf,
    users: Vec<&'static str>,
    vms: Vec<String>,
}

impl Lab {
    /// Runs `PROGRAM ARGS` as `user` (no sudo, a clean environment) in the host
    /// namespace, from `cwd`.
    fn run_as(&self, user: &User, cwd: &Path, program: &Path, args: &[&str]) -> Run {
        let mut command =
            self.host.nsenter("setpriv", &["--reuid", user.name, "--regid", user.name, "--init-groups"]);
        command
            .arg("env")
            .arg("-i")
            .arg(format!("HOME={}", user.home.display()))
            .arg(format!("USER={}", user.name))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(program)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null());
        Run::from_output(command.output().unwrap())
    }

    /// Runs `mvm ARGS` as `user` from `cwd`.
    fn mvm_in(&self, user: &User, cwd: &Path, args: &[&str]) -> Run {
        self.run_as(user, cwd, &self.mvm, args)
    }

    fn mvm(&self, user: &User, args: &[&str]) -> Run {
        self.mvm_in(user, &user.home, args)
    }

    /// Runs the installed `mvm ARGS` as root in the host namespace.
    fn root(&self, args: &[&str]) -> Run {
        let mut command = self.host.nsenter(self.mvm.to_str().unwrap(), args);
        command.env_remove("SUDO_UID").env_remove("SUDO_GID").env_remove("SUDO_USER").stdin(Stdio::null());
        Run::from_output(command.output().unwrap())
    }

    /// VM `name`'s package layer, as `inspect --json` says it.
    fn package_layer(&self, user: &User, name: &str) -> serde_json::Value {
        let inspect: serde_json::Value =
            serde_json::from_str(self.mvm(user, &["inspect", name, "--json"]).ok()).unwrap();
        inspect["package_layer"].clone()
    }

    /// Builds package layer `layer` as root, with the host's own network (the lab's
    /// namespace has none): what a member is told to ask root for.
    fn build_layer(&self, layer: &serde_json::Value) {
        let include: Vec<&str> =
            layer["include"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let (image, suite) = (layer["image"].as_str().unwrap(), layer["suite"].as_str().unwrap());
        let built = Command::new(&self.mvm)
            .args(["image", "build", image, "--suite", suite, "--include", &include.join(",")])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    }

    /// Runs `PROGRAM ARGS` as `user` from their home.
    fn as_user(&self, user: &User, program: &str, args: &[&str]) -> Run {
        self.run_as(user, &user.home, Path::new(program), args)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for vm in &self.vms {
            self.root(&["stop", "--force", vm]);
            self.root(&["rm", "--force", vm]);
        }
        for user in &self.users {
            remove_user(user);
        }
    }
}

/// The pids and real/effective/saved/fs uids of every process of VM `name`: those whose
/// command line names its runtime dir or supervises it.
fn vm_processes(name: &str) -> Vec<(String, String)> {
    let run_dir = format!("/run/mvm/{name}/");
    let supervise = format!("supervise\0{name}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains(&run_dir) || text.contains(&supervise) {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let uids = status.lines().find(|line| line.starts_with("Uid:")).unwrap_or_default().to_string();
            found.push((text.replace('\0', " "), uids));
        }
    }
    found
}

#[test]
fn a_group_member_runs_the_whole_workflow_as_themself_and_no_further() {
    let test = "a_group_member_runs_the_whole_workflow_as_themself_and_no_further";
    let _serial = support::e2e::ONE_AT_A_TIME.lock().unwrap_or_else(|poison| poison.into_inner());
    if !support::e2e::e2e_ready(test) || !support::require_program(test, "setpriv") {
        return;
    }
    // Setup, twice: the second changes nothing.
    let setup = Run::from_output(Command::new(support::mvm_binary()).arg("setup").output().unwrap());
    setup.ok();
    let again = Run::from_output(Command::new(support::mvm_binary()).arg("setup").output().unwrap());
    assert!(again.ok().contains("nothing to change"), "{}", again.stdout);
    let helper = std::fs::metadata(mvm::privileged::HELPER_PATH).unwrap();
    assert_eq!(
        (helper.uid(), helper.mode() & 0o7777),
        (0, 0o4750),
        "the helper is not setuid root, group-only"
    );

    let (host, internet) = host_with_uplink("uhost", "uinet");
    let mut lab = Lab {
        host,
        _internet: internet,
        mvm: "/usr/local/bin/mvm".into(),
        users: vec![ALICE, BOB],
        vms: vec![],
    };
    let alice = User::create(ALICE);
    let bob = User::create(BOB);
    lab.vms = vec!["uweb".into(), "ubob".into(), "uthief".into(), "uproj".into(), "utpl".into()];
    let secret = PathBuf::from(format!("/root/mvmt-secret-{}", std::process::id()));
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let project = alice.project("web");
    let project_arg = project.to_str().unwrap();

    // Alice: create, start, shell — all as herself.
    lab.mvm(
        &alice,
        &[
            "create",
            "uweb",
            "--project",
            project_arg,
            "--cpus",
            "1",
            "--memory",
            "512M",
            "--port",
            "18080:8000",
            "--volume",
            "data:/data",
            "--disk",
            "2G",
        ],
    )
    .ok();
    let vm_dir = Path::new("/var/lib/microvms/uweb");
    assert_eq!(std::fs::metadata(vm_dir).unwrap().uid(), alice.uid, "the VM is not hers");
    lab.mvm(&alice, &["start", "uweb"]).ok();
    let processes = vm_processes("uweb");
    assert!(processes.len() >= 5, "too few VM processes found: {processes:?}");
    for (cmdline, uids) in &processes {
        let expected = format!("Uid:\t{0}\t{0}\t{0}\t{0}", alice.uid);
        assert_eq!(uids, &expected, "a VM process runs with other ids: {cmdline}");
    }
    eprintln!("{} processes of the VM, none root's", processes.len());
    let id = lab.mvm(&alice, &["shell", "uweb", "--", "id", "-u"]);
    assert_eq!(id.ok().trim(), alice.uid.to_string());
    // Her edit on the host reaches her guest's watcher (her supervisor watches, as her;
    // the module `mvm setup` built raises it).
    let watch = format!(
        "setsid -f inotifywait -m -r --format '%e %w%f' {project_arg} > /tmp/inotify.log 2>&1 < /dev/null; sleep 2"
    );
    lab.mvm(&alice, &["shell", "uweb", "--", "sh", "-c", &watch]).ok();
    lab.as_user(&alice, "/bin/sh", &["-c", &format!("echo edited > {project_arg}/edited.txt")]).ok();
    let heard = format!("CLOSE_WRITE,CLOSE {project_arg}/edited.txt");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = lab.mvm(&alice, &["shell", "uweb", "--", "cat", "/tmp/inotify.log"]).ok().to_string();
        if log.contains(&heard) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "her guest never heard her edit:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // Her guest's DNS: port 53 on its gateway, bound by the helper (a user may not) and
    // served by her supervisor. `localhost` comes from the host's hosts file.
    let ask = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(5)\ngateway = open('/etc/resolv.conf').read().split()[1]\ns.sendto(bytes.fromhex('beef01000001000000000000096c6f63616c686f73740000010001'), (gateway, 53))\nreply = s.recv(512)\nprint(reply[:2].hex(), reply[3] & 15)";
    let dns = lab.mvm(&alice, &["shell", "uweb", "--", "python3", "-c", ask]);
    assert_eq!(dns.ok().trim(), "beef 0", "her guest's DNS did not answer");

    // What the guest writes is hers on the host; her files look hers in the guest, the
    // VM's own trees (a volume, /etc) root's.
    let wrote = format!("echo from-guest > {project_arg}/from-guest && stat -c '%u %g' {project_arg}/README /data /etc/passwd");
    let owners = lab.mvm(&alice, &["shell", "uweb", "--", "sh", "-c", &wrote]);
    assert_eq!(owners.ok(), format!("{0} {0}\n0 0\n0 0\n", alice.uid));

    // Ports: her own, not a privileged one; the forward answers.
    lab.mvm(
        &alice,
        &[
            "shell",
            "uweb",
            "--",
            "sh",
            "-c",
            &format!("cd {project_arg} && setsid python3 -m http.server 8000 >/dev/null 2>&1 < /dev/null &"),
        ],
    )
    .ok();
    let fetch = "import sys, time, urllib.request\nfor _ in range(100):\n    try:\n        print(urllib.request.urlopen('http://127.0.0.1:18080/README', timeout=2).read().decode()); sys.exit(0)\n    except Exception:\n        time.sleep(0.2)\nsys.exit(1)";
    assert!(lab.as_user(&alice, "/usr/bin/python3", &["-c", fetch]).ok().contains("the project"));
    lab.mvm(&alice, &["port", "uweb", "18081:8001"]).ok();
    lab.mvm(&alice, &["port", "uweb", "80:80"]).fails(2, &["below 1024"]);

    // Her logs and state, as herself.
    assert!(lab.mvm(&alice, &["logs", "uweb"]).ok().contains("mvm"), "the console log is empty");
    assert!(lab.mvm(&alice, &["inspect", "uweb"]).ok().contains("running"));
    // diff and apply.
    assert!(lab.mvm(&alice, &["diff", "uweb"]).ok().contains("from-guest"));
    lab.mvm(&alice, &["apply", "uweb"]).ok();
    assert_eq!(std::fs::metadata(project.join("from-guest")).unwrap().uid(), alice.uid);

    // Software: her guest's root installs into her VM's own layer, on a disk that is
    // hers alone, and nowhere else.
    let repo = Repo::new(&project.join("repo"), &[debs::download("hello")]);
    let install = format!("{} && hello", repo.install("hello"));
    let installed = lab.mvm(&alice, &["shell", "uweb", "--user", "root", "--", "sh", "-c", &install]);
    assert!(installed.ok().contains("Hello, world!"), "{}", installed.stdout);
    assert!(!Path::new("/usr/bin/hello").exists(), "her guest's install reached the host");
    let disk = std::fs::metadata(vm_dir.join(mvm::state::system_disk::FILE)).unwrap();
    assert_eq!((disk.uid(), disk.mode() & 0o777), (alice.uid, 0o600), "her system disk is not hers alone");
    // Her disk limit holds (her files disk was mounted by the helper): twice it into a
    // volume ends in ENOSPC, and her VM answers still.
    let files = vm_dir.join(mvm::state::disk::FILES_DIR);
    assert_ne!(std::fs::metadata(&files).unwrap().dev(), std::fs::metadata(vm_dir).unwrap().dev(), "no disk");
    let fill = "dd if=/dev/zero of=/data/fill bs=1M count=4096 conv=fsync 2>&1; rm -f /data/fill";
    let filled = lab.mvm(&alice, &["shell", "uweb", "--user", "root", "--", "sh", "-c", fill]);
    assert!(filled.stdout.contains("No space left on device"), "{}{}", filled.stdout, filled.stderr);
    assert_eq!(lab.mvm(&alice, &["shell", "uweb", "--", "echo", "alive"]).ok(), "alive\n");

    // Bob: cannot see, stop, enter or re-route Alice's VM.
    assert!(!lab.mvm(&bob, &["list"]).ok().contains("uweb"));
    lab.mvm(&bob, &["stop", "uweb"]).fails(6, &["belongs to"]);
    lab.mvm(&bob, &["shell", "uweb", "--", "true"]).fails(6, &["belongs to"]);
    lab.mvm(&bob, &["port", "uweb", "18082:80"]).fails(6, &["belongs to"]);
    let helper_down = lab.as_user(&bob, mvm::privileged::HELPER_PATH, &["network-down", "uweb"]);
    assert_ne!(helper_down.code, 0, "bob took alice's network down");
    assert!(helper_down.stderr.contains("not yours"), "{}", helper_down.stderr);
    // His own VM, pointed at her index, or at her port: refused at start.
    lab.mvm(&bob, &["create", "uthief", "--cpus", "1", "--memory", "512M"]).ok();
    let record = Path::new("/var/lib/microvms/uthief/vm.toml");
    let text = std::fs::read_to_string(record).unwrap();
    let forged = text
        .lines()
        .map(|line| if line.starts_with("index = ") { "index = 0".to_string() } else { line.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(text, forged);
    let alice_index = std::fs::read_to_string("/var/lib/microvms/uweb/vm.toml").unwrap();
    let alice_index = alice_index.lines().find(|line| line.starts_with("index = ")).unwrap();
    std::fs::write(record, forged.replace("index = 0", alice_index)).unwrap();
    lab.mvm(&bob, &["start", "uthief"]).fails(1, &["not claimed"]);
    assert!(vm_processes("uweb").len() >= 5, "alice's VM suffered");
    lab.mvm(&bob, &["create", "ubob", "--cpus", "1", "--memory", "512M", "--port", "18080:9000"]).ok();
    lab.mvm(&bob, &["start", "ubob"]).fails(1, &["forwarded to VM 'uweb' already"]);
    // The forward is still hers.
    assert!(lab.as_user(&alice, "/usr/bin/python3", &["-c", fetch]).ok().contains("the project"));

    // Nothing Alice cannot read herself reaches her through mvm.
    let bobs = bob.project("private");
    for args in [
        vec!["create", "uproj", "--project", bobs.to_str().unwrap()],
        vec!["create", "uproj", "--template", secret.to_str().unwrap()],
        vec!["create", "uproj", "--kernel", secret.to_str().unwrap()],
        vec!["create", "uproj", "--project", "/etc", "--mount", "rw"],
    ] {
        let refused = lab.mvm(&alice, &args);
        assert_ne!(refused.code, 0, "{args:?} was accepted");
        assert!(
            !refused.stderr.contains(SECRET) && !refused.stdout.contains(SECRET),
            "{args:?} printed the secret"
        );
    }
    let helper_as_alice = lab.as_user(&alice, mvm::privileged::HELPER_PATH, &["network-up", "../../etc"]);
    assert_ne!(helper_as_alice.code, 0);

    // Root stops her VM as her (its processes are hers; the network goes through the
    // helper as hers does): nothing of hers left on the host.
    lab.root(&["stop", "uweb"]).ok();
    assert!(vm_processes("uweb").is_empty(), "{:?}", vm_processes("uweb"));
    let links = lab.host.ip(&["-o", "link", "show"]);
    assert!(!links.contains("mvmtap") && !links.contains("mvmbr"), "links left:\n{links}");
    let rules = String::from_utf8_lossy(&lab.host.exec("iptables-save", &[]).stdout).into_owned();
    assert!(!rules.contains("mvm:uweb"), "rules left:\n{rules}");
    // What her guest installed outlives the stop.
    lab.mvm(&alice, &["start", "uweb"]).ok();
    assert!(lab.mvm(&alice, &["shell", "uweb", "--", "hello"]).ok().contains("Hello, world!"));
    // Her supervisor and VM die without a word, and she removes the VM: its network
    // (bridge, tap, every rule of its) goes with it, for the next VM on its index.
    let _ = Command::new("pkill").args(["-KILL", "-u", ALICE]).status();
    // Until the kernel has closed their files too (a dying process leaves /proc's command
    // lines first), so mvm sees the VM down, not running with no supervisor.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let running = || lab.mvm(&alice, &["list", "--json"]).stdout.contains("\"running\"");
    while (!vm_processes("uweb").is_empty() || running()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    lab.mvm(&alice, &["rm", "--force", "uweb"]).ok();
    let links = lab.host.ip(&["-o", "link", "show"]);
    assert!(!links.contains("mvmtap") && !links.contains("mvmbr"), "links left:\n{links}");
    let rules = String::from_utf8_lossy(&lab.host.exec("iptables-save", &[]).stdout).into_owned();
    assert!(!rules.contains("mvm:uweb"), "rules left after rm:\n{rules}");
    lab.mvm(&bob, &["rm", "ubob"]).ok();
    // Root removing Bob's VM meets Bob's files with Bob's rights: a runtime dir he turned
    // into a symlink to a directory of root's is dropped, never emptied.
    let decoy = PathBuf::from(format!("/root/mvmt-decoy-{}", std::process::id()));
    std::fs::create_dir_all(&decoy).unwrap();
    std::fs::write(decoy.join("keep"), "root's").unwrap();
    lab.as_user(&bob, "/bin/rm", &["-rf", "/run/mvm/uthief"]).ok();
    lab.as_user(&bob, "/bin/ln", &["-s", decoy.to_str().unwrap(), "/run/mvm/uthief"]).ok();
    lab.root(&["rm", "uthief"]).ok();
    assert_eq!(std::fs::read_to_string(decoy.join("keep")).unwrap(), "root's", "root emptied the decoy");
    assert!(std::fs::symlink_metadata("/run/mvm/uthief").is_err(), "the planted link is left");
    std::fs::remove_dir_all(&decoy).unwrap();

    // The direnv flow, with the real direnv: the .envrc `mvm direnv` prints, as it is
    // (no sudo in it), brings her project's VM up when direnv loads it.
    let envrc = lab.mvm(&alice, &["direnv"]);
    let calls_sudo = envrc.ok().lines().any(|line| !line.starts_with('#') && line.contains("sudo"));
    assert!(!calls_sudo, "{}", envrc.stdout);
    let second = alice.project("uproj");
    std::fs::write(second.join(".envrc"), &envrc.stdout).unwrap();
    run_ok(Command::new("chown").arg(format!("{0}:{0}", alice.name)).arg(second.join(".envrc")));
    let direnv = Path::new("/usr/bin/direnv");
    let dir = second.to_str().unwrap();
    lab.run_as(&alice, &second, direnv, &["allow", dir]).ok();
    let loaded = lab.run_as(&alice, &second, direnv, &["exec", dir, "sh", "-c", "echo \"$MVM_VM $MVM_IP\""]);
    assert!(loaded.ok().starts_with("uproj 10."), "{}\n{}", loaded.stdout, loaded.stderr);
    assert_eq!(lab.mvm(&alice, &["shell", "uproj", "--", "id", "-un"]).ok().trim(), ALICE);
    assert!(vm_processes("uproj")
        .iter()
        .all(|(_, uids)| uids == &format!("Uid:\t{0}\t{0}\t{0}\t{0}", alice.uid)));
    lab.mvm(&alice, &["stop", "uproj"]).ok();
    lab.mvm(&alice, &["rm", "uproj"]).ok();

    // A template whose software the host lacks: its package layer is built once by root
    // (a member may not; the first start says how), then her VM runs on it.
    let site = alice.project("site");
    support::django::write_project(&site);
    run_ok(Command::new("chown").args(["-R", &format!("{0}:{0}", alice.name)]).arg(&site));
    lab.mvm(
        &alice,
        &[
            "create",
            "utpl",
            "--template",
            "django",
            "--project",
            site.to_str().unwrap(),
            "--port",
            "18090:8000",
        ],
    )
    .ok();
    let layer = lab.package_layer(&alice, "utpl");
    let image = layer["image"].as_str().unwrap();
    // As on a host that never built it (an earlier run's stays in the installed store).
    let _ = Command::new(&lab.mvm).args(["image", "rm", image]).output();
    lab.mvm(&alice, &["start", "utpl"])
        .fails(6, &["only root builds them", &format!("sudo mvm image build {image}")]);
    lab.build_layer(&layer);
    let started = lab.mvm(&alice, &["start", "utpl"]);
    assert!(
        !started.ok().is_empty() && started.stderr.contains("using the cached package layer"),
        "{}",
        started.stderr
    );
    let page = "import sys, time, urllib.request\nfor _ in range(600):\n    try:\n        print(urllib.request.urlopen('http://127.0.0.1:18090/', timeout=2).read().decode()); sys.exit(0)\n    except Exception:\n        time.sleep(0.5)\nsys.exit(1)";
    assert!(lab
        .as_user(&alice, "/usr/bin/python3", &["-c", page])
        .ok()
        .contains("The install worked successfully"));
    lab.mvm(&alice, &["stop", "utpl"]).ok();
    lab.mvm(&alice, &["rm", "utpl"]).ok();
    run_ok(Command::new(&lab.mvm).args(["image", "rm", image]));
    let _ = std::fs::remove_file(&secret);
}

/// Runs `sql` as `user` against the PostgreSQL their VM `name` forwards to host port
/// `port` (a member's forwards answer their own programs only), until it answers.
fn psql_as(lab: &Lab, user: &User, port: &str, sql: &str) -> String {
    let uri = format!("postgresql://postgres:postgres@127.0.0.1:{port}/postgres");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let run = lab.as_user(user, "/usr/bin/psql", &[&uri, "-tAc", sql]);
        if run.code == 0 {
            return run.stdout.trim().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "psql never answered: {}", run.stderr);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The host port a VM of `user`'s forwards to `guest_port`.
fn forwarded(lab: &Lab, user: &User, name: &str, guest_port: u16) -> String {
    let ports: Vec<serde_json::Value> =
        serde_json::from_str(lab.mvm(user, &["port", name, "--json"]).ok()).unwrap();
    ports.iter().find(|p| p["guest"] == guest_port).expect("the template forwards the port")["host"]
        .to_string()
}

/// A member's VM gives its guest's users ids of their own: guest ids are the member's
/// subordinate ids on the host (`/etc/subuid`, given with the `usermod` line `mvm doctor`
/// prints), so the database templates work without root. PostgreSQL owns its
/// data as `postgres` in the guest, as a subordinate id on the host, across a restart;
/// Django migrates into it; `mvm rm` removes files of those ids.
#[test]
fn a_members_database_vms_keep_their_owners() {
    let test = "a_members_database_vms_keep_their_owners";
    let _serial = support::e2e::ONE_AT_A_TIME.lock().unwrap_or_else(|poison| poison.into_inner());
    if !support::e2e::e2e_ready(test)
        || !support::require_program(test, "setpriv")
        || !support::require_program(test, "psql")
        || !support::require_program(test, "mmdebstrap")
    {
        return;
    }
    Run::from_output(Command::new(support::mvm_binary()).arg("setup").output().unwrap()).ok();
    let (host, internet) = host_with_uplink("dhost", "dinet");
    let mut lab =
        Lab { host, _internet: internet, mvm: "/usr/local/bin/mvm".into(), users: vec![CAROL], vms: vec![] };
    let carol = User::create(CAROL);
    lab.vms = vec!["upg".into(), "uapp".into()];
    // Subordinate ids as doctor says to add them (a range no one else has), unless
    // useradd gave her some (where /etc/subuid exists).
    if mvm::host::subids::SubIds::of(CAROL, carol.uid).is_none() {
        let doctor = lab.mvm(&carol, &["doctor"]);
        let hint = doctor.stdout.lines().find(|line| line.contains("usermod --add-subuids"));
        let hint =
            hint.unwrap_or_else(|| panic!("doctor says nothing of her missing ids:\n{}", doctor.stdout));
        let line = hint[hint.find("hint: ").unwrap() + 6..].replace("sudo ", "");
        assert!(line.ends_with(CAROL), "{hint}");
        run_ok(Command::new("sh").args(["-c", &line]));
    }
    let sub = mvm::host::subids::SubIds::of(CAROL, carol.uid).expect("usermod gave no subordinate ids");
    let doctor = lab.mvm(&carol, &["doctor"]);
    assert!(doctor.stdout.contains(&format!("host ids {}-", sub.uid)), "{}", doctor.stdout);

    lab.mvm(&carol, &["create", "upg", "--template", "postgres"]).ok();
    let layer = lab.package_layer(&carol, "upg");
    if !layer["built"].as_bool().unwrap() {
        lab.build_layer(&layer);
    }
    lab.mvm(&carol, &["start", "upg"]).ok();
    let port = forwarded(&lab, &carol, "upg", 5432);
    assert_eq!(psql_as(&lab, &carol, &port, "select 40 + 2"), "42");
    psql_as(&lab, &carol, &port, "create table kept (v text); insert into kept values ('still here')");
    let owner =
        lab.mvm(&carol, &["shell", "upg", "--", "stat", "-c", "%U %u", "/var/lib/mvm/postgresql/data"]);
    let guest_uid: u32 = owner.ok().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(owner.stdout.starts_with("postgres "), "{}", owner.stdout);
    let data = Path::new("/var/lib/microvms/upg/files/volumes/pgdata/data");
    assert_eq!(std::fs::metadata(data).unwrap().uid(), sub.uid + guest_uid, "not the subordinate id");
    lab.mvm(&carol, &["restart", "upg"]).ok();
    assert_eq!(psql_as(&lab, &carol, &port, "select v from kept"), "still here");
    lab.mvm(&carol, &["stop", "upg"]).ok();
    lab.mvm(&carol, &["rm", "upg"]).ok();
    assert!(!Path::new("/var/lib/microvms/upg").exists(), "rm left files of the subordinate ids");

    let project = carol.project("app");
    support::django::write_project(&project);
    support::django::use_postgres(&project);
    run_ok(Command::new("chown").args(["-R", &format!("{0}:{0}", carol.name)]).arg(&project));
    lab.mvm(
        &carol,
        &["create", "uapp", "--template", "django-postgres", "--project", project.to_str().unwrap()],
    )
    .ok();
    let layer = lab.package_layer(&carol, "uapp");
    if !layer["built"].as_bool().unwrap() {
        lab.build_layer(&layer);
    }
    lab.mvm(&carol, &["start", "uapp"]).ok();
    let db = forwarded(&lab, &carol, "uapp", 5432);
    // The web process migrates into the database process (done once past ten).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let applied: u32 =
            psql_as(&lab, &carol, &db, "select count(*) from django_migrations").parse().unwrap();
        if applied > 10 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {applied} migrations");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    lab.mvm(&carol, &["stop", "uapp"]).ok();
    lab.mvm(&carol, &["rm", "uapp"]).ok();
    assert!(!Path::new("/var/lib/microvms/uapp").exists(), "rm left files of the subordinate ids");
}
