//! The boot chain: which kernel and modules a VM boots with.

pub mod kernel;
