//! virtiofsd (the Rust one, 1.x) command lines: one daemon per share, serving exactly one
//! VMM connection and exiting when it ends.

use crate::vmm::Share;

/// The argv (without the program) that serves `share`.
pub fn args(share: &Share) -> Vec<String> {
    let mut args = vec![
        format!("--socket-path={}", share.socket.display()),
        format!("--shared-dir={}", share.dir.display()),
        "--cache=auto".to_string(),
        "--sandbox=chroot".to_string(),
        "--inode-file-handles=never".to_string(),
        "--log-level=error".to_string(),
    ];
    if share.read_only {
        args.push("--readonly".to_string());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_argv() {
        let share = Share {
            tag: "usr".into(),
            dir: "/usr".into(),
            socket: "/run/mvm/web/fs-usr.sock".into(),
            read_only: true,
        };
        assert_eq!(
            args(&share),
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
}
