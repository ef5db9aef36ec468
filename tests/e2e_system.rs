//! End-to-end tier: software inside the VM. Guest root installs a real Debian package
//! with apt (from a repository the test made, read through the project share: the guest
//! needs no network), writes `/usr/local` and `/opt`; all of it lives in the VM's own
//! system layer, survives a restart, and reaches neither the host's `/usr` nor another
//! VM. A VM made before the host's packages change still boots and installs.

mod support;

use std::path::Path;

use support::debs::{self, Repo};
use support::e2e::{begin, Lab};

/// `mvm shell NAME --user root -- sh -c SCRIPT`.
fn as_root(lab: &Lab, name: &str, script: &str) -> support::Run {
    lab.mvm(&["shell", name, "--user", "root", "--", "sh", "-c", script])
}

#[test]
fn guest_root_installs_software_into_its_own_layer() {
    let test = "guest_root_installs_software_into_its_own_layer";
    let Some((_serial, lab)) = begin(test) else { return };
    if !support::require_program(test, "dpkg-deb") {
        return;
    }
    assert!(!Path::new("/usr/bin/hello").exists(), "the host has GNU hello: this test cannot tell");
    let project = lab.sandbox.mkdir("web");
    let repo = Repo::new(&project.join("repo"), &[debs::download("hello")]);
    let project_arg = project.to_str().unwrap();
    lab.mvm(&["create", "web", "--project", project_arg]).ok();
    lab.mvm(&["create", "other"]).ok();
    lab.mvm(&["create", "scratch", "--ephemeral-system"]).ok();
    lab.mvm(&["start", "web"]).ok();

    let installed = as_root(&lab, "web", &format!("{} && hello", repo.install("hello")));
    assert!(installed.ok().contains("Hello, world!"), "{}", installed.stdout);
    // The package database is the base's: what the host's /usr has is installed already.
    let present = as_root(&lab, "web", &repo.apt_get("install -y bash"));
    assert!(present.ok().contains("bash is already the newest version"), "{}", present.stdout);
    as_root(
        &lab,
        "web",
        "touch /usr/local/bin/mvm-test-tool && mkdir -p /opt/tool && echo kept > /opt/tool/file",
    )
    .ok();
    // npm's global installs land in /usr/local too (a package the test packs, offline).
    let package = npm_package(&project, "mvm-test-cli");
    let npm = format!(
        "npm install -g --offline --no-audit --no-fund {} >/dev/null && mvm-test-cli",
        package.display()
    );
    assert_eq!(as_root(&lab, "web", &npm).ok(), "from npm\n");
    // Guest root may make setuid files and devices in its own layer: they exist only
    // inside the VM's disk image, so none reaches the host.
    as_root(
        &lab,
        "web",
        "cp /usr/bin/hello /usr/local/bin/suid && chmod 4755 /usr/local/bin/suid && mknod /opt/blk b 8 0",
    )
    .ok();
    assert_eq!(lab.sh("web", "stat -c %a /usr/local/bin/suid").ok(), "4755\n");
    let privileged = privileged_files(lab.sandbox.root());
    assert!(privileged.is_empty(), "guest-made privileged files on the host: {privileged:?}");
    // The developer (not root) runs what root installed.
    assert!(lab.mvm(&["shell", "web", "--", "hello"]).ok().contains("Hello, world!"));
    for made in ["/usr/bin/hello", "/usr/local/bin/mvm-test-tool", "/usr/local/bin/mvm-test-cli", "/opt/tool"]
    {
        assert!(!Path::new(made).exists(), "{made} reached the host");
    }
    let inspect: serde_json::Value =
        serde_json::from_str(lab.mvm(&["inspect", "web", "--json"]).ok()).unwrap();
    let used = inspect["system_layer"]["used_bytes"].as_u64().unwrap();
    assert!(inspect["system_layer"]["persistent"].as_bool().unwrap());
    eprintln!("system layer after installing hello: {used} bytes on the host");
    // The project overlay saw none of it.
    assert_eq!(lab.mvm(&["diff", "web"]).ok(), "", "the install changed the project");

    // Kept across a restart.
    lab.mvm(&["restart", "web"]).ok();
    let again = lab.sh("web", "hello && cat /opt/tool/file && dpkg-query -W -f '${Status}' hello");
    assert_eq!(again.ok(), "Hello, world!\nkept\ninstall ok installed");
    lab.mvm(&["stop", "web"]).ok();

    // Another VM has none of it.
    lab.mvm(&["start", "other"]).ok();
    let other = lab
        .sh("other", "command -v hello; ls /usr/local/bin/mvm-test-tool /opt/tool 2>&1; dpkg -s hello 2>&1");
    assert!(!other.stdout.contains("/usr/bin/hello"), "{}", other.stdout);
    assert!(
        other.stdout.contains("No such file") && other.stdout.contains("is not installed"),
        "{}",
        other.stdout
    );
    lab.mvm(&["stop", "other"]).ok();

    // An ephemeral system layer is made anew at every start.
    lab.mvm(&["start", "scratch"]).ok();
    as_root(&lab, "scratch", "touch /usr/local/bin/gone && mkdir /opt/gone").ok();
    lab.mvm(&["restart", "scratch"]).ok();
    let gone = lab.sh("scratch", "ls /usr/local/bin/gone /opt/gone 2>&1; true");
    assert_eq!(gone.ok().matches("No such file").count(), 2, "{}", gone.stdout);
    lab.mvm(&["stop", "scratch"]).ok();

    // rm takes the layer with the VM.
    let disk = lab.sandbox.state_dir().join("web").join(mvm::state::system_disk::FILE);
    assert!(disk.is_file());
    lab.mvm(&["rm", "web"]).ok();
    assert!(!disk.exists(), "the system disk outlived its VM");
    lab.assert_nothing_left();
}

