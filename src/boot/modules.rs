//! The kernel modules a guest needs, in load order, from `modules.dep`.
//!
//! `modules.dep` lists each module with all its dependencies; loading every dependency
//! (depth first) before the module itself gives a valid order. Modules built into the
//! kernel (`modules.builtin`) need no loading. Files may be `.ko`, `.ko.xz` or `.ko.zst`;
//! compressed ones are handed to the guest kernel to decompress.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::UserError;

/// What a guest must load to reach its disks, shares, network and agent: virtio over
/// MMIO (QEMU microvm) and PCI (cloud-hypervisor), virtio-fs, overlayfs, virtio-blk and
/// ext4 for the system disk (with crc32c, which ext4 asks the crypto API for and the
/// initramfs has no modprobe to load), virtio-net and virtio vsock.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtiofs",
    "overlay",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "virtio_balloon",
];

/// A module to load: its name and its file relative to the modules directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: PathBuf,
}

/// The modules `wanted` needs from `modules_dir`, dependencies first; built-in ones are
/// left out. Fails naming a wanted module that is neither a file nor built in.
pub fn closure(modules_dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<Module>> {
    let dep_text = std::fs::read_to_string(modules_dir.join("modules.dep"))
        .with_context(|| format!("cannot read {}", modules_dir.join("modules.dep").display()))?;
    let builtin_text = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    resolve(&parse_dep(&dep_text), &parse_builtin(&builtin_text), wanted).map_err(|missing| {
        UserError::missing_dependency(format!(
            "kernel module {missing} is neither in {} nor built in",
            modules_dir.display()
        ))
        .hint("use a kernel built with virtio, virtiofs, overlay and vsock (Debian's linux-image-amd64 is)")
        .into()
    })
}

/// The module name of a path: `kernel/fs/fuse/virtiofs.ko.xz` → `virtiofs` (`-` as `_`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn parse_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(str::to_string).collect();
            Some((module_name(path), (path.to_string(), deps)))
        })
        .collect()
}

fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().map(module_name).collect()
}

fn resolve(
    deps: &BTreeMap<String, (String, Vec<String>)>,
    builtin: &BTreeSet<String>,
    wanted: &[&str],
) -> Result<Vec<Module>, String> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        let name = name.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        let (path, module_deps) = deps.get(&name).ok_or_else(|| name.clone())?;
        // modules.dep lists dependencies so that loading them last-first works.
        for dep_path in module_deps.iter().rev().chain(std::iter::once(path)) {
            let dep = module_name(dep_path);
            if seen.insert(dep.clone()) {
                order.push(Module { name: dep, path: PathBuf::from(dep_path) });
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/fs/fuse/fuse.ko.zst:
kernel/fs/fuse/virtiofs.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko.zst
";

    fn names(modules: &[Module]) -> Vec<&str> {
        modules.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let order =
            resolve(&parse_dep(DEP), &BTreeSet::new(), &["virtio_pci", "virtiofs", "virtio_mmio"]).unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "fuse",
                "virtiofs",
                "virtio_mmio"
            ]
        );
        assert_eq!(order[6].path, Path::new("kernel/fs/fuse/virtiofs.ko.xz"));
    }

    #[test]
    fn builtins_are_skipped_and_unknowns_named() {
        let builtin = parse_builtin("kernel/fs/overlayfs/overlay.ko\n");
        assert!(resolve(&parse_dep(DEP), &builtin, &["overlay"]).unwrap().is_empty());
        assert_eq!(resolve(&parse_dep(DEP), &builtin, &["vsock"]).unwrap_err(), "vsock");
        assert_eq!(module_name("kernel/x/net-failover.ko.zst"), "net_failover");
    }

    #[test]
    fn a_missing_module_is_a_missing_dependency() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), DEP).unwrap();
        let error = closure(dir.path(), &["vsock"]).unwrap_err();
        assert_eq!(crate::error::exit_code_of(&error), crate::error::ExitCode::MissingDependency);
    }
}
