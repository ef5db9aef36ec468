//! Host networking (DESIGN §3): a bridge and a tap per VM, NAT, isolation and port
//! forwards. `plan` is pure (the addresses are `mvm_base::addr`); `netlink`, `tap`,
//! `sysctl`, `conntrack` and `firewall` touch the kernel, reached through two seams
//! (`kernel::Kernel` and `firewall::FirewallBackend`); `host` puts them together under the
//! network lock.

pub mod conntrack;
pub mod firewall;
pub mod host;
pub mod kernel;
pub mod netlink;
pub mod plan;
pub mod ports;
pub mod sysctl;
pub mod tap;
