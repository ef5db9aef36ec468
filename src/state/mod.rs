//! Where mvm keeps things on the host, and the primitives that keep them consistent:
//! injected roots, locks, index claims, leases, seeding and the catalogue of VMs on disk.

pub mod disk;
pub mod lease;
pub mod paths;
pub mod seed;
pub mod store;
pub mod system_disk;

pub use mvm_base::lock;
pub use mvm_privileged::claims;
pub use paths::Paths;
