//! cloud-hypervisor (v53) command lines.

use crate::vmm::{LaunchSpec, GUEST_CID};

/// The argv (without the program) that launches `spec`.
pub fn args(spec: &LaunchSpec) -> Vec<String> {
    let mut args = vec![
        "--api-socket".to_string(),
        format!("path={}", spec.control_socket.display()),
        "--kernel".to_string(),
        spec.kernel.display().to_string(),
        "--initramfs".to_string(),
        spec.initramfs.display().to_string(),
        "--cmdline".to_string(),
        spec.cmdline.clone(),
        "--cpus".to_string(),
        format!("boot={}", spec.cpus),
        // virtio-fs needs shared memory.
        "--memory".to_string(),
        format!("size={}M,shared=on", spec.memory_mib),
    ];
    if !spec.shares.is_empty() {
        args.push("--fs".to_string());
        for share in &spec.shares {
            args.push(format!("tag={},socket={}", share.tag, share.socket.display()));
        }
    }
    if !spec.disks.is_empty() {
        args.push("--disk".to_string());
        for disk in &spec.disks {
            let read_only = if disk.read_only { ",readonly=on" } else { "" };
            // Raw, said so: never guessed from a first sector the guest writes.
            args.push(format!(
                "path={},image_type=raw,serial={}{read_only}",
                disk.path.display(),
                disk.serial
            ));
        }
    }
    args.extend([
        // Pages the guest frees go back to the host; the balloon itself stays empty.
        "--balloon".to_string(),
        "size=0,deflate_on_oom=on,free_page_reporting=on".to_string(),
        "--net".to_string(),
        format!("tap={},mac={}", spec.tap, spec.mac),
        "--vsock".to_string(),
        format!("cid={GUEST_CID},socket={}", spec.vsock_socket.display()),
        "--serial".to_string(),
        format!("file={}", spec.console_log.display()),
        "--console".to_string(),
        "off".to_string(),
    ]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_argv_for_v53() {
        let mut spec = crate::vmm::qemu::tests::spec();
        spec.control_socket = "/run/mvm/web/api.sock".into();
        assert_eq!(
            args(&spec),
            [
                "--api-socket",
                "path=/run/mvm/web/api.sock",
                "--kernel",
                "/boot/vmlinuz",
                "--initramfs",
                "/run/mvm/web/boot.cpio",
                "--cmdline",
                "console=ttyS0 mvm.net=10.200.0.2/24,10.200.0.1",
                "--cpus",
                "boot=2",
                "--memory",
                "size=1024M,shared=on",
                "--fs",
                "tag=usr,socket=/run/mvm/web/fs-usr.sock",
                "tag=etc,socket=/run/mvm/web/fs-etc.sock",
                "--disk",
                "path=/var/lib/microvms/web/system.img,image_type=raw,serial=mvm-system",
                "--balloon",
                "size=0,deflate_on_oom=on,free_page_reporting=on",
                "--net",
                "tap=mvmtap0,mac=02:6d:76:00:00:00",
                "--vsock",
                "cid=3,socket=/run/mvm/web/vsock.sock",
                "--serial",
                "file=/var/lib/microvms/web/log/console.log",
                "--console",
                "off",
            ]
        );
    }
}
