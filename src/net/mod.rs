//! Host networking: addressing now; bridges, taps and firewall rules build on it.

pub mod addr;
