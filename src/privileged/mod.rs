//! The privileged part as mvm uses it. The part itself — the requests, the helper's
//! checks, the network and disk work — is the `mvm-privileged` crate, which the setuid
//! `mvm-helper` links alone; `client` is how mvm asks for it: in-process as root, else
//! through the helper.

pub mod client;

pub use mvm_privileged::{disk, helper, Request, HELPER_PATH};
