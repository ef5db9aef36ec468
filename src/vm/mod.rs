//! A VM's lifecycle as library calls: create, start, stop, remove and up. The commands
//! parse and print; these act, and none of them calls a command (youki's libcontainer
//! under its thin CLI is the model).

pub mod create;
pub mod files;
#[cfg(test)]
mod fixtures;
pub mod pause;
pub mod ports;
pub mod remove;
pub mod start;
pub mod stop;
pub mod up;
