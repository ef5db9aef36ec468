//! The host's side of the guest agent (DESIGN §6): connecting to it, and a session over
//! it (raw terminal, signals, resize). The protocol itself is in `contract::protocol`.

pub mod client;
pub mod session;
