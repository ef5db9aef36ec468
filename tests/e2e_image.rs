//! End-to-end tier: images. A real Debian image built with mmdebstrap from Debian's
//! archive (the host's network, as `scripts/setup` uses; the guests have none), two VMs
//! made from it sharing its tree read-only, each with its own system layer; no file of
//! the host's `/etc` or `/usr` in them; bad names and failed builds leave nothing.

mod support;

use std::path::Path;
use std::process::Command;

use sha2::Digest;

use support::debs::{self, Repo};
use support::e2e::begin;

#[test]
fn vms_boot_from_a_debian_image_built_once_and_share_it() {
    let test = "vms_boot_from_a_debian_image_built_once_and_share_it";
    let Some((_serial, lab)) = begin(test) else { return };
    if !support::require_program(test, "mmdebstrap") || !support::require_program(test, "dpkg-deb") {
        return;
    }
    // Bad input first: an unknown image, a bad name, no network (a namespace with none),
    // a package Debian does not have.
    lab.mvm(&["create", "nope", "--image", "nosuch"]).fails(3, &["no image 'nosuch'", "mvm image build"]);
    lab.mvm(&["image", "build", "Bad_Name"]).fails(2, &["invalid image name"]);
    let offline = lab.sandbox.command(&["image", "build", "offline"]);
    let output = Command::new("unshare")
        .arg("--net")
        .arg(offline.get_program())
        .args(offline.get_args())
        .envs(offline.get_envs().filter_map(|(key, value)| Some((key, value?))))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    support::Run::from_output(output).fails(1, &["cannot build image 'offline'", "Failed to fetch"]);
    // Builds use the host's own network, as scripts/setup does (the guests have none).
    let failed = lab.sandbox.mvm(&["image", "build", "broken", "--include", "mvm-no-such-package"]);
    failed.fails(1, &["cannot build image 'broken'", "mvm-no-such-package"]);
    let store = lab.sandbox.state_dir().join(mvm::image::STORE);
    let left: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "a failed build left {left:?}");

    let built = lab.sandbox.mvm(&["image", "build", "deb"]);
    eprintln!("{}", built.ok().trim());
    let rootfs = mvm::image::rootfs(&mvm::state::Paths::under(lab.sandbox.root()), &"deb".parse().unwrap());
    let digest = || sha2::Sha256::digest(std::fs::read(&rootfs).unwrap());
    let before = digest();
    // The tree is a disk image: no program of it (its setuid ones) is a file on the host.
    let files: Vec<_> = std::fs::read_dir(rootfs.parent().unwrap()).unwrap().collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let listed: serde_json::Value = serde_json::from_str(lab.mvm(&["image", "list", "--json"]).ok()).unwrap();
    assert_eq!(listed[0]["name"], "deb");
    assert_eq!(listed[0]["suite"], "bookworm");
    lab.sandbox.mvm(&["image", "build", "deb"]).fails(4, &["image 'deb' exists"]);

    // A mark the host's /etc has and no image could.
    let marker = format!("/etc/mvm-test-marker-{}", std::process::id());
    std::fs::write(&marker, "host").unwrap();
    let project = lab.sandbox.mkdir("proj");
    let repo = Repo::new(&project.join("repo"), &[debs::download("hello")]);
    let project_arg = project.to_str().unwrap();
    lab.mvm(&["create", "one", "--image", "deb", "--project", project_arg]).ok();
    lab.mvm(&["create", "two", "--image", "deb"]).ok();
    let _ = std::fs::remove_file(&marker);
    assert!(
        !lab.sandbox.state_dir().join("one/files/etc").exists(),
        "an image's VM got a copy of the host's /etc"
    );
    lab.mvm(&["start", "one"]).ok();
    let seen = lab.sh(
        "one",
        &format!(
            "test ! -e {marker} && . /etc/os-release && echo $VERSION_CODENAME && command -v python3 || true"
        ),
    );
    // Debian's minimal system: not the host's /usr (which has python3).
    assert_eq!(seen.ok(), "bookworm\n", "the VM sees the host's /etc or /usr");
    // Guest root installs into its own layer, as on the host's /usr.
    let install = format!("{} && hello", repo.install("hello"));
    let installed = lab.mvm(&["shell", "one", "--user", "root", "--", "sh", "-c", &install]);
    assert!(installed.ok().contains("Hello, world!"), "{}", installed.stdout);
    lab.mvm(&["stop", "one"]).ok();

    // The second VM shares the image, not the first one's layer.
    lab.mvm(&["start", "two"]).ok();
    let other = lab.sh("two", "command -v hello || echo none");
    assert_eq!(other.ok(), "none\n");
    lab.mvm(&["stop", "two"]).ok();
    assert!(digest() == before, "a guest wrote into the shared image");
    for vm in ["one", "two"] {
        let disk = lab.sandbox.state_dir().join(vm).join(mvm::state::system_disk::FILE);
        let used = std::fs::metadata(&disk).map(|meta| std::os::unix::fs::MetadataExt::blocks(&meta) * 512);
        eprintln!("VM '{vm}' from image 'deb' takes {} bytes of its own", used.unwrap());
    }

    // An image in use stays.
    lab.mvm(&["image", "rm", "deb"]).fails(4, &["one", "two"]);
    lab.mvm(&["rm", "one"]).ok();
    lab.mvm(&["rm", "two"]).ok();
    lab.mvm(&["image", "rm", "deb"]).ok();
    assert!(!Path::new(&rootfs).exists());
    assert_eq!(lab.mvm(&["image", "list", "--json"]).ok().trim(), "[]");
    lab.assert_nothing_left();
}
