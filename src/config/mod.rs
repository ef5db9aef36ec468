//! Configuration: the host's (`/etc/mvm/config.toml`) and each VM's (`vm.toml`).

pub mod host;
pub mod template;
pub mod vm;
