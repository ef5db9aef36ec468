//! Logs a guest fills, kept to a size: the serial console (rotated by the supervisor)
//! and the declared processes' logs (rotated by the guest init). Past [`LOG_CAP`] a log is
//! copied to `NAME.1` (replacing the last copy) and truncated, so it never holds much more
//! than twice the cap. Its writers append, so they write on at the new end; one that does
//! not leaves a hole before its next line, which takes no disk and readers skip
//! (`fs::data_start`). This bounds what a working guest's logs take; a hostile guest can
//! still write anywhere it may write (docs/architecture.md, "Trust").

use std::path::Path;

/// The most of a log kept in it, and the most of it `mvm logs` prints without `--follow`.
pub const LOG_CAP: u64 = 10 << 20;

/// Rotates the log at `path` when it is larger than `cap`; says whether it did.
pub fn cap_log(path: &Path, cap: u64) -> std::io::Result<bool> {
    if std::fs::symlink_metadata(path).map_or(true, |meta| !meta.is_file() || meta.len() <= cap) {
        return Ok(false);
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    std::fs::copy(path, &rotated)?;
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_cap_is_rotated_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "x".repeat(100)).unwrap();
        assert!(!cap_log(&log, 200).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100, "rotated under the cap");
        std::fs::write(&log, "y".repeat(300)).unwrap();
        assert!(cap_log(&log, 200).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(std::fs::read(dir.path().join("console.log.1")).unwrap().len(), 300);
    }
}
