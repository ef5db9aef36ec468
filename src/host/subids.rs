//! A user's subordinate ids (`/etc/subuid`, `/etc/subgid`, written by `useradd` or
//! `usermod --add-subuids`): the host ids a member's VM gives its guest's users, so that
//! software owning its data as another uid (PostgreSQL's `postgres`) works in a VM that
//! runs without root. Guest ids `0..GUEST_IDS` become `start..start + GUEST_IDS` on the
//! host: ids no one else owns, which only that user (through `newuidmap`) may map.

use std::path::Path;

/// How many guest ids a member's VM maps: every id a Debian guest uses.
pub const GUEST_IDS: u32 = 65536;

/// Where the ranges are.
pub const SUBUID_FILE: &str = "/etc/subuid";
pub const SUBGID_FILE: &str = "/etc/subgid";

/// The starts of a user's ranges of [`GUEST_IDS`] subordinate uids and gids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIds {
    pub uid: u32,
    pub gid: u32,
}

impl SubIds {
    /// User `name`'s (uid `uid`) ranges, when both files give them one of at least
    /// [`GUEST_IDS`] ids.
    pub fn of(name: &str, uid: u32) -> Option<SubIds> {
        Self::from_files(Path::new(SUBUID_FILE), Path::new(SUBGID_FILE), name, uid)
    }

    /// Like [`SubIds::of`], from other files.
    pub fn from_files(subuid: &Path, subgid: &Path, name: &str, uid: u32) -> Option<SubIds> {
        let read = |path: &Path| std::fs::read_to_string(path).ok();
        Some(SubIds {
            uid: range_start(&read(subuid)?, name, uid)?,
            gid: range_start(&read(subgid)?, name, uid)?,
        })
    }

    /// This process's user's, when they can be mapped ([`can_map`]): without the tools a
    /// member's VM runs on the member's id alone, as `doctor` says, rather than not at all.
    pub fn of_this_user() -> Option<SubIds> {
        let uid = nix::unistd::geteuid().as_raw();
        Self::of(&crate::host::user::name_of(uid), uid).filter(|_| can_map())
    }
}

/// Whether Debian's `newuidmap` and `newgidmap` (package `uidmap`), which map the ranges
/// for their user, are there.
pub fn can_map() -> bool {
    which::which("newuidmap").is_ok() && which::which("newgidmap").is_ok()
}

/// The start of the first range in `text` (`NAME_OR_UID:START:COUNT` lines) for user
/// `name` or `uid` that holds [`GUEST_IDS`] ids, none of them the user's own id or root's.
pub fn range_start(text: &str, name: &str, uid: u32) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (who, start, count) = (fields.next()?, fields.next()?, fields.next()?);
        if fields.next().is_some() || (who != name && who != uid.to_string()) {
            return None;
        }
        let (start, count): (u32, u32) = (start.parse().ok()?, count.parse().ok()?);
        let end = start.checked_add(GUEST_IDS)?;
        (count >= GUEST_IDS && start > 0 && !(start..end).contains(&uid)).then_some(start)
    })
}

/// The line that gives user `name` ranges (what `setup` and `doctor` say): the first
/// [`GUEST_IDS`] ids past every range the files hold already, so no two users share one.
pub fn how_to_add(name: &str) -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let (uid, gid) = (first_free(&read(SUBUID_FILE)), first_free(&read(SUBGID_FILE)));
    let usermod = format!(
        "sudo usermod --add-subuids {uid}-{} --add-subgids {gid}-{} {name}",
        uid + u64::from(GUEST_IDS) - 1,
        gid + u64::from(GUEST_IDS) - 1
    );
    // usermod adds ranges only to files that exist.
    let missing = [SUBUID_FILE, SUBGID_FILE].into_iter().any(|file| !Path::new(file).exists());
    if missing {
        format!("sudo touch {SUBUID_FILE} {SUBGID_FILE} && {usermod}")
    } else {
        usermod
    }
}

/// The first id past every range in `text`, and never below 100000 (where `useradd`'s
/// ranges start).
pub fn first_free(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':').skip(1);
            let start: u64 = fields.next()?.parse().ok()?;
            Some(start + fields.next()?.parse::<u64>().ok()?)
        })
        .fold(100_000, u64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_whole_range_by_name_or_uid() {
        let text = "bob:200000:65536\nalice:100000:1000\nalice:165536:65536\n";
        assert_eq!(range_start(text, "alice", 1000), Some(165536), "a short range was taken");
        assert_eq!(range_start(text, "bob", 1001), Some(200000));
        assert_eq!(range_start("1002:300000:70000\n", "carol", 1002), Some(300000));
        for bad in
            ["carol:0:65536", "carol:x:65536", "carol:1000:65536", "carol:4294967000:65536", "carol:5:6:7"]
        {
            assert_eq!(range_start(bad, "carol", 1002), None, "{bad}");
        }
    }

    #[test]
    fn suggests_a_range_no_one_has() {
        assert_eq!(first_free(""), 100_000);
        assert_eq!(first_free("alice:100000:65536\nbob:300000:65536\n# x\n"), 365_536);
    }

    #[test]
    fn needs_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (uids, gids) = (dir.path().join("subuid"), dir.path().join("subgid"));
        std::fs::write(&uids, "alice:100000:65536\n").unwrap();
        assert_eq!(SubIds::from_files(&uids, &gids, "alice", 1000), None);
        std::fs::write(&gids, "alice:300000:65536\n").unwrap();
        assert_eq!(
            SubIds::from_files(&uids, &gids, "alice", 1000),
            Some(SubIds { uid: 100000, gid: 300000 })
        );
    }
}
