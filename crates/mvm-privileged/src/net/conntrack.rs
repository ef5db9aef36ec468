//! Forgetting the connections a VM's subnet had (conntrack-tools' `conntrack`).
//!
//! The firewall lets packets of a known connection through (`ESTABLISHED`) whoever the
//! guest behind the address is now. A connection the last holder of an index left open
//! — its guest silenced, its bridge deleted, the kernel's entry alive for days — would
//! carry its owner into the next VM on that address past every rule that drops new
//! connections. So a VM's network forgets every entry with an address of its subnet
//! before it comes up and when it goes down.

use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use mvm_base::addr::VmNetwork;
use mvm_base::binaries::BinaryPaths;
use mvm_base::binaries::Tool;

/// Deletes every conntrack entry with an address of `network`'s subnet on either side,
/// in either direction (a DNAT'ed flow names the guest only in its reply tuple, which
/// `conntrack` matches by exact address alone: the gateway's and the guest's are the
/// subnet's only hosts).
pub fn forget(network: &VmNetwork) -> anyhow::Result<()> {
    let subnet = network.subnet.to_string();
    let (guest, gateway) = (network.address.to_string(), network.gateway.to_string());
    let filters = [
        ("--orig-src", &subnet),
        ("--orig-dst", &subnet),
        ("--reply-src", &guest),
        ("--reply-src", &gateway),
        ("--reply-dst", &guest),
        ("--reply-dst", &gateway),
    ];
    let conntrack = Tool::Conntrack.find(&BinaryPaths::default())?;
    for (side, address) in filters {
        let output = Command::new(&conntrack)
            .args(["-D", side, address])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", conntrack.display()))?;
        // It exits 1 when nothing matched, which is no failure.
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && !stderr.contains("0 flow entries have been deleted") {
            bail!("conntrack -D {side} {address} failed: {}", stderr.trim());
        }
    }
    Ok(())
}
