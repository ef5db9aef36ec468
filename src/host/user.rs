//! The user mvm acts for: the one who ran `sudo mvm …` (from `SUDO_UID`, `SUDO_GID`,
//! `SUDO_USER`), else the caller. `mvm shell` runs as this user in the guest, with the
//! same uid and gid, so files it writes into the project belong to them.

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

fn name_of(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into()).ok().flatten().map_or_else(|| uid.to_string(), |user| user.name)
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
}
