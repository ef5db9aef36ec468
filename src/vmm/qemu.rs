//! QEMU `-M microvm` command lines (QEMU 7.2), and vhost-device-vsock's, which gives QEMU
//! the same hybrid vsock cloud-hypervisor has.

use std::path::Path;

use crate::vmm::{LaunchSpec, GUEST_CID};

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// The argv (without the program) that launches `spec`; `vhost_vsock` is the socket
/// vhost-device-vsock serves QEMU on.
pub fn args(spec: &LaunchSpec, accel: Accel, vhost_vsock: &Path) -> Vec<String> {
    let memory = format!("{}M", spec.memory_mib);
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut args: Vec<String> = [
        "-M",
        "microvm,rtc=on",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        &memory,
        "-smp",
        &spec.cpus.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-kernel",
        &spec.kernel.display().to_string(),
        "-initrd",
        &spec.initramfs.display().to_string(),
        "-append",
        &spec.cmdline,
        "-object",
        &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
        "-numa",
        "node,memdev=mem",
        "-global",
        "virtio-mmio.force-legacy=false",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    for (index, share) in spec.shares.iter().enumerate() {
        args.push("-chardev".into());
        args.push(format!("socket,id=fs{index},path={}", share.socket.display()));
        args.push("-device".into());
        args.push(format!("vhost-user-fs-device,chardev=fs{index},tag={}", share.tag));
    }
    for (index, disk) in spec.disks.iter().enumerate() {
        // Freed blocks go back to the host: the image stays sparse.
        let mut drive = format!(
            "file={},if=none,id=disk{index},format=raw,discard=unmap,detect-zeroes=unmap",
            disk.path.display()
        );
        if disk.read_only {
            drive.push_str(",readonly=on");
        }
        args.extend([
            "-drive".to_string(),
            drive,
            "-device".to_string(),
            format!("virtio-blk-device,drive=disk{index},serial={}", disk.serial),
        ]);
    }
    args.extend([
        "-netdev".to_string(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
        "-device".to_string(),
        format!("virtio-net-device,netdev=n0,mac={}", spec.mac),
        "-chardev".to_string(),
        format!("socket,id=vs0,path={}", vhost_vsock.display()),
        "-device".to_string(),
        "vhost-user-vsock-device,chardev=vs0".to_string(),
        // Pages the guest frees go back to the host (punched out of the shared memory),
        // and an inflated balloon gives way before the guest runs out.
        "-device".to_string(),
        BALLOON.to_string(),
        // Appending, so the supervisor can cap the log by truncating it under QEMU.
        "-chardev".to_string(),
        format!("file,id=console,path={},append=on", spec.console_log.display()),
        "-serial".to_string(),
        "chardev:console".to_string(),
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", spec.control_socket.display()),
    ]);
    args
}

/// The balloon device: free page reporting, no target size of its own.
pub const BALLOON: &str = "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on";

/// Kernel arguments a guest under TCG needs: its TSC runs at the host's rate, and telling
/// it that rate saves a PIT calibration that fails (and hangs the boot) on a busy host.
pub fn tcg_kernel_args() -> Option<String> {
    crate::host::constant_tsc_khz().map(|khz| format!("tsc_early_khz={khz} tsc=reliable"))
}

/// The argv (without the program) of vhost-device-vsock for one VM.
pub fn vhost_vsock_args(vhost_vsock: &Path, spec: &LaunchSpec) -> Vec<String> {
    vec![
        "--vm".to_string(),
        format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            vhost_vsock.display(),
            spec.vsock_socket.display()
        ),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vmm::Share;

    pub(crate) fn spec() -> LaunchSpec {
        LaunchSpec {
            cpus: 2,
            memory_mib: 1024,
            kernel: "/boot/vmlinuz".into(),
            initramfs: "/run/mvm/web/boot.cpio".into(),
            cmdline: "console=ttyS0 mvm.net=10.200.0.2/24,10.200.0.1".into(),
            shares: vec![
                Share {
                    tag: "usr".into(),
                    dir: "/usr".into(),
                    socket: "/run/mvm/web/fs-usr.sock".into(),
                    read_only: true,
                    ids: crate::vmm::GuestIds::AsIs,
                    overlay_layer: false,
                    changes_pushed: false,
                },
                Share {
                    tag: "etc".into(),
                    dir: "/var/lib/microvms/web/etc".into(),
                    socket: "/run/mvm/web/fs-etc.sock".into(),
                    read_only: false,
                    ids: crate::vmm::GuestIds::AsIs,
                    overlay_layer: false,
                    changes_pushed: false,
                },
            ],
            disks: vec![crate::vmm::Disk {
                path: "/var/lib/microvms/web/system.img".into(),
                serial: "mvm-system".into(),
                read_only: false,
            }],
            tap: "mvmtap0".into(),
            mac: "02:6d:76:00:00:00".into(),
            vsock_socket: "/run/mvm/web/vsock.sock".into(),
            control_socket: "/run/mvm/web/qmp.sock".into(),
            console_log: "/var/lib/microvms/web/log/console.log".into(),
        }
    }

    #[test]
    fn exact_argv_under_tcg() {
        let argv = args(&spec(), Accel::Tcg, Path::new("/run/mvm/web/vhost-vsock.sock")).join(" ");
        assert_eq!(
            argv,
            "-M microvm,rtc=on -accel tcg -cpu max -m 1024M -smp 2 -nodefaults -no-user-config -nographic \
             -no-reboot -kernel /boot/vmlinuz -initrd /run/mvm/web/boot.cpio \
             -append console=ttyS0 mvm.net=10.200.0.2/24,10.200.0.1 \
             -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
             -global virtio-mmio.force-legacy=false \
             -chardev socket,id=fs0,path=/run/mvm/web/fs-usr.sock -device vhost-user-fs-device,chardev=fs0,tag=usr \
             -chardev socket,id=fs1,path=/run/mvm/web/fs-etc.sock -device vhost-user-fs-device,chardev=fs1,tag=etc \
             -drive file=/var/lib/microvms/web/system.img,if=none,id=disk0,format=raw,discard=unmap,detect-zeroes=unmap \
             -device virtio-blk-device,drive=disk0,serial=mvm-system \
             -netdev tap,id=n0,ifname=mvmtap0,script=no,downscript=no \
             -device virtio-net-device,netdev=n0,mac=02:6d:76:00:00:00 \
             -chardev socket,id=vs0,path=/run/mvm/web/vhost-vsock.sock -device vhost-user-vsock-device,chardev=vs0 \
             -device virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on \
             -chardev file,id=console,path=/var/lib/microvms/web/log/console.log,append=on -serial chardev:console \
             -qmp unix:/run/mvm/web/qmp.sock,server=on,wait=off"
        );
    }

    #[test]
    fn a_read_only_disk_is_read_only_to_qemu() {
        let mut spec = spec();
        spec.disks[0].read_only = true;
        let argv = args(&spec, Accel::Tcg, Path::new("/v.sock"));
        let drive = argv.iter().find(|arg| arg.starts_with("file=")).unwrap();
        assert!(drive.ends_with(",readonly=on"), "{drive}");
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let argv = args(&spec(), Accel::Kvm, Path::new("/v.sock"));
        assert!(argv.windows(2).any(|w| w == ["-accel", "kvm"]));
        assert!(argv.windows(2).any(|w| w == ["-cpu", "host"]));
    }

    #[test]
    fn vhost_vsock_argv() {
        assert_eq!(
            vhost_vsock_args(Path::new("/run/mvm/web/vhost-vsock.sock"), &spec()),
            ["--vm", "guest-cid=3,socket=/run/mvm/web/vhost-vsock.sock,uds-path=/run/mvm/web/vsock.sock"]
        );
    }
}
