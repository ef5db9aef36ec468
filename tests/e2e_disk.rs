//! End-to-end tier: a VM takes only the disk it was given. A guest writing twice its
//! limit — into `/var`, into its own `/`, into the project's overlay — gets ENOSPC and
//! keeps answering; the host (here a small tmpfs state dir the test mounts) loses at most
//! the limit and can still make another VM; what the guest deletes comes back.

mod support;

use std::path::{Path, PathBuf};

use support::e2e::{begin, Lab};

const GIB: u64 = 1 << 30;

/// A tmpfs mounted on the lab's state dir; its VMs removed and it unmounted when dropped,
/// even when the test fails half-way.
struct SmallStateDir<'a> {
    lab: &'a Lab,
    dir: PathBuf,
}

impl<'a> SmallStateDir<'a> {
    fn mount(lab: &'a Lab, size: &str) -> Self {
        let dir = lab.sandbox.state_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let options = format!("size={size},mode=0755");
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap();
        SmallStateDir { lab, dir }
    }

    fn used_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        (stat.blocks() - stat.blocks_free()) * stat.fragment_size()
    }
}

impl Drop for SmallStateDir<'_> {
    fn drop(&mut self) {
        for vm in self.lab.sandbox.list_json() {
            let _ = self.lab.command(&["rm", "--force", vm["name"].as_str().unwrap_or_default()]).output();
        }
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy().into_owned();
    table
        .lines()
        .filter(|line| line.split(' ').nth(4).is_some_and(|at| at.starts_with(&format!("{dir}/"))))
        .map(String::from)
        .collect()
}

#[test]
fn a_guest_past_its_disk_limit_gets_enospc_and_the_host_keeps_the_rest() {
    let test = "a_guest_past_its_disk_limit_gets_enospc_and_the_host_keeps_the_rest";
    let Some((_serial, lab)) = begin(test) else { return };
    let project = lab.sandbox.mkdir("proj");
    let state = SmallStateDir::mount(&lab, "5G");
    let empty = state.used_bytes();
    let project_arg = project.to_str().unwrap();
    lab.mvm(&["create", "small", "--disk", "2G", "--project", project_arg]).ok();
    lab.mvm(&["start", "small"]).ok();
    let vm = &lab.sandbox.list_json()[0];
    assert_eq!(vm["disk"]["limit_bytes"], 2 * GIB, "{vm}");

    // Twice the limit, into each place a guest writes; each ends in ENOSPC.
    for target in ["/var/tmp/fill", "/root/fill", &format!("{project_arg}/fill")] {
        let wrote = lab.sh(
            "small",
            &format!("dd if=/dev/zero of={target} bs=1M count=4096 conv=fsync 2>&1; echo rc=$?"),
        );
        let out = wrote.ok();
        assert!(out.contains("No space left on device") && !out.contains("rc=0"), "{target}: {out}");
    }
    assert_eq!(lab.sh("small", "echo alive").ok(), "alive\n", "the VM stopped answering");
    let taken = state.used_bytes() - empty;
    eprintln!("the host lost {} MiB to a guest that wrote 12 GiB under a 2 GiB limit", taken >> 20);
    assert!(taken <= 2 * GIB + (32 << 20), "the VM took {taken} bytes of the host's disk");
    assert!(taken > GIB, "the guest's writes did not reach the host ({taken} bytes)");
    // The host can still make a VM.
    lab.mvm(&["create", "second"]).ok();

    // What the guest deletes goes back to the host (both disks discard).
    lab.sh(
        "small",
        &format!("rm -f /var/tmp/fill /root/fill {project_arg}/fill && sync && fstrim / 2>/dev/null; true"),
    )
    .ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while state.used_bytes() - empty > 512 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let kept = state.used_bytes() - empty;
    eprintln!("{} MiB held after the guest deleted its files", kept >> 20);
    assert!(kept <= 512 << 20, "the host still holds {kept} bytes after the guest deleted its files");

    // A stopped VM holds no mount; rm takes its disk.
    lab.mvm(&["stop", "small"]).ok();
    assert!(mounts_under(&state.dir).is_empty(), "{:?}", mounts_under(&state.dir));
    lab.mvm(&["rm", "small"]).ok();
    let disks: Vec<_> = std::fs::read_dir(state.dir.join(".disks"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    // Only its lock, root's (a later VM of the name takes it).
    assert!(disks.iter().all(|name| !name.to_string_lossy().ends_with(".img")), "disks left: {disks:?}");
}
