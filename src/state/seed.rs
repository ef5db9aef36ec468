//! The VM's own `/etc` and `/var`, made at create time: `/etc` is a copy of the host's
//! without its secrets (password hashes, SSH host keys, the machine id, TLS private keys,
//! stored network credentials), `/var` a fresh skeleton.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Paths under `/etc` that never reach a VM (relative, matched as prefixes of components).
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

/// Whether `relative` (a path under `/etc`) is a secret.
pub fn is_secret(relative: &Path) -> bool {
    let text = relative.to_string_lossy();
    let name = relative.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    SECRETS.iter().any(|secret| relative == Path::new(secret))
        || (text.starts_with("ssh/") && name.starts_with("ssh_host_") && name.ends_with("_key"))
        || name.ends_with(".key") && text.contains("private")
}

/// Fills `vm_dir` with `etc/` (from `host_etc`) and `var/`, if they are missing.
pub fn seed_root(vm_dir: &Path, host_etc: &Path) -> anyhow::Result<()> {
    let etc = vm_dir.join("etc");
    if !etc.exists() {
        copy_tree(host_etc, &etc, Path::new("")).with_context(|| format!("cannot seed {}", etc.display()))?;
        std::fs::write(etc.join("hostname"), "").ok();
    }
    for dir in ["var/tmp", "var/home", "var/lib", "var/log", "var/cache"] {
        std::fs::create_dir_all(vm_dir.join(dir))?;
    }
    std::fs::set_permissions(vm_dir.join("var/tmp"), std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

fn copy_tree(source: &Path, target: &Path, relative: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(source)?;
    std::fs::create_dir(target)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let inner = relative.join(entry.file_name());
        if is_secret(&inner) {
            continue;
        }
        let (from, to) = (entry.path(), target.join(entry.file_name()));
        let file_type = entry.file_type()?;
        let copied = if file_type.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to).map_err(anyhow::Error::from)
        } else if file_type.is_dir() {
            copy_tree(&from, &to, &inner)
        } else if file_type.is_file() {
            std::fs::copy(&from, &to).map(drop).map_err(anyhow::Error::from)
        } else {
            continue;
        };
        // An unreadable file (a secret we do not know of) stays behind; so does a race.
        if copied.is_err() {
            continue;
        }
        if let Ok(entry_meta) = std::fs::symlink_metadata(&from) {
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

    #[test]
    fn copies_etc_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("host-etc");
        std::fs::create_dir_all(etc.join("ssh")).unwrap();
        std::fs::create_dir_all(etc.join("ssl/private")).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(etc.join("shadow"), "root:$6$secret").unwrap();
        std::fs::write(etc.join("ssh/ssh_host_rsa_key"), "PRIVATE").unwrap();
        std::fs::write(etc.join("ssh/ssh_host_rsa_key.pub"), "public").unwrap();
        std::fs::write(etc.join("ssl/private/server.key"), "PRIVATE").unwrap();
        std::os::unix::fs::symlink("/run/resolv.conf", etc.join("resolv.conf")).unwrap();
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        seed_root(&vm, &etc).unwrap();
        assert!(vm.join("etc/passwd").is_file());
        assert!(vm.join("etc/ssh/ssh_host_rsa_key.pub").is_file());
        assert!(!vm.join("etc/shadow").exists());
        assert!(!vm.join("etc/ssh/ssh_host_rsa_key").exists());
        assert!(!vm.join("etc/ssl/private").exists());
        assert_eq!(std::fs::read_link(vm.join("etc/resolv.conf")).unwrap(), Path::new("/run/resolv.conf"));
        assert!(vm.join("var/home").is_dir());
        let mode = std::fs::metadata(vm.join("var/tmp")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }
}
