//! The privileged part: what a group member's VM needs from root, and nothing else.
//!
//! After `sudo mvm setup`, mvm runs as the developer; the hypervisor and every virtiofsd
//! run as them too. Five things still need root — a bridge and tap for the VM, its
//! firewall rules, removing them, the VM's DNS sockets on port 53, and mounting (or
//! removing) the disk that bounds the VM's files — and cross into `mvm-helper`, the
//! setuid-root program this crate builds, which only members of mvm's group may run
//! (mode 4750, group `mvm`). It takes one request from a closed set ([`Request`]),
//! knows its caller by the real uid the kernel gives it, and derives everything it does
//! from the VM's record and the root-owned host config: never from its arguments,
//! environment or anything else the caller chose (`helper`). Root itself skips the
//! helper and does the same work in-process (`mvm`'s `privileged::client`).
//!
//! The crate depends on `mvm-base` alone among mvm's code; `docs/architecture.md`
//! ("The privileged part") lists what the helper reaches.
//!
//! - `request`: the closed set of requests and their argv;
//! - `helper`: checking a request against its caller, then acting;
//! - `record`, `roots`: what the helper reads, and where;
//! - `net`: the VM's bridge, tap and firewall rules; `dns_sockets`: its port 53;
//! - `disk`: the files disk that bounds what the guest writes, on a `loopdev`;
//! - `claims`: which user's VM holds a network index; `forward`, `proc_net`: port
//!   forwards and the host's own listeners.

pub mod claims;
pub mod disk;
pub mod dns_sockets;
pub mod forward;
pub mod helper;
pub mod loopdev;
pub mod net;
pub mod proc_net;
pub mod record;
pub mod request;
pub mod roots;

pub use request::{Request, HELPER_PATH};
