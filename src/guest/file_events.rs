//! The guest end of file events: the host's changes to the project, written to the
//! file-event module's device ([`crate::boot::notify`]), which raises them as the guest
//! kernel's own inotify/fanotify events and drops what the guest cached of them.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::contract::changes::root_records;
use crate::contract::protocol::{Frame, WatchedProject};
use crate::contract::NOTIFY_DEVICE;
use crate::guest::sender::{send, Sender};

/// Serves one `WatchFiles` connection for `project` until the host hangs up.
pub fn serve(project: &WatchedProject, connection: &mut File, sender: &Sender) {
    let root = &project.root;
    let mut device = match std::fs::OpenOptions::new().write(true).open(NOTIFY_DEVICE) {
        Ok(device) => device,
        Err(error) => {
            let why = if error.kind() == std::io::ErrorKind::NotFound {
                "the guest's file-event module is not loaded (the console says why)".to_string()
            } else {
                format!("cannot open {NOTIFY_DEVICE}: {error}")
            };
            send(sender, &Frame::Error(why));
            return;
        }
    };
    // Each write is whole records: the module applies them before it returns.
    let records = root_records(Path::new(root), project.lower.as_deref().map(Path::new));
    if let Err(error) = device.write_all(&records) {
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
