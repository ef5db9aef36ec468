//! A session connection's write half, shared by the threads that send frames on it: the
//! agent's exec, the file-event relay and the port forwards.

use std::fs::File;
use std::sync::{Arc, Mutex};

use crate::contract::protocol::Frame;

/// A connection's write half, shared by the threads that send frames.
pub(super) type Sender = Arc<Mutex<File>>;

/// Sends `frame`; whether the connection took it.
pub(super) fn send(sender: &Sender, frame: &Frame) -> bool {
    frame.write_to(&mut *sender.lock().expect("agent connection")).is_ok()
}
