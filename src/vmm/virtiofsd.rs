//! virtiofsd (the Rust one, 1.x) command lines: one daemon per share, serving exactly one
//! VMM connection and exiting when it ends. A writable share's daemon also translates the
//! guest's ids ([`GuestIds`]) and runs under mvm's seccomp filter
//! (`supervisor::sandbox`), so nothing the guest writes carries host privilege.

use crate::host::subids::GUEST_IDS;
use crate::vmm::{GuestIds, Share, OVERFLOW_ID, SHIFTED_IDS};

/// The extended attributes a guest's overlay layer keeps: `user.overlay.*` as they are;
/// any other name is refused to the guest (ENOTSUP, as on a file system without them) and
/// hidden from it. A file capability or ACL the guest sets never reaches the host.
pub const OVERLAY_LAYER_XATTRS: &str = ":ok:all:user.overlay.:::unsupported:all:::";

/// The argv (without the program) that serves `share`.
pub fn args(share: &Share) -> Vec<String> {
    // A share with subordinate ids is served by a virtiofsd that starts in its directory
    // and, having dropped its owner's groups, could not walk there (`userns::Namespace`).
    let dir = if share.ids == GuestIds::Subordinate { ".".into() } else { share.dir.display().to_string() };
    let mut args = vec![
        format!("--socket-path={}", share.socket.display()),
        format!("--shared-dir={dir}"),
        format!("--cache={}", if share.changes_pushed { "always" } else { "auto" }),
        "--sandbox=chroot".to_string(),
        "--inode-file-handles=never".to_string(),
        "--log-level=error".to_string(),
    ];
    if share.overlay_layer {
        args.push("--xattr".to_string());
        args.push(format!("--xattrmap={OVERLAY_LAYER_XATTRS}"));
    }
    if share.read_only {
        args.push("--readonly".to_string());
    } else {
        // Without CAP_FSETID the kernel clears setuid/setgid bits on every write the guest
        // makes; without CAP_MKNOD no device node can be made.
        args.push("--modcaps=-fsetid:-mknod".to_string());
    }
    for kind in ["uid", "gid"] {
        let translations = match share.ids {
            GuestIds::AsIs => vec![],
            GuestIds::Squash { uid, gid } => {
                let to = if kind == "uid" { uid } else { gid };
                vec![format!("squash-guest:0:{to}:{}", u32::MAX)]
            }
            GuestIds::Owner { shown_as: (uid, gid) } => {
                let shown = if kind == "uid" { uid } else { gid };
                let mut translations =
                    vec![format!("squash-guest:0:0:{}", u32::MAX), format!("host:{OVERFLOW_ID}:0:1")];
                if shown != 0 {
                    translations.push(format!("host:0:{shown}:1"));
                }
                translations
            }
            GuestIds::Shift { base } => vec![
                format!("map:0:{base}:{SHIFTED_IDS}"),
                format!("forbid-guest:{SHIFTED_IDS}:{}", u32::MAX - SHIFTED_IDS),
            ],
            GuestIds::Subordinate => vec![
                format!("map:0:1:{GUEST_IDS}"),
                format!("forbid-guest:{GUEST_IDS}:{}", u32::MAX - GUEST_IDS),
                "host:0:0:1".to_string(),
            ],
        };
        args.extend(translations.into_iter().map(|t| format!("--translate-{kind}={t}")));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(read_only: bool, ids: GuestIds) -> Share {
        Share {
            tag: "usr".into(),
            dir: "/usr".into(),
            socket: "/run/mvm/web/fs-usr.sock".into(),
            read_only,
            ids,
            overlay_layer: false,
            changes_pushed: false,
        }
    }

    #[test]
    fn exact_argv() {
        assert_eq!(
            args(&share(true, GuestIds::AsIs)),
            [
                "--socket-path=/run/mvm/web/fs-usr.sock",
                "--shared-dir=/usr",
                "--cache=auto",
                "--sandbox=chroot",
                "--inode-file-handles=never",
                "--log-level=error",
                "--readonly"
            ]
        );
    }

    /// A share whose changes the guest is told of caches for long; others revalidate.
    #[test]
    fn a_share_with_pushed_changes_caches_for_long() {
        let pushed = Share { changes_pushed: true, ..share(true, GuestIds::AsIs) };
        assert_eq!(args(&pushed)[2], "--cache=always");
        assert_eq!(args(&share(true, GuestIds::AsIs))[2], "--cache=auto");
    }

    #[test]
    fn an_overlay_layer_keeps_the_overlays_attributes_alone() {
        let layer = Share { overlay_layer: true, ..share(false, GuestIds::AsIs) };
        assert_eq!(args(&layer)[6..8], ["--xattr", "--xattrmap=:ok:all:user.overlay.:::unsupported:all:::"]);
        assert!(!args(&share(false, GuestIds::AsIs)).contains(&"--xattr".to_string()));
    }

    #[test]
    fn a_project_is_squashed_to_its_owner_and_a_volume_shifted() {
        let squashed = args(&share(false, GuestIds::Squash { uid: 1000, gid: 100 }));
        assert_eq!(
            squashed[6..],
            [
                "--modcaps=-fsetid:-mknod",
                "--translate-uid=squash-guest:0:1000:4294967295",
                "--translate-gid=squash-guest:0:100:4294967295"
            ]
        );
        let shifted = args(&share(false, GuestIds::Shift { base: 0x7000_0000 }));
        assert_eq!(
            shifted[6..],
            [
                "--modcaps=-fsetid:-mknod",
                "--translate-uid=map:0:1879048192:65536",
                "--translate-uid=forbid-guest:65536:4294901759",
                "--translate-gid=map:0:1879048192:65536",
                "--translate-gid=forbid-guest:65536:4294901759",
            ]
        );
    }

    /// A user's VM: the guest's every id is the namespace's root (the user); the user
    /// shows as the project's uid, and root's files (unmapped) as root's.
    #[test]
    fn a_users_share_squashes_to_the_namespace_root() {
        let project = args(&share(false, GuestIds::Owner { shown_as: (1000, 100) }));
        assert_eq!(
            project[7..],
            [
                "--translate-uid=squash-guest:0:0:4294967295",
                "--translate-uid=host:65534:0:1",
                "--translate-uid=host:0:1000:1",
                "--translate-gid=squash-guest:0:0:4294967295",
                "--translate-gid=host:65534:0:1",
                "--translate-gid=host:0:100:1",
            ]
        );
        let etc = args(&share(false, GuestIds::Owner { shown_as: (0, 0) }));
        assert_eq!(etc.iter().filter(|arg| arg.contains("host:0:")).count(), 0);
    }

    /// A user's VM's own trees with subordinate ids: guest ids 0..65536 are the mapped
    /// namespace's 1..=65536 both ways, the user's own files look root's, nothing else
    /// passes.
    #[test]
    fn a_users_own_trees_map_onto_the_subordinate_range() {
        let var = args(&share(false, GuestIds::Subordinate));
        assert_eq!(var[1], "--shared-dir=.");
        assert_eq!(
            var[7..],
            [
                "--translate-uid=map:0:1:65536",
                "--translate-uid=forbid-guest:65536:4294901759",
                "--translate-uid=host:0:0:1",
                "--translate-gid=map:0:1:65536",
                "--translate-gid=forbid-guest:65536:4294901759",
                "--translate-gid=host:0:0:1",
            ]
        );
    }
}
