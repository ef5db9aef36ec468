//! Facts about the host machine: CPUs, memory, privileges, KVM, and where binaries live.

pub mod kvm;
pub mod mounts;
pub mod subids;
pub mod user;

pub use mvm_base::binaries;
pub use mvm_privileged::loopdev;

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

/// The host's TSC rate in kHz, when the CPU says it is constant (`constant_tsc`).
/// Under QEMU's TCG the guest's TSC runs at the host's rate, and telling the guest that
/// rate saves it a PIT calibration that fails when the host is busy.
pub fn constant_tsc_khz() -> Option<u64> {
    parse_tsc_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn parse_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let first_cpu = cpuinfo.split("\n\n").next()?;
    let flags = first_cpu.lines().find(|line| line.starts_with("flags"))?;
    if !flags.split_whitespace().any(|flag| flag == "constant_tsc") {
        return None;
    }
    let mhz: f64 =
        first_cpu.lines().find(|line| line.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
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
    fn parses_a_constant_tsc_rate() {
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2445.404\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n\nprocessor\t: 1\n";
        assert_eq!(super::parse_tsc_khz(cpuinfo), Some(2_445_404));
        assert_eq!(super::parse_tsc_khz("cpu MHz\t: 2000.0\nflags\t: fpu tsc\n"), None);
    }

    #[test]
    fn parses_mem_total() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        1 kB\n";
        assert_eq!(super::parse_mem_total(meminfo), Some(24000));
        assert_eq!(super::parse_mem_total("nothing"), None);
    }
}
