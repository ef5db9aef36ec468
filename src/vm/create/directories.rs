//! The directories a create names (project, root tree), checked with the rights of
//! the user who asked.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::UserError;
use crate::host::user::with_rights_of_invoking_user;

pub(super) fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// Checks, with the invoking user's rights, that `dir` is an existing directory they can
/// read (and write, when `writable`); returns its canonical path.
pub(super) fn check_directory(dir: &Path, flag: &str, writable: bool) -> anyhow::Result<PathBuf> {
    let path = with_rights_of_invoking_user(|| check_directory_as_caller(dir, flag, writable))??;
    // Guest root reads everything in a share as host root sees it: through sudo, only a
    // directory of the invoking user's own may become one (not `/`, not someone's home).
    let user = crate::host::user::invoking_user();
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path)?);
    if crate::host::is_root() && user.uid != 0 && owner != user.uid {
        return Err(UserError::usage(format!(
            "{flag} {} belongs to uid {owner}, not to you ({}, uid {}): through sudo, mvm shares only your own directories",
            path.display(),
            user.name,
            user.uid
        ))
        .hint("use a directory you own, or create the VM as root itself")
        .into());
    }
    Ok(path)
}

fn check_directory_as_caller(dir: &Path, flag: &str, writable: bool) -> anyhow::Result<PathBuf> {
    use nix::fcntl::{AtFlags, AT_FDCWD};
    use nix::unistd::{faccessat, AccessFlags};
    let shown = dir.display();
    let metadata = match std::fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            return Err(UserError::not_found(format!("{flag} {shown} does not exist"))
                .hint("check the path, or create the directory first")
                .into())
        }
        Err(error) => {
            return Err(UserError::usage(format!("{flag} {shown} cannot be read: {error}"))
                .hint("check the path's permissions")
                .into())
        }
    };
    if !metadata.is_dir() {
        return Err(UserError::usage(format!("{flag} {shown} is not a directory"))
            .hint("give the directory itself, not a file in it")
            .into());
    }
    // AT_EACCESS: checked with this thread's file-system ids, not the process's real ones.
    let access = |mode| faccessat(AT_FDCWD, dir, mode, AtFlags::AT_EACCESS).is_ok();
    if !access(AccessFlags::R_OK | AccessFlags::X_OK) || std::fs::read_dir(dir).is_err() {
        return Err(UserError::usage(format!("{flag} {shown} is not readable"))
            .hint("check the directory's permissions (it needs read and search access)")
            .into());
    }
    if writable && !access(AccessFlags::W_OK) {
        return Err(UserError::usage(format!("{flag} {shown} is not writable, and --mount rw writes to it"))
            .hint("use --mount overlay (the default) to work on a copy, or a directory you own")
            .into());
    }
    absolute(dir)
}
