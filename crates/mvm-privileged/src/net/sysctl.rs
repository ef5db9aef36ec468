//! The few sysctls host networking needs, written under `/proc/sys` (which shows the
//! calling thread's network namespace).

use std::path::PathBuf;

use anyhow::Context;

/// Sets `key` (dotted, e.g. `net.ipv4.ip_forward`) to `value` unless it already is.
pub fn set(key: &str, value: &str) -> anyhow::Result<()> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let current = std::fs::read_to_string(&path).with_context(|| format!("cannot read sysctl {key}"))?;
    if current.trim() != value {
        std::fs::write(&path, value).with_context(|| format!("cannot set sysctl {key}={value}"))?;
    }
    Ok(())
}

/// Sets a per-interface IPv4 or IPv6 conf value, e.g. `("ipv4", "mvmbr3", "route_localnet", "1")`.
pub fn set_interface(family: &str, interface: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = PathBuf::from("/proc/sys/net").join(family).join("conf").join(interface).join(key);
    std::fs::write(&path, value).with_context(|| format!("cannot set {}", path.display()))
}
