//! The user mvm acts for: the one who ran `sudo mvm …` (from `SUDO_UID`, `SUDO_GID`,
//! `SUDO_USER`), else the caller. `mvm shell` runs as this user in the guest, with the
//! same uid and gid, so files it writes into the project belong to them; paths they name
//! on the command line are opened with their rights, not root's ([`with_rights_of`]).

use anyhow::Context;

/// A user on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokingUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The invoking user of this process.
pub fn invoking_user() -> InvokingUser {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    from_parts(
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
        var("SUDO_UID"),
        var("SUDO_GID"),
        var("SUDO_USER"),
    )
}

fn from_parts(
    uid: u32,
    gid: u32,
    sudo_uid: Option<String>,
    sudo_gid: Option<String>,
    sudo_user: Option<String>,
) -> InvokingUser {
    if uid == 0 {
        if let (Some(uid), Some(gid)) =
            (sudo_uid.and_then(|u| u.parse().ok()), sudo_gid.and_then(|g| g.parse().ok()))
        {
            let name = sudo_user.unwrap_or_else(|| name_of(uid));
            return InvokingUser { name, uid, gid };
        }
    }
    InvokingUser { name: name_of(uid), uid, gid }
}

/// The name of user `uid` (the number, for a uid with no account).
pub fn name_of(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into()).ok().flatten().map_or_else(|| uid.to_string(), |user| user.name)
}

/// Runs `action` with the file-system rights of the invoking user: on a thread of its
/// own whose fsuid, fsgid and supplementary groups are theirs, so the kernel checks every
/// open as it would for them (root's capabilities to bypass those checks are dropped with
/// the fsuid). Without sudo, or for root, `action` runs as it is.
pub fn with_rights_of_invoking_user<T: Send>(action: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let user = invoking_user();
    if user.uid == 0 || !nix::unistd::geteuid().is_root() {
        return Ok(action());
    }
    with_rights_of(&user, action)
}

/// `user`'s groups (their primary group included).
fn groups_of(user: &InvokingUser) -> Vec<nix::libc::gid_t> {
    std::ffi::CString::new(user.name.clone())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, user.gid.into()).ok())
        .map_or_else(|| vec![user.gid], |groups| groups.iter().map(|gid| gid.as_raw()).collect())
}

/// The user with uid `uid`.
pub fn user_of(uid: u32) -> InvokingUser {
    match nix::unistd::User::from_uid(uid.into()).ok().flatten() {
        Some(user) => InvokingUser { name: user.name, uid, gid: user.gid.as_raw() },
        None => InvokingUser { name: uid.to_string(), uid, gid: uid },
    }
}

/// Makes this whole process user `uid` for good (ids, groups, plus `also_in`; called
/// while it is still single-threaded): root acting on a user's VM does so with that
/// user's rights alone, so nothing the user planted in the VM's files or runtime dir is
/// met with root's.
pub fn become_user(uid: u32, also_in: Option<u32>) -> anyhow::Result<()> {
    use nix::unistd::{Gid, Uid};
    let user = user_of(uid);
    let mut groups: Vec<Gid> = groups_of(&user).into_iter().map(Gid::from_raw).collect();
    groups.extend(also_in.map(Gid::from_raw));
    nix::unistd::setgroups(&groups).context("cannot take the VM owner's groups")?;
    let gid = Gid::from_raw(user.gid);
    nix::unistd::setresgid(gid, gid, gid).context("cannot take the VM owner's group")?;
    let uid = Uid::from_raw(uid);
    nix::unistd::setresuid(uid, uid, uid).context("cannot become the VM's owner")?;
    // The invoking user is now the owner: sudo's variables name someone else.
    for variable in ["SUDO_UID", "SUDO_GID", "SUDO_USER"] {
        std::env::remove_var(variable);
    }
    Ok(())
}

/// Runs `action` on a thread with `user`'s file-system rights (the caller must be root).
pub fn with_rights_of<T: Send>(user: &InvokingUser, action: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let groups = groups_of(user);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // Raw system calls: each changes this thread only (glibc's wrappers of
                // setgroups would change every thread of the process).
                // SAFETY: the pointer and length describe `groups`, alive across the call;
                // setfsgid and setfsuid take plain integers.
                let switched = unsafe {
                    nix::libc::syscall(nix::libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0 && {
                        nix::libc::syscall(nix::libc::SYS_setfsgid, user.gid);
                        nix::libc::syscall(nix::libc::SYS_setfsuid, user.uid);
                        // Each returns the previous value: asking again with -1 reads it.
                        nix::libc::syscall(nix::libc::SYS_setfsuid, u32::MAX) == i64::from(user.uid)
                            && nix::libc::syscall(nix::libc::SYS_setfsgid, u32::MAX) == i64::from(user.gid)
                    }
                };
                anyhow::ensure!(switched, "cannot take the rights of user {} ({})", user.name, user.uid);
                Ok(action())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread acting for user {} panicked", user.name))?
    })
    .context("cannot act with the invoking user's rights")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_names_the_real_user() {
        let user = from_parts(0, 0, Some("1000".into()), Some("1001".into()), Some("ada".into()));
        assert_eq!(user, InvokingUser { name: "ada".into(), uid: 1000, gid: 1001 });
        // Only root's SUDO_* variables count.
        assert_eq!(from_parts(1000, 1000, Some("0".into()), Some("0".into()), None).uid, 1000);
        assert_eq!(from_parts(0, 0, None, None, None).name, "root");
    }

    #[test]
    fn paths_are_opened_with_the_users_rights() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP paths_are_opened_with_the_users_rights: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("private"), dir.path().join("public"));
        std::fs::write(&private, "root's").unwrap();
        std::fs::write(&public, "anyone's").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = InvokingUser { name: "nobody".into(), uid: 65534, gid: 65534 };
        let read =
            |path: &std::path::Path| with_rights_of(&nobody, || std::fs::read_to_string(path)).unwrap();
        assert_eq!(read(&public).unwrap(), "anyone's");
        assert_eq!(read(&private).unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        // The calling thread keeps root's rights.
        assert_eq!(std::fs::read_to_string(&private).unwrap(), "root's");
    }
}
