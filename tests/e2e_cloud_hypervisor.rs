//! End-to-end tier with the real cloud-hypervisor, when it is installed and the host has
//! hardware KVM. No package registry these machines reach has cloud-hypervisor, so here
//! this skips (saying why) and the argv and API tests of the unit tier cover it.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::e2e::{Lab, ONE_AT_A_TIME};

fn cloud_hypervisor_usable(test: &str) -> bool {
    let skip = |reason: &str| {
        // Not a strict skip: cloud-hypervisor cannot be installed on CI's machines.
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {reason}");
        false
    };
    if which::which("cloud-hypervisor").is_err() {
        return skip("cloud-hypervisor is not on PATH (no registry here has it)");
    }
    if !mvm::host::kvm::detect(std::path::Path::new("/")).can_accelerate() {
        return skip("cloud-hypervisor needs hardware KVM, which this host lacks");
    }
    nix::unistd::geteuid().is_root() || skip("needs root")
}

#[test]
fn the_real_api_socket_answers_ping() {
    if !cloud_hypervisor_usable("the_real_api_socket_answers_ping") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut vmm = Command::new("cloud-hypervisor")
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let version = mvm::vmm::api_client::ping(&socket);
    let _ = mvm::vmm::api_client::shutdown_vmm(&socket);
    let _ = vmm.kill();
    let _ = vmm.wait();
    assert!(version.unwrap().contains("version"));
}

#[test]
fn a_vm_boots_under_cloud_hypervisor() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poison| poison.into_inner());
    if !cloud_hypervisor_usable("a_vm_boots_under_cloud_hypervisor") {
        return;
    }
    let lab = Lab::new();
    std::fs::write(
        lab.sandbox.config_file(),
        "[defaults]\nhypervisor = \"cloud-hypervisor\"\nmemory = \"512M\"\n",
    )
    .unwrap();
    let project = lab.sandbox.mkdir("project");
    std::fs::write(project.join("hello.txt"), "hi\n").unwrap();
    lab.mvm(&["create", "web", "--project", project.to_str().unwrap()]).ok();
    lab.mvm(&["start", "web"]).ok();
    assert_eq!(lab.sh("web", "cat hello.txt").ok(), "hi\n");
    assert_eq!(lab.sh("web", "exit 5").code, 5);
    lab.mvm(&["stop", "web"]).ok();
    lab.assert_nothing_left();
}
