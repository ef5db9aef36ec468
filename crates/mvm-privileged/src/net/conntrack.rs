//! Forgetting the connections a VM's subnet had (conntrack-tools' `conntrack`).
//!
//! The firewall lets packets of a known connection through (`ESTABLISHED`) whoever the
//! guest behind the address is now. A connection the last holder of an index left open
//! — its guest silenced, its bridge deleted, the kernel's entry alive for days — would
//! carry its owner into the next VM on that address past every rule that drops new
//! connections. So a VM's network forgets every entry with an address of its subnet
//! before it comes up and when it goes down.
//!
//! `conntrack` deletes by one filter at a time, and six filters take six runs (about
//! 100 ms). Usually nothing of the subnet is tracked but the kernel's own IGMP reports
//! from the gateway (sent whenever the bridge comes up), which no guest can answer or
//! use: one listing (one run) says so, and the deletions are skipped.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
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
    let conntrack = Tool::Conntrack.find(&BinaryPaths::default())?;
    if !may_track(&conntrack, network)? {
        return Ok(());
    }
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

/// Whether the kernel may track a connection of `network`'s subnet: false only when a
/// whole listing (`conntrack -L`) has none. The listing is read a line at a time, up to
/// the first that names the subnet: the table's size is the guests' to make, and never
/// held here.
fn may_track(conntrack: &Path, network: &VmNetwork) -> anyhow::Result<bool> {
    let mut child = Command::new(conntrack)
        .args(["-L", "-f", "ipv4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", conntrack.display()))?;
    let listing = BufReader::new(child.stdout.take().expect("piped stdout"));
    // A line that cannot be read may be the one.
    let named = listing.split(b'\n').any(|line| line.map_or(true, |line| may_carry_a_guest(&line, network)));
    if named {
        let _ = child.kill();
    }
    let status = child.wait()?;
    // A listing that failed decides nothing: the deletions say why, or find nothing.
    Ok(named || !status.success())
}

/// Whether a line of a `conntrack -L` listing is an entry a guest on `network` could have
/// made or could use: any naming an address of the subnet in either tuple (`src=`, `dst=`)
/// but the kernel's own IGMP reports from the gateway, unanswered (what a bridge sends as it
/// comes up, made again under the next VM). Only the kernel and root send IGMP, and a
/// guest cannot answer one: the bridges drop every source but the guest's before the
/// connection tracker sees it (`plan`'s raw rules). Any other entry, a host user's
/// broadcast from the gateway included, may be a channel into the next guest.
fn may_carry_a_guest(line: &[u8], network: &VmNetwork) -> bool {
    let words: Vec<&[u8]> = line.split(|byte| byte.is_ascii_whitespace()).filter(|w| !w.is_empty()).collect();
    let addresses: Vec<Ipv4Addr> = words
        .iter()
        .filter_map(|word| word.strip_prefix(b"src=").or_else(|| word.strip_prefix(b"dst=")))
        .filter_map(|address| std::str::from_utf8(address).ok()?.parse().ok())
        .collect();
    let igmp = words.get(1) == Some(&b"2".as_slice());
    let unanswered = words.contains(&b"[UNREPLIED]".as_slice());
    let kernels_report = igmp
        && unanswered
        && matches!(addresses[..], [source, group, ..] if source == network.gateway && group.is_multicast());
    !kernels_report && addresses.iter().any(|address| network.subnet.contains(*address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_names_the_subnet_in_either_tuple_or_not_at_all() {
        let pool = mvm_base::addr::AddressPool::new("10.200.0.0/16".parse().unwrap(), 24).unwrap();
        let network = pool.vm(4).unwrap();
        // A DNAT'ed connection names the guest in its reply tuple only.
        let dnat = "tcp      6 431999 ESTABLISHED src=192.168.1.5 dst=192.168.1.2 sport=5000 dport=8080 \
                    src=10.200.4.2 dst=192.168.1.5 sport=3000 dport=5000 [ASSURED] mark=0 use=1\n";
        assert!(may_carry_a_guest(dnat.as_bytes(), &network));
        let others = "udp      17 29 src=10.200.5.2 dst=1.1.1.1 sport=53 dport=53 [UNREPLIED] \
                      src=1.1.1.1 dst=10.200.5.2 sport=53 dport=53 mark=0 use=1\n\
                      tcp      6 10 TIME_WAIT src=10.200.40.2 dst=10.2.4.2 sport=1 dport=2 src=x dst=y\n";
        assert!(others.lines().all(|line| !may_carry_a_guest(line.as_bytes(), &network)));
        assert!(!may_carry_a_guest(b"", &network));
    }

    #[test]
    fn only_the_kernels_unanswered_igmp_from_the_gateway_carries_no_guest() {
        let pool = mvm_base::addr::AddressPool::new("10.200.0.0/16".parse().unwrap(), 24).unwrap();
        let network = pool.vm(4).unwrap();
        // What the bridge sends as it comes up: IGMP from the gateway, never answered.
        let report = "unknown  2 599 src=10.200.4.1 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=10.200.4.1 mark=0 use=1";
        assert!(!may_carry_a_guest(report.as_bytes(), &network));
        let carrying = [
            // Answered (a guest forging a group's reply, were the bridges to let it).
            "unknown  2 599 src=10.200.4.1 dst=224.0.0.22 src=224.0.0.22 dst=10.200.4.1 mark=0 use=1",
            // The guest's own group traffic names the guest.
            "unknown  2 599 src=10.200.4.2 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=10.200.4.2 mark=0 use=1",
            // A host user's broadcast or multicast from the gateway: anyone may send one.
            "udp      17 29 src=10.200.4.1 dst=10.200.4.255 sport=40000 dport=9999 [UNREPLIED] \
             src=10.200.4.255 dst=10.200.4.1 sport=9999 dport=40000 mark=0 use=1",
            "udp      17 29 src=10.200.4.1 dst=224.0.0.251 sport=5353 dport=5353 [UNREPLIED] \
             src=224.0.0.251 dst=10.200.4.1 sport=5353 dport=5353 mark=0 use=1",
            // IGMP toward the gateway rather than from it.
            "unknown  2 599 src=224.0.0.22 dst=10.200.4.1 [UNREPLIED] src=10.200.4.1 dst=224.0.0.22 mark=0 use=1",
            // A flow between the gateway and any host that can answer.
            "tcp      6 431999 ESTABLISHED src=10.200.4.1 dst=93.184.216.34 sport=4000 dport=80 \
             src=93.184.216.34 dst=192.168.1.2 sport=80 dport=4000 [ASSURED] mark=0 use=1",
            // The guest talking to its gateway (the resolver).
            "udp      17 29 src=10.200.4.2 dst=10.200.4.1 sport=5000 dport=53 src=10.200.4.1 dst=10.200.4.2 sport=53 dport=5000",
        ];
        for line in carrying {
            assert!(may_carry_a_guest(line.as_bytes(), &network), "{line}");
        }
    }
}
