//! Facts about the host machine: CPUs, memory, privileges, KVM, and where binaries live.

pub mod binaries;
pub mod kvm;
pub mod user;

/// The number of CPUs this process may use.
pub fn cpu_count() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Total memory in MiB, from `/proc/meminfo`.
pub fn memory_total_mib() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|uts| uts.release().to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_mem_total() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        1 kB\n";
        assert_eq!(super::parse_mem_total(meminfo), Some(24000));
        assert_eq!(super::parse_mem_total("nothing"), None);
    }
}
