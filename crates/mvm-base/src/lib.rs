//! mvm's foundations: what every other part builds on and what builds on nothing of
//! mvm's. Both the `mvm` library and the setuid helper's crate (`mvm-privileged`) use
//! it; nothing here knows about VMs beyond their names and addresses.
//!
//! - `error`: the errors a user sees, with their hints and exit codes;
//! - `name`: VM and image names (what may appear in a path);
//! - `addr`: IPv4 networks and the per-VM address plan;
//! - `fs`: reading and writing beneath a root without following what a guest planted;
//! - `atomic`: atomic file writes;
//! - `lock`: advisory file locks;
//! - `binaries`: where the host programs mvm runs are.

pub mod addr;
pub mod atomic;
pub mod binaries;
pub mod error;
pub mod fs;
pub mod lock;
pub mod name;
