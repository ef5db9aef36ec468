//! The guest's file-event module (`kmod/mvm_notify.c`): host changes to a project become
//! real inotify/fanotify events in the guest, and its caches of them are dropped.
//!
//! It is built once per guest kernel, by root (`mvm setup`, or the first `mvm start` of
//! a root VM), against that kernel's headers (Debian's `linux-headers-RELEASE`), into a
//! store root alone may write: `STATE/.kmod/RELEASE/mvm_notify-HASH.ko`, where HASH names
//! the source, so a new mvm builds its own. The initramfs carries it when it is there and
//! root's alone; without it a VM runs without file events and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::error::UserError;
use crate::state::Paths;

/// The module's source, built as it is.
pub const SOURCE: &str = include_str!("../../kmod/mvm_notify.c");

/// The store of built modules.
pub fn store_dir(paths: &Paths) -> PathBuf {
    paths.state_dir.join(".kmod")
}

/// Where the module for kernel `release` is (or would be) built.
pub fn module_path(paths: &Paths, release: &str) -> PathBuf {
    store_dir(paths).join(release).join(format!("mvm_notify-{}.ko", source_hash()))
}

/// A short hash of the source (FNV-1a: stable across Rust versions).
fn source_hash() -> String {
    let hash = SOURCE
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    format!("{:012x}", hash & 0xffff_ffff_ffff)
}

/// Whether the guest gets file events, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Built and root's alone.
    Ready(PathBuf),
    /// Not built for this kernel (yet).
    Missing,
    /// Something other than root's own is there: never loaded into a guest.
    Untrusted(String),
}

/// The module for kernel `release`, if it is there and no one but root could have put it.
pub fn find(paths: &Paths, release: &str) -> Availability {
    let module = module_path(paths, release);
    let store = store_dir(paths);
    for path in [store.clone(), store.join(release), module.clone()] {
        match crate::fs::roots_alone(&path) {
            Ok(true) => {}
            Ok(false) => return Availability::Untrusted(format!("{} is not root's alone", path.display())),
            Err(_) => return Availability::Missing,
        }
    }
    Availability::Ready(module)
}

/// What a VM without file events is told (once, at start and in its log).
pub fn why_off(availability: &Availability, release: &str) -> Option<String> {
    match availability {
        Availability::Ready(_) => None,
        Availability::Missing => Some(format!(
            "no file events in the guest: the guest module is not built for kernel {release} \
             (run `sudo mvm setup`); host edits still reach the guest, its watchers do not hear of them"
        )),
        Availability::Untrusted(why) => {
            Some(format!("no file events in the guest: {why} (remove it and run `sudo mvm setup`)"))
        }
    }
}

/// Builds the module for kernel `release`, whose modules (and `build` link to its
/// headers) are in `modules_dir`, unless it is there; returns what was done. Root only.
pub fn ensure_built(paths: &Paths, release: &str, modules_dir: &Path) -> anyhow::Result<Option<String>> {
    if matches!(find(paths, release), Availability::Ready(_)) {
        return Ok(None);
    }
    let headers = modules_dir.join("build");
    if !headers.join("Makefile").is_file() {
        return Err(UserError::missing_dependency(format!(
            "the headers of kernel {release} are not installed ({} is missing)",
            headers.join("Makefile").display()
        ))
        .hint(format!("install them: `sudo apt install linux-headers-{release} make gcc`"))
        .into());
    }
    let store = store_dir(paths);
    crate::state::paths::own_dir(&store, 0o755)?;
    crate::state::paths::own_dir(&store.join(release), 0o755)?;
    let started = std::time::Instant::now();
    let work = tempfile::Builder::new().prefix(".build-").tempdir_in(store.join(release))?;
    std::fs::write(work.path().join("mvm_notify.c"), SOURCE)?;
    std::fs::write(work.path().join("Kbuild"), "obj-m := mvm_notify.o\n")?;
    let output = Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", work.path().display()))
        .arg("modules")
        .output()
        .context("cannot run make (install it: `sudo apt install make gcc`)")?;
    if !output.status.success() {
        let errors = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = errors.lines().rev().take(12).collect();
        anyhow::bail!(
            "building the guest module for kernel {release} failed:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let built = work.path().join("mvm_notify.ko");
    // Debug information is most of the file, and the initramfs carries it to every boot.
    let _ = Command::new("strip").arg("--strip-debug").arg(&built).status();
    std::fs::set_permissions(&built, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let module = module_path(paths, release);
    std::fs::rename(&built, &module).with_context(|| format!("cannot place {}", module.display()))?;
    Ok(Some(format!(
        "built the guest file-event module for kernel {release} in {:.1} s",
        started.elapsed().as_secs_f64()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_is_named_by_its_source() {
        let paths = Paths::under(Path::new("/"));
        let path = module_path(&paths, "6.1.0-57-amd64");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(path.starts_with("/state/.kmod/6.1.0-57-amd64"));
        assert_eq!(name, format!("mvm_notify-{}.ko", source_hash()));
        assert_eq!(source_hash().len(), 12);
    }

    /// A module someone other than root could have written is never carried into a guest.
    #[test]
    fn only_roots_own_module_is_used() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to make root-owned files");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        assert_eq!(find(&paths, "6.1"), Availability::Missing);
        let module = module_path(&paths, "6.1");
        std::fs::create_dir_all(module.parent().unwrap()).unwrap();
        std::fs::write(&module, b"\x7fELF").unwrap();
        for dir in [store_dir(&paths), module.parent().unwrap().to_path_buf()] {
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&module, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        assert_eq!(find(&paths, "6.1"), Availability::Ready(module.clone()));
        std::os::unix::fs::chown(&module, Some(65534), None).unwrap();
        assert!(matches!(find(&paths, "6.1"), Availability::Untrusted(_)));
        std::os::unix::fs::chown(&module, Some(0), None).unwrap();
        std::fs::set_permissions(
            module.parent().unwrap(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        assert!(
            matches!(find(&paths, "6.1"), Availability::Untrusted(why) if why.contains("not root's alone"))
        );
    }
}
