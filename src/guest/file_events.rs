//! The guest end of file events: the host's changes to the project, written to the
//! file-event module's device ([`crate::boot::notify`]), which raises them as the guest
//! kernel's own inotify/fanotify events and drops what the guest cached of them.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::agent::changes::root_record;
use crate::agent::protocol::Frame;
use crate::boot::notify::DEVICE;
use crate::guest::agent::{send, Sender};

/// Serves one `WatchFiles` connection for the project at `root` until the host hangs up.
pub fn serve(root: &str, connection: &mut File, sender: &Sender) {
    let mut device = match std::fs::OpenOptions::new().write(true).open(DEVICE) {
        Ok(device) => device,
        Err(error) => {
            let why = if error.kind() == std::io::ErrorKind::NotFound {
                "the guest's file-event module is not loaded (the console says why)".to_string()
            } else {
                format!("cannot open {DEVICE}: {error}")
            };
            send(sender, &Frame::Error(why));
            return;
        }
    };
    // Each write is whole records: the module applies them before it returns.
    if let Err(error) = device.write_all(&root_record(Path::new(root))) {
        send(sender, &Frame::Error(format!("the file-event module refused the project {root}: {error}")));
        return;
    }
    send(sender, &Frame::Pong(0));
    while let Ok(Some(Frame::FileChanges(records))) = Frame::read_from(connection) {
        if let Err(error) = device.write_all(&records) {
            eprintln!("mvm-agent: the file-event module refused {} bytes of changes: {error}", records.len());
        }
        if !send(sender, &Frame::Pong(0)) {
            return;
        }
    }
}
