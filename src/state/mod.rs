//! Where mvm keeps things on the host, and the primitives that keep them consistent:
//! injected roots, locks, index claims, leases, seeding and the catalogue of VMs on disk.

pub mod claims;
pub mod disk;
pub mod lease;
pub mod lock;
pub mod paths;
pub mod seed;
pub mod store;
pub mod system_disk;

pub use paths::Paths;
