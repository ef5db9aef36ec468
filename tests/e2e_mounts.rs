//! End-to-end tier: project mount modes, persistence, volumes, and reviewing what a VM
//! changed (`diff`, `apply`, `discard`), with real VMs under QEMU.

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use support::e2e::{begin, Lab};
use support::Run;

fn start_all(lab: &Lab, names: &[&str]) {
    let starts: Vec<_> = names
        .iter()
        .map(|name| {
            lab.command(&["start", name]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for start in starts {
        Run::from_output(start.wait_with_output().unwrap()).ok();
    }
}

#[test]
fn overlay_rw_ro_persistence_volumes_and_review() {
    let Some((_serial, lab)) = begin("overlay_rw_ro_persistence_volumes_and_review") else { return };
    let mut projects = Vec::new();
    for name in ["eph", "keep", "rwp", "rop"] {
        let project = lab.sandbox.mkdir(name);
        // A directory anyone may write, for the guest's writes as another user.
        let shared = project.join("sub");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        std::fs::write(project.join("edit.txt"), "original\n").unwrap();
        std::fs::write(project.join("gone.txt"), "delete me\n").unwrap();
        projects.push(project);
    }
    // The invoking user (nobody, below) owns their projects, as a developer does.
    for project in &projects[1..3] {
        std::os::unix::fs::chown(project, Some(65534), Some(65534)).unwrap();
    }
    let arg = |i: usize| projects[i].to_str().unwrap().to_string();
    lab.mvm(&["create", "eph", "--project", &arg(0)]).ok();
    lab.mvm(&["create", "keep", "--project", &arg(1), "--persist", "--volume", "data:/srv/data"]).ok();
    lab.mvm(&["create", "rwp", "--project", &arg(2), "--mount", "rw"]).ok();
    lab.mvm(&["create", "rop", "--project", &arg(3), "--mount", "ro"]).ok();
    start_all(&lab, &["eph", "keep", "rwp", "rop"]);

    // Overlay: the guest edits, creates and deletes; the project is untouched.
    let keep = arg(1);
    let script = format!("cd {keep} && echo edited > edit.txt && echo fresh > new.txt && rm gone.txt");
    lab.sh("keep", &script).ok();
    assert_eq!(std::fs::read_to_string(projects[1].join("edit.txt")).unwrap(), "original\n");
    assert!(projects[1].join("gone.txt").exists() && !projects[1].join("new.txt").exists());
    assert_eq!(lab.mvm(&["diff", "keep"]).ok(), "M edit.txt\nD gone.txt\nA new.txt\n");
    let json: serde_json::Value = serde_json::from_str(lab.mvm(&["diff", "keep", "--json"]).ok()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let patch = lab.mvm(&["diff", "keep", "--patch", "edit.txt"]).ok().to_string();
    assert!(patch.contains("-original") && patch.contains("+edited"), "{patch}");
    // A host edit after the guest's copy is a conflict for apply.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(projects[1].join("edit.txt"), "host edit\n").unwrap();
    lab.mvm(&["apply", "keep"]).fails(4, &["changed after VM 'keep' made its own: edit.txt", "--force"]);
    lab.mvm(&["apply", "keep", "new.txt", "gone.txt"]).ok();
    assert_eq!(std::fs::read_to_string(projects[1].join("new.txt")).unwrap(), "fresh\n");
    assert!(!projects[1].join("gone.txt").exists());
    assert_eq!(lab.mvm(&["diff", "keep"]).ok(), "M edit.txt\n");
    lab.mvm(&["apply", "keep", "--force"]).ok();
    assert_eq!(std::fs::read_to_string(projects[1].join("edit.txt")).unwrap(), "edited\n");
    lab.sh("keep", &format!("echo later > {keep}/later.txt && echo kept > /srv/data/file")).ok();
    // In the upper layer too, what the guest writes belongs to the invoking user.
    let owned = lab
        .command(&["shell", "keep", "--", "sh", "-c", &format!("echo mine > {keep}/sub/mine.txt")])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .env("SUDO_USER", "nobody")
        .output()
        .unwrap();
    assert!(owned.status.success(), "{}", String::from_utf8_lossy(&owned.stderr));
    let upper_file = lab.sandbox.state_dir().join("keep/files/layer/upper/sub/mine.txt");
    let meta = std::fs::metadata(&upper_file).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    lab.mvm(&["discard", "keep", "sub"]).fails(4, &["is running"]);

    // rw: the guest's write lands in the project, owned by the project's owner (the
    // invoking user), even when guest root wrote it.
    std::fs::set_permissions(&projects[2], std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let rw_file = projects[2].join("by-guest.txt");
    let write = lab
        .command(&["shell", "rwp", "--", "sh", "-c", &format!("echo hi > {}", rw_file.display())])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .env("SUDO_USER", "nobody")
        .output()
        .unwrap();
    assert!(write.status.success(), "{}", String::from_utf8_lossy(&write.stderr));
    let meta = std::fs::metadata(&rw_file).expect("the guest's write reached the project");
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    lab.sh("rwp", &format!("echo root > {}/by-root.txt", arg(2))).ok();
    let meta = std::fs::metadata(projects[2].join("by-root.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "guest root left a host-root file");
    lab.mvm(&["diff", "rwp"]).fails(2, &["--mount rw"]);

    // ro: writes fail in the guest.
    let denied = lab.sh("rop", &format!("echo x > {}/edit.txt", arg(3)));
    assert_ne!(denied.code, 0);
    assert!(denied.stderr.contains("Read-only file system"), "{}", denied.stderr);

    // Restart: the ephemeral layer is empty, the persistent one and the volume are kept.
    lab.sh("eph", &format!("echo scratch > {}/scratch.txt", arg(0))).ok();
    assert_eq!(lab.mvm(&["diff", "eph"]).ok(), "A scratch.txt\n");
    for name in ["eph", "keep"] {
        lab.mvm(&["stop", name]).ok();
    }
    assert_eq!(lab.mvm(&["diff", "eph"]).ok(), "", "an ephemeral layer is gone at stop");
    assert_eq!(lab.mvm(&["diff", "keep"]).ok(), "A later.txt\nA sub/mine.txt\n");
    start_all(&lab, &["eph", "keep"]);
    assert_eq!(lab.sh("keep", "cat /srv/data/file").ok(), "kept\n");
    assert_eq!(lab.sh("keep", &format!("cat {keep}/later.txt")).ok(), "later\n");
    assert_ne!(lab.sh("eph", &format!("cat {}/scratch.txt", arg(0))).code, 0);
    for name in ["eph", "keep", "rwp", "rop"] {
        lab.mvm(&["stop", name]).ok();
    }
    // A stopped persistent VM's changes can be dropped.
    assert_eq!(lab.mvm(&["discard", "keep", "sub"]).ok(), "discarded 1 change\n");
    assert_eq!(lab.mvm(&["diff", "keep"]).ok(), "A later.txt\n");
    assert_eq!(lab.mvm(&["discard", "keep"]).ok(), "discarded 1 change\n");
    assert_eq!(lab.mvm(&["diff", "keep"]).ok(), "");
    lab.assert_nothing_left();
}
