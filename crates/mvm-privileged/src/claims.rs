//! Network index claims: `STATE/.index/N` holds the name of the VM that has index `N`,
//! and belongs to the user who created that VM.
//!
//! A VM's `vm.toml` is private to its owner, so `create` cannot read other users' VMs to
//! find a free index; the claims are what it reads instead. A claim is made with
//! `O_EXCL` in a sticky directory, so no one takes or removes another user's index, and
//! the privileged helper accepts a network request only for an index whose claim is the
//! caller's and names the VM (`helper`).

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use mvm_base::name::VmName;

/// The directory of claims under the state root.
pub const CLAIMS_DIR: &str = ".index";

fn claim_path(state_dir: &Path, index: u32) -> PathBuf {
    state_dir.join(CLAIMS_DIR).join(index.to_string())
}

/// The indexes claimed now, and by whom: (index, VM name, owner uid).
pub fn all(state_dir: &Path) -> Vec<(u32, String, u32)> {
    let Ok(tree) = mvm_base::fs::Tree::open(&state_dir.join(CLAIMS_DIR)) else { return Vec::new() };
    let Ok(entries) = tree.entries(Path::new("")) else { return Vec::new() };
    entries
        .into_iter()
        .filter(|entry| entry.meta.is_file())
        .filter_map(|entry| {
            // Only the canonical spelling: `+4` or `04` would be a second claim on 4.
            let index: u32 = entry.name.to_str()?.parse().ok()?;
            if entry.name.to_str()? != index.to_string() {
                return None;
            }
            let name = tree.read(Path::new(&entry.name), 256).ok()?;
            Some((index, String::from_utf8_lossy(&name).trim().to_string(), entry.meta.uid()))
        })
        .collect()
}

/// Claims `index` for VM `name`; false when it is someone's already.
pub fn claim(state_dir: &Path, index: u32, name: &VmName) -> anyhow::Result<bool> {
    let dir = state_dir.join(CLAIMS_DIR);
    if let Err(error) = std::fs::create_dir(&dir) {
        if error.kind() != ErrorKind::AlreadyExists {
            return Err(error).with_context(|| format!("cannot create {}", dir.display()));
        }
    }
    let path = claim_path(state_dir, index);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path);
    match file {
        Ok(mut file) => {
            file.write_all(format!("{name}\n").as_bytes())?;
            file.sync_all()?;
            Ok(true)
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error).with_context(|| format!("cannot claim {}", path.display())),
    }
}

/// Gives up VM `name`'s claims (those of other VMs are left alone).
pub fn release(state_dir: &Path, name: &VmName) {
    for (index, holder, _) in all(state_dir) {
        if holder == name.as_str() {
            let _ = std::fs::remove_file(claim_path(state_dir, index));
        }
    }
}

/// Who holds `index`: (VM name, owner uid).
pub fn holder(state_dir: &Path, index: u32) -> Option<(String, u32)> {
    all(state_dir).into_iter().find(|(claimed, _, _)| *claimed == index).map(|(_, name, uid)| (name, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_made_once_names_its_vm_and_is_released_only_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let (web, api): (VmName, VmName) = ("web".parse().unwrap(), "api".parse().unwrap());
        assert!(claim(dir.path(), 3, &web).unwrap());
        assert!(!claim(dir.path(), 3, &api).unwrap(), "an index was claimed twice");
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(holder(dir.path(), 3), Some(("web".to_string(), me)));
        release(dir.path(), &api);
        assert!(holder(dir.path(), 3).is_some(), "another VM released the claim");
        release(dir.path(), &web);
        assert_eq!(holder(dir.path(), 3), None);
    }

    /// A planted symlink is never read as a claim, nor written through.
    #[test]
    fn symlinks_are_not_claims() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(CLAIMS_DIR)).unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "web\n").unwrap();
        std::os::unix::fs::symlink(&target, claim_path(dir.path(), 5)).unwrap();
        assert_eq!(holder(dir.path(), 5), None);
        assert!(!claim(dir.path(), 5, &"web".parse().unwrap()).unwrap());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "web\n");
    }

    /// `+4` and `04` parse as 4: a user who planted one would hold a second claim on
    /// another user's index.
    #[test]
    fn only_canonical_names_are_claims() {
        let dir = tempfile::tempdir().unwrap();
        assert!(claim(dir.path(), 4, &"web".parse().unwrap()).unwrap());
        for planted in ["+4", "04", " 4"] {
            std::fs::write(dir.path().join(CLAIMS_DIR).join(planted), "thief\n").unwrap();
        }
        assert_eq!(all(dir.path()).len(), 1);
        assert_eq!(holder(dir.path(), 4).unwrap().0, "web");
        release(dir.path(), &"thief".parse().unwrap());
        assert_eq!(holder(dir.path(), 4).unwrap().0, "web");
    }
}