/// Packs npm package `name` (a command printing "from npm") into a tarball in `dir`.
fn npm_package(dir: &Path, name: &str) -> std::path::PathBuf {
    let source = dir.join("npm-src/package");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(
        source.join("package.json"),
        format!(r#"{{"name": "{name}", "version": "1.0.0", "bin": {{"{name}": "cli.js"}}}}"#),
    )
    .unwrap();
    std::fs::write(source.join("cli.js"), "#!/usr/bin/env node\nconsole.log('from npm');\n").unwrap();
    let tarball = dir.join(format!("{name}-1.0.0.tgz"));
    let packed = std::process::Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(source.parent().unwrap())
        .arg("package")
        .output()
        .unwrap();
    assert!(packed.status.success(), "tar: {}", String::from_utf8_lossy(&packed.stderr));
    tarball
}

/// Setuid or setgid files and device nodes beneath `dir` (not following links).
fn privileged_files(dir: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
            let kind = meta.file_type();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if meta.mode() & 0o6000 != 0 || kind.is_block_device() || kind.is_char_device() {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Removes the test's package from the host however the test ends.
struct HostPackage(&'static str);

impl Drop for HostPackage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("dpkg").args(["--purge", self.0]).output();
    }
}

#[test]
fn a_vm_made_before_a_host_package_change_still_boots_and_installs() {
    let test = "a_vm_made_before_a_host_package_change_still_boots_and_installs";
    let Some((_serial, lab)) = begin(test) else { return };
    if !support::require_program(test, "dpkg-deb") {
        return;
    }
    const PACKAGE: &str = "mvm-test-drift";
    const VERSION_FILE: &str = "/usr/share/mvm-test-drift/version";
    let host_package = HostPackage(PACKAGE);
    let debs_dir = lab.sandbox.mkdir("debs");
    let first = debs::build(&debs_dir, PACKAGE, "1", &[(VERSION_FILE, "1\n")]);
    let second = debs::build(&debs_dir, PACKAGE, "2", &[(VERSION_FILE, "2\n")]);
    let project = lab.sandbox.mkdir("app");
    let repo = Repo::new(&project.join("repo"), &[debs::download("hello"), second]);
    lab.mvm(&["create", "app", "--project", project.to_str().unwrap()]).ok();
    lab.mvm(&["start", "app"]).ok();
    as_root(&lab, "app", &repo.install("hello")).ok();
    lab.mvm(&["stop", "app"]).ok();

    // The host installs a package under the VM's feet.
    let installed = std::process::Command::new("dpkg").arg("-i").arg(&first).output().unwrap();
    assert!(installed.status.success(), "{}", String::from_utf8_lossy(&installed.stderr));
    lab.mvm(&["start", "app"]).ok();
    // The VM's own install still runs; the host's new files show through its /usr.
    assert_eq!(lab.sh("app", &format!("hello && cat {VERSION_FILE}")).ok(), "Hello, world!\n1\n");
    // Its package database is its own since its first install: it can install the
    // newer version, into its own layer.
    as_root(&lab, "app", &repo.install(PACKAGE)).ok();
    assert_eq!(lab.sh("app", &format!("cat {VERSION_FILE}")).ok(), "2\n");
    assert_eq!(std::fs::read_to_string(VERSION_FILE).unwrap(), "1\n", "the guest changed the host's file");
    lab.mvm(&["stop", "app"]).ok();
    lab.mvm(&["rm", "app"]).ok();
    drop(host_package);
    lab.assert_nothing_left();
}
