//! The boot chain (DESIGN §4): which kernel, which modules, and the initramfs that
//! carries mvm into the guest as its init.

pub mod cpio;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod notify;
