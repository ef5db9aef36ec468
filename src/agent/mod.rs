//! The guest agent's protocol and the host's client for it (DESIGN §6).

pub mod changes;
pub mod client;
pub mod session;
