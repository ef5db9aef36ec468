//! The VM's own `/etc` and `/var`, made once at create time.
//!
//! `/etc` is a copy of the host's holding only what every host user can already read:
//! files with the other-read bit, inside directories with the other-exec bit. That rule
//! keeps out secrets nobody listed (WireGuard keys, `apt/auth.conf`, PKI, netrc files);
//! [`SECRETS`] adds the few that are world-readable yet must not be shared (the machine
//! id, SSH host keys someone made readable, mvm's own config). The guest gets a locked
//! `shadow` and `gshadow` written from its copied `passwd` and `group`. `/var` is a fresh
//! skeleton. After create, both trees belong to the guest: a start only adds a skeleton
//! directory that is missing, beneath the VM's tree ([`repair_var`]), and never changes
//! one the guest replaced.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

use crate::fs::Tree;

/// Paths under `/etc` that never reach a VM even when every user can read them
/// (relative, matched as whole paths).
const SECRETS: &[&str] = &[
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "machine-id",
    "ssl/private",
    "krb5.keytab",
    "NetworkManager/system-connections",
    "wpa_supplicant",
    "sudoers.d",
    "credstore",
    "credstore.encrypted",
    "mvm",
];

/// The `/var` skeleton and each directory's mode.
const VAR_SKELETON: &[(&str, u32)] =
    &[("tmp", 0o1777), ("home", 0o755), ("lib", 0o755), ("log", 0o755), ("cache", 0o755)];

/// Whether `relative` (a path under `/etc`) is a secret by name.
pub fn is_secret(relative: &Path) -> bool {
    let text = relative.to_string_lossy();
    let name = relative.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    SECRETS.iter().any(|secret| relative == Path::new(secret))
        || (text.starts_with("ssh/") && name.starts_with("ssh_host_") && name.ends_with("_key"))
        || name.ends_with(".key") && text.contains("private")
}

/// Whether every host user can read `meta`'s file (other-read; other-exec for a directory).
fn world_readable(meta: &std::fs::Metadata) -> bool {
    let mode = meta.mode();
    if meta.is_dir() {
        mode & 0o005 == 0o005
    } else {
        mode & 0o004 != 0
    }
}

/// Fills `vm_dir` (a new VM's staging dir, which no guest has seen) with `etc/` from
/// `host_etc` and the `var/` skeleton.
pub fn seed_root(vm_dir: &Path, host_etc: &Path) -> anyhow::Result<()> {
    seed_etc(vm_dir, host_etc)?;
    repair_var(vm_dir)
}

/// Makes `vm_dir`'s `etc/` from `host_etc`.
pub fn seed_etc(vm_dir: &Path, host_etc: &Path) -> anyhow::Result<()> {
    let etc = vm_dir.join("etc");
    copy_tree(host_etc, &etc, Path::new("")).with_context(|| format!("cannot seed {}", etc.display()))?;
    std::fs::write(etc.join("hostname"), "")?;
    write_locked_shadows(&etc)
}

/// Makes `vm_dir`'s `var/` if it is missing, and adds the skeleton directories that are
/// missing beneath it only: one the guest replaced (by a symlink or a file) is left as
/// the guest made it.
pub fn repair_var(vm_dir: &Path) -> anyhow::Result<()> {
    let var_dir = vm_dir.join("var");
    if std::fs::symlink_metadata(&var_dir).is_err() {
        std::fs::create_dir(&var_dir).with_context(|| format!("cannot create {}", var_dir.display()))?;
    }
    let var = Tree::open(&var_dir)?;
    for (dir, mode) in VAR_SKELETON {
        if var.metadata(Path::new(dir))?.is_none() {
            var.create_dir_all(Path::new(dir), *mode, None)?;
        }
    }
    Ok(())
}

