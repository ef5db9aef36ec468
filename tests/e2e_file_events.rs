//! End-to-end tier: what the host does to a project reaches the guest's watchers as real
//! file events, and the guest reads the new state at once (issue 22). Real VMs under
//! QEMU, real watchers in the guest: `inotifywait` (inotify-tools), Node's `fs.watch` on
//! each directory (as chokidar and webpack use it; Node 20's own recursive mode polls),
//! Python's watchdog (from PyPI, which `scripts/setup` installs), and `node --watch`
//! serving through a forward.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::e2e::{begin, http_get, Lab};

/// Where `scripts/setup` installs watchdog from PyPI for the guest's Python.
const WATCHDOG_PATH: &str = "/usr/local/lib/mvm-tests/python";

/// Starts the three watchers on `project` in guest `name`, detached, each logging to
/// `/tmp/NAME.log`; returns once all three watch.
fn start_watchers(lab: &Lab, name: &str, project: &str) {
    let script = format!(
        r#"cat > /tmp/w.py <<'EOF'
import sys, time
from watchdog.observers import Observer
from watchdog.events import FileSystemEventHandler
class Log(FileSystemEventHandler):
    def on_any_event(self, event):
        print(event.event_type, event.src_path, getattr(event, "dest_path", ""), flush=True)
observer = Observer()
observer.schedule(Log(), sys.argv[1], recursive=True)
observer.start()
open("/tmp/py.ready", "w").close()
while True:
    time.sleep(1)
EOF
cat > /tmp/w.js <<'EOF'
const fs = require("fs");
for (const dir of ["", "sub"]) {{
  fs.watch(`${{process.argv[2]}}/${{dir}}`, (kind, file) => console.log(kind, dir ? `${{dir}}/${{file}}` : file));
}}
fs.writeFileSync("/tmp/node.ready", "");
setInterval(() => {{}}, 1000);
EOF
setsid -f inotifywait -m -r --format "%e %w%f" {project} > /tmp/inotify.log 2>&1 < /dev/null
PYTHONPATH={WATCHDOG_PATH} setsid -f /usr/bin/python3 /tmp/w.py {project} > /tmp/py.log 2>&1 < /dev/null
setsid -f node /tmp/w.js {project} > /tmp/node.log 2>&1 < /dev/null
for i in $(seq 600); do
  grep -q "Watches established" /tmp/inotify.log 2>/dev/null && [ -e /tmp/py.ready ] && [ -e /tmp/node.ready ] && exit 0
  sleep 0.1
done
echo "watchers did not start"; cat /tmp/*.log; exit 1"#
    );
    lab.sh(name, &script).ok();
}

/// Waits until guest `name`'s log `log` holds every one of `wanted`, with `{p}` standing
/// for the project's path; fails naming what is missing.
fn until_logged(lab: &Lab, name: &str, log: &str, project: &str, wanted: &[&str]) {
    let wanted: Vec<String> = wanted.iter().map(|line| line.replace("{p}", project)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = lab.sh(name, &format!("cat /tmp/{log}")).ok().to_string();
        let missing: Vec<&String> = wanted.iter().filter(|line| !text.contains(line.as_str())).collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: {log} lacks {missing:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// On the host: a file's content changed, one made, one's mode changed, one deleted, one
/// moved between directories, a directory made with a file in it, and a file replaced
/// the way editors save (write a temporary file, rename it over).
fn change_on_the_host(project: &Path) {
    std::fs::write(project.join("edit.txt"), "edited on the host\n").unwrap();
    std::fs::write(project.join("made.txt"), "made\n").unwrap();
    std::fs::set_permissions(project.join("mode.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    std::fs::remove_file(project.join("sub/gone.txt")).unwrap();
    std::fs::rename(project.join("move.txt"), project.join("sub/moved.txt")).unwrap();
    std::fs::create_dir(project.join("newdir")).unwrap();
    std::fs::write(project.join("newdir/deep.txt"), "deep\n").unwrap();
    std::fs::write(project.join(".saved.swp"), "saved by an editor\n").unwrap();
    std::fs::rename(project.join(".saved.swp"), project.join("saved.txt")).unwrap();
}

fn project_with_files(lab: &Lab, name: &str) -> std::path::PathBuf {
    let project = lab.sandbox.mkdir(name);
    std::fs::create_dir(project.join("sub")).unwrap();
    for file in ["edit.txt", "mode.txt", "sub/gone.txt", "move.txt", "saved.txt", "untouched.txt"] {
        std::fs::write(project.join(file), "original\n").unwrap();
    }
    project
}

#[test]
fn host_changes_are_real_events_and_fresh_reads_in_the_guest() {
    let Some((_serial, lab)) = begin("host_changes_are_real_events_and_fresh_reads_in_the_guest") else {
        return;
    };
    let overlay = project_with_files(&lab, "ov");
    let rw = project_with_files(&lab, "rw");
    let (ov_path, rw_path) = (overlay.to_str().unwrap(), rw.to_str().unwrap());
    lab.mvm(&["create", "ov", "--project", ov_path]).ok();
    lab.mvm(&["create", "rw", "--project", rw_path, "--mount", "rw"]).ok();
    let started = lab.mvm(&["start", "ov"]);
    started.ok();
    assert!(!started.stderr.contains("no file events"), "{}", started.stderr);
    lab.mvm(&["start", "rw"]).ok();
    let untouched = std::fs::metadata(overlay.join("untouched.txt")).unwrap();

    for (name, project) in [("ov", &overlay), ("rw", &rw)] {
        let p = project.to_str().unwrap();
        // The guest has read every file first: its caches hold the old state.
        lab.sh(
            name,
            &format!("cat {p}/edit.txt {p}/saved.txt {p}/sub/gone.txt > /dev/null; ls {p}/made.txt || true"),
        )
        .ok();
        start_watchers(&lab, name, p);
        change_on_the_host(project);
        let inotify = [
            "MODIFY {p}/edit.txt",
            "CLOSE_WRITE,CLOSE {p}/edit.txt",
            "CREATE {p}/made.txt",
            "ATTRIB {p}/mode.txt",
            "DELETE {p}/sub/gone.txt",
            "MOVED_FROM {p}/move.txt",
            "MOVED_TO {p}/sub/moved.txt",
            "CREATE,ISDIR {p}/newdir",
            "MOVED_TO {p}/saved.txt",
        ];
        until_logged(&lab, name, "inotify.log", p, &inotify);
        let watchdog = [
            "modified {p}/edit.txt",
            "created {p}/made.txt",
            "deleted {p}/sub/gone.txt",
            "moved {p}/move.txt {p}/sub/moved.txt",
            "created {p}/newdir",
        ];
        until_logged(&lab, name, "py.log", p, &watchdog);
        let node = [
            "change edit.txt",
            "rename made.txt",
            "rename sub/gone.txt",
            "rename sub/moved.txt",
            "rename saved.txt",
        ];
        until_logged(&lab, name, "node.log", p, &node);
        // Nothing outside the project was reported.
        let all = lab.sh(name, "cat /tmp/inotify.log").ok().to_string();
        assert!(all.lines().skip(2).all(|line| line.contains(p)), "{all}");
        // Reads are fresh: the new content, the deleted file gone, the moved one there.
        let state = lab
            .sh(name, &format!("cd {p} && cat edit.txt saved.txt newdir/deep.txt && ls . sub"))
            .ok()
            .to_string();
        for expected in ["edited on the host", "saved by an editor", "deep", "moved.txt", "made.txt"] {
            assert!(state.contains(expected), "{name}: {expected} not in\n{state}");
        }
        assert!(!state.contains("gone.txt") && !state.contains("move.txt\n"), "{name}:\n{state}");
        assert_eq!(lab.sh(name, &format!("stat -c %a {p}/mode.txt")).ok(), "600\n");
    }

    // Delivering events changed nothing: no copy-up, the host's times as they were.
    assert_eq!(lab.mvm(&["diff", "ov"]).ok(), "");
    let after = std::fs::metadata(overlay.join("untouched.txt")).unwrap();
    assert_eq!(
        (after.mtime(), after.mtime_nsec(), after.atime()),
        (untouched.mtime(), untouched.mtime_nsec(), untouched.atime())
    );

    // In rw mode the guest's own write is one event, not echoed back by the host.
    lab.sh("rw", &format!("echo mine > {rw_path}/own.txt")).ok();
    std::thread::sleep(Duration::from_secs(3));
    let log = lab.sh("rw", "cat /tmp/inotify.log").ok().to_string();
    assert_eq!(log.matches(&format!("CREATE {rw_path}/own.txt")).count(), 1, "{log}");
    assert_eq!(log.matches(&format!("CLOSE_WRITE,CLOSE {rw_path}/own.txt")).count(), 1, "{log}");

    // After a reboot inside the guest, a host edit is one event still: the last boot's
    // watcher ended with it.
    let boot_id = "cat /proc/sys/kernel/random/boot_id";
    let before = lab.sh("rw", boot_id).ok().to_string();
    let _ = lab.mvm(&["shell", "rw", "--", "reboot"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = lab.sh("rw", boot_id);
        if now.code == 0 && now.stdout != before {
            break;
        }
        assert!(Instant::now() < deadline, "rw did not come back after reboot");
        std::thread::sleep(Duration::from_millis(500));
    }
    let watch = format!(
        "setsid -f inotifywait -m --format '%e %w%f' {rw_path} > /tmp/again.log 2>&1 < /dev/null; sleep 2"
    );
    lab.sh("rw", &watch).ok();
    for file in ["after-reboot.txt", "and-again.txt"] {
        std::fs::write(rw.join(file), "x\n").unwrap();
        let heard = format!("CLOSE_WRITE,CLOSE {rw_path}/{file}");
        until_logged(&lab, "rw", "again.log", rw_path, &[heard.as_str()]);
        std::thread::sleep(Duration::from_secs(2));
        let log = lab.sh("rw", "cat /tmp/again.log").ok().to_string();
        assert_eq!(log.matches(&heard).count(), 1, "{log}");
    }

    // A dev server that reloads on change serves the host's edit through its forward.
    std::fs::write(overlay.join("message.json"), "\"before\"\n").unwrap();
    std::fs::write(
        overlay.join("server.js"),
        "const message = require('./message.json');\n\
         require('http').createServer((_, res) => res.end(message + '\\n')).listen(3000);\n",
    )
    .unwrap();
    lab.sh(
        "ov",
        &format!("cd {ov_path} && setsid -f node --watch server.js > /tmp/server.log 2>&1 < /dev/null"),
    )
    .ok();
    lab.mvm(&["port", "ov", "18080:3000"]).ok();
    let reply = http_get(&lab.host, "127.0.0.1:18080", "/", Duration::from_secs(60)).unwrap();
    assert!(reply.contains("before"), "{reply}");
    std::fs::write(overlay.join("message.json"), "\"after\"\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = http_get(&lab.host, "127.0.0.1:18080", "/", Duration::from_secs(10)).unwrap_or_default();
        if reply.contains("after") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never reloaded: {reply}\n{}",
            lab.sh("ov", "cat /tmp/server.log").stdout
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    for name in ["ov", "rw"] {
        lab.mvm(&["stop", name]).ok();
    }
    lab.assert_nothing_left();
}

/// Without the guest module (here: one that is not root's alone, so never loaded) the
/// VM runs, says it has no file events, and its watchers hear nothing: the events above
/// come from the module and nowhere else.
#[test]
fn without_the_module_the_vm_says_so_and_hears_nothing() {
    let Some((_serial, lab)) = begin("without_the_module_the_vm_says_so_and_hears_nothing") else { return };
    let project = project_with_files(&lab, "plain");
    let p = project.to_str().unwrap();
    lab.mvm(&["create", "plain", "--project", p, "--mount", "rw"]).ok();
    // A first start builds the module; then someone other than root could have changed it.
    lab.mvm(&["start", "plain"]).ok();
    lab.mvm(&["stop", "plain"]).ok();
    let store = lab.sandbox.state_dir().join(".kmod");
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let started = lab.mvm(&["start", "plain"]);
    started.ok();
    assert!(
        started.stderr.contains("no file events in the guest") && started.stderr.contains("not root's alone"),
        "{}",
        started.stderr
    );
    assert!(lab.mvm(&["logs", "plain", "--source", "supervisor"]).ok().contains("no file events"));
    lab.sh("plain", &format!("setsid -f inotifywait -m -r {p} > /tmp/inotify.log 2>&1 < /dev/null; sleep 2"))
        .ok();
    std::fs::write(project.join("edit.txt"), "edited\n").unwrap();
    std::fs::write(project.join("made.txt"), "made\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let log = lab.sh("plain", "cat /tmp/inotify.log").ok().to_string();
    assert!(!log.contains("edit.txt") && !log.contains("made.txt"), "{log}");
    lab.mvm(&["stop", "plain"]).ok();
}