/// A `shadow` and `gshadow` with every account locked, from the copied `passwd`/`group`.
fn write_locked_shadows(etc: &Path) -> anyhow::Result<()> {
    let names = |file: &str| -> Vec<String> {
        std::fs::read_to_string(etc.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(':').next())
            .filter(|name| !name.is_empty() && !name.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let shadow_gid = std::fs::read_to_string(etc.join("group"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("shadow:x:").and_then(|rest| rest.split(':').next()?.parse().ok()))
        .unwrap_or(0);
    let shadow: String = names("passwd").iter().map(|name| format!("{name}:*:1:0:99999:7:::\n")).collect();
    let gshadow: String = names("group").iter().map(|name| format!("{name}:*::\n")).collect();
    for (file, content) in [("shadow", shadow), ("gshadow", gshadow)] {
        let path = etc.join(file);
        std::fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))?;
        // A user's VM: the file is theirs, which the guest sees as root's.
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(&path, Some(0), Some(shadow_gid))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
    }
    Ok(())
}

fn copy_tree(source: &Path, target: &Path, relative: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(source)?;
    std::fs::create_dir(target)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let inner = relative.join(entry.file_name());
        let Ok(entry_meta) = entry.metadata() else { continue };
        if is_secret(&inner) || !(entry_meta.is_symlink() || world_readable(&entry_meta)) {
            continue;
        }
        let (from, to) = (entry.path(), target.join(entry.file_name()));
        let copied = if entry_meta.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to).map_err(anyhow::Error::from)
        } else if entry_meta.is_dir() {
            copy_tree(&from, &to, &inner)
        } else if entry_meta.is_file() {
            std::fs::copy(&from, &to).map(drop).map_err(anyhow::Error::from)
        } else {
            continue;
        };
        // A file that vanished or changed under the copy stays behind.
        if copied.is_ok() {
            let _ = std::os::unix::fs::lchown(&to, Some(entry_meta.uid()), Some(entry_meta.gid()));
        }
    }
    std::fs::set_permissions(target, meta.permissions())?;
    let _ = std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognized() {
        for secret in ["shadow", "gshadow-", "machine-id", "ssh/ssh_host_ed25519_key", "ssl/private", "mvm"] {
            assert!(is_secret(Path::new(secret)), "{secret}");
        }
        for public in ["passwd", "group", "ssh/ssh_host_ed25519_key.pub", "hostname", "ssl/certs"] {
            assert!(!is_secret(Path::new(public)), "{public}");
        }
    }

    fn host_etc(dir: &Path) -> std::path::PathBuf {
        let etc = dir.join("host-etc");
        std::fs::create_dir_all(etc.join("ssh")).unwrap();
        std::fs::create_dir_all(etc.join("ssl/private")).unwrap();
        std::fs::create_dir_all(etc.join("wireguard")).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\ndev:x:1000:1000::/home/dev:/bin/sh\n")
            .unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\nshadow:x:42:\n").unwrap();
        std::fs::write(etc.join("shadow"), "root:$6$secret").unwrap();
        std::fs::write(etc.join("machine-id"), "0123").unwrap();
        std::fs::write(etc.join("ssh/ssh_host_rsa_key"), "PRIVATE").unwrap();
        std::fs::write(etc.join("ssh/ssh_host_rsa_key.pub"), "public").unwrap();
        std::fs::write(etc.join("ssl/private/server.key"), "PRIVATE").unwrap();
        std::fs::write(etc.join("wireguard/wg0.conf"), "PrivateKey = x").unwrap();
        // Secrets nobody listed: unreadable to other users, or in a closed directory.
        std::fs::write(etc.join("netrc"), "machine x password y").unwrap();
        std::fs::set_permissions(etc.join("netrc"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(etc.join("wireguard"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(etc.join("passwd"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("/run/resolv.conf", etc.join("resolv.conf")).unwrap();
        etc
    }

    #[test]
    fn copies_only_what_every_user_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let etc = host_etc(dir.path());
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        seed_root(&vm, &etc).unwrap();
        assert!(vm.join("etc/passwd").is_file());
        assert!(vm.join("etc/ssh/ssh_host_rsa_key.pub").is_file());
        for kept_out in ["machine-id", "ssh/ssh_host_rsa_key", "ssl/private", "netrc", "wireguard"] {
            assert!(!vm.join("etc").join(kept_out).exists(), "{kept_out} reached the VM");
        }
        assert_eq!(std::fs::read_link(vm.join("etc/resolv.conf")).unwrap(), Path::new("/run/resolv.conf"));
        assert!(vm.join("var/home").is_dir());
        let mode = std::fs::metadata(vm.join("var/tmp")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }

    #[test]
    fn shadow_is_generated_and_locked() {
        let dir = tempfile::tempdir().unwrap();
        let etc = host_etc(dir.path());
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        seed_root(&vm, &etc).unwrap();
        let shadow = std::fs::read_to_string(vm.join("etc/shadow")).unwrap();
        assert_eq!(shadow, "root:*:1:0:99999:7:::\ndev:*:1:0:99999:7:::\n");
        assert!(!shadow.contains("$6$"));
        assert_eq!(std::fs::read_to_string(vm.join("etc/gshadow")).unwrap(), "root:*::\nshadow:*::\n");
        let meta = std::fs::metadata(vm.join("etc/shadow")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    }

    /// The attack of issue 11: the guest replaces `/var/tmp` with a symlink to a host
    /// directory; a start must not make that directory 1777.
    #[test]
    fn a_start_leaves_a_replaced_var_tmp_alone() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("vm");
        std::fs::create_dir_all(vm.join("var")).unwrap();
        let host = dir.path().join("host-dir");
        std::fs::create_dir(&host).unwrap();
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&host, vm.join("var/tmp")).unwrap();
        std::os::unix::fs::symlink(&host, vm.join("var/log")).unwrap();
        repair_var(&vm).unwrap();
        assert_eq!(std::fs::metadata(&host).unwrap().permissions().mode() & 0o7777, 0o700);
        assert!(std::fs::read_dir(&host).unwrap().next().is_none(), "created through the symlink");
        assert!(vm.join("var/home").is_dir(), "a missing skeleton directory is made");
    }
}
