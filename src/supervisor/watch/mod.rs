//! File events for a VM's project (issue: host edits reach the guest's watchers).
//!
//! Two threads per VM with a project and a guest that can raise file events. One
//! watches the project on the host ([`tree::Watches`]) and gathers what changes
//! ([`pending::Pending`]); the other, once the guest is up, opens a `WatchFiles`
//! connection to the agent and sends each gathered batch as a `FileChanges` frame, the
//! next only after the guest applied the last: a burst coalesces while the guest works,
//! and a guest that stops answering holds a bounded batch, never the supervisor.
//!
//! In overlay mode the host watches the project itself (the overlay's lower layer); a
//! path the guest has made its own in the upper layer hides the host's file, so a change
//! to it is not the guest's business and is not sent.

mod pending;
mod tree;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::contract::changes::{Change, FileChange};
use crate::contract::protocol::{Frame, WatchedProject};
use crate::fs::Tree;
use pending::Pending;
use tree::Watches;

/// The most directories one VM's project has watched.
pub const WATCH_LIMIT: usize = 65_536;
/// How long the sender lets a batch gather after its first change (a rename's halves,
/// an editor's write-then-rename, arrive together).
const GATHER: Duration = Duration::from_millis(5);
/// Where a `FileChanges` payload is cut: one more record (two paths at most) keeps it
/// within the module's 256 KiB per write (`MAX_WRITE` in `kmod/mvm_notify.c`).
const MAX_PAYLOAD: usize = 192 * 1024;
/// A batch past which the memory it took is handed back to the system.
const BIG_BATCH: usize = 1024;
/// How long the guest may take to apply one payload before the connection is made anew.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a rename's first half waits for its second before it counts as a deletion.
const MOVE_PAIRING: u16 = 20;
/// How often a quiet watcher looks whether its boot ended.
const STOP_CHECK: u16 = 500;

/// What a VM's file events need.
pub struct WatchTarget {
    /// The directory the project is read from on the host.
    pub project: PathBuf,
    /// The overlay's upper layer, in overlay mode.
    pub upper: Option<PathBuf>,
    /// Where the project is in the guest.
    pub guest_root: String,
    /// In overlay mode, where the guest mounted the host's project beneath its overlay.
    pub guest_lower: Option<String>,
    /// The hybrid vsock socket of the agent.
    pub vsock: PathBuf,
    /// The console log, whose ready line says the agent listens.
    pub console: PathBuf,
    /// The VM's run directory, where `runtime::note_file_events` says how file events stand.
    pub run_dir: PathBuf,
}

type Shared = Arc<(Mutex<Gathered>, Condvar)>;

#[derive(Default)]
struct Gathered {
    pending: Pending,
    /// The guest cannot raise file events, or its boot ended: the watcher ends.
    off: bool,
}

fn is_off(shared: &Shared) -> bool {
    shared.0.lock().expect("file events").off
}

/// The file events of one boot: dropped when the boot ends, and its threads end with it
/// (a rebooted guest gets a watcher of its own, never a second one beside the first).
pub struct Watcher {
    shared: Shared,
    /// How much of the project is watched.
    pub coverage: Coverage,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().expect("file events").off = true;
        wake.notify_all();
    }
}

/// How much of a project is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every directory: every host change reaches the guest.
    Whole,
    /// Some directories, or none.
    Partial,
}

/// Watches `target`'s project (every directory, before this returns) and sends its
/// changes to the guest until the returned watcher is dropped.
pub fn spawn(target: WatchTarget) -> Watcher {
    let shared: Shared = Arc::default();
    let started = Instant::now();
    let watches = match Tree::open_exact(&target.project).and_then(|root| Watches::new(root, WATCH_LIMIT)) {
        Ok(watches) => watches,
        Err(error) => {
            log!("no file events in the guest: cannot watch the project: {error}");
            crate::runtime::note_file_events(
                &target.run_dir,
                &format!("off: cannot watch the project: {error}"),
            );
            return Watcher { shared, coverage: Coverage::Partial };
        }
    };
    log!(
        "watching {} directories of the project for file events ({} ms)",
        watches.len(),
        started.elapsed().as_millis()
    );
    let coverage = match &watches.incomplete {
        None => {
            crate::runtime::note_file_events(
                &target.run_dir,
                &format!("on, {} directories watched", watches.len()),
            );
            Coverage::Whole
        }
        Some(why) => {
            log!("file events: {why}");
            crate::runtime::note_file_events(&target.run_dir, &format!("partial: {why}"));
            Coverage::Partial
        }
    };
    let upper = target.upper.as_deref().and_then(|upper| Tree::open(upper).ok());
    let (gathering, sending) = (shared.clone(), shared.clone());
    std::thread::spawn(move || gather(watches, upper, &gathering));
    std::thread::spawn(move || send(&target, &sending));
    Watcher { shared, coverage }
}

/// Reads the project's events into the shared batch until the guest turns them down or
/// its boot ends.
fn gather(mut watches: Watches, upper: Option<Tree>, shared: &Shared) {
    let mut changes = Vec::new();
    let mut noted_incomplete = watches.incomplete.is_some();
    loop {
        let timeout = PollTimeout::from(if watches.awaiting_moves() { MOVE_PAIRING } else { STOP_CHECK });
        let ready = nix::poll::poll(&mut [PollFd::new(watches.fd(), PollFlags::POLLIN)], timeout);
        match ready {
            Ok(0) if is_off(shared) => return,
            Ok(0) => watches.flush_moves(&mut changes),
            Ok(_) => {
                if let Err(error) = watches.read(&mut changes) {
                    log!("file events: cannot read the project's events: {error}");
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => {
                log!("file events: cannot wait for the project's events: {error}");
                return;
            }
        }
        if !noted_incomplete {
            if let Some(why) = &watches.incomplete {
                log!("file events: {why}");
                noted_incomplete = true;
            }
        }
        if let Some(upper) = &upper {
            changes.retain(|change| !shadowed(upper, change));
        }
        let (lock, wake) = &**shared;
        let mut gathered = lock.lock().expect("file events");
        if gathered.off {
            return;
        }
        for change in changes.drain(..) {
            gathered.pending.push(change);
        }
        if !gathered.pending.is_empty() {
            wake.notify_one();
        }
    }
}

/// Whether the guest's own layer hides `change`'s path (a rename is never hidden whole).
fn shadowed(upper: &Tree, change: &FileChange) -> bool {
    !matches!(change.change, Change::Renamed(_) | Change::Rescan)
        && upper.metadata(&change.path).is_ok_and(|meta| meta.is_some())
}

/// Sends the gathered batches to the guest for as long as it takes them and its boot
/// lasts.
fn send(target: &WatchTarget, shared: &Shared) {
    // This boot's console has the ready line once; it may be rotated away later.
    while !crate::supervisor::launch::guest_ready(&target.console) {
        if is_off(shared) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut announced = false;
    while !is_off(shared) {
        let mut stream = match open(target) {
            Ok(stream) => stream,
            Err(Refusal::Off(why)) => {
                log!("no file events in the guest: {why}");
                crate::runtime::note_file_events(&target.run_dir, &format!("off: {why}"));
                let (lock, _) = &**shared;
                lock.lock().expect("file events").off = true;
                return;
            }
            Err(Refusal::NotYet) => {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if !announced {
            log!("file events on for {}", target.guest_root);
            announced = true;
        }
        while let Some(batch) = next_batch(shared) {
            let delivered = deliver(&mut stream, &batch);
            if batch.len() > BIG_BATCH {
                drop(batch);
                // SAFETY: malloc_trim only hands the allocator's free memory back to the
                // system; a burst (a checkout) leaves no lasting footprint.
                unsafe { nix::libc::malloc_trim(0) };
            }
            if let Err(error) = delivered {
                if is_off(shared) {
                    return;
                }
                log!("file events: the agent connection ended ({error}); making it again");
                let (lock, _) = &**shared;
                let rescan = FileChange { change: Change::Rescan, path: PathBuf::new(), dir: true };
                lock.lock().expect("file events").pending.push(rescan);
                break;
            }
        }
    }
}

enum Refusal {
    /// The guest cannot raise file events (no module): said once, never asked again.
    Off(String),
    /// The agent is not there (yet, or any more).
    NotYet,
}

/// Opens the `WatchFiles` connection.
fn open(target: &WatchTarget) -> Result<std::os::unix::net::UnixStream, Refusal> {
    let mut stream =
        crate::agent::client::connect(&target.vsock, Duration::from_secs(2)).map_err(|_| Refusal::NotYet)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|_| Refusal::NotYet)?;
    let project = WatchedProject { root: target.guest_root.clone(), lower: target.guest_lower.clone() };
    Frame::WatchFiles(project).write_to(&mut stream).map_err(|_| Refusal::NotYet)?;
    match Frame::read_from(&mut stream) {
        Ok(Some(Frame::Pong(_))) => {
            stream.set_read_timeout(Some(APPLY_TIMEOUT)).map_err(|_| Refusal::NotYet)?;
            Ok(stream)
        }
        Ok(Some(Frame::Error(why))) => Err(Refusal::Off(why)),
        _ => Err(Refusal::NotYet),
    }
}

/// Waits for changes, lets them gather a moment, and takes them; `None` once the
/// watcher is off.
fn next_batch(shared: &Shared) -> Option<Vec<FileChange>> {
    let (lock, wake) = &**shared;
    let mut gathered = lock.lock().expect("file events");
    while gathered.pending.is_empty() && !gathered.off {
        gathered = wake.wait(gathered).expect("file events");
    }
    if gathered.off {
        return None;
    }
    drop(gathered);
    std::thread::sleep(GATHER);
    Some(lock.lock().expect("file events").pending.take())
}

/// Sends `batch` and waits until the guest applied it.
fn deliver(stream: &mut std::os::unix::net::UnixStream, batch: &[FileChange]) -> std::io::Result<()> {
    let mut payload = Vec::new();
    for (at, change) in batch.iter().enumerate() {
        change.encode(&mut payload);
        if payload.len() >= MAX_PAYLOAD || at + 1 == batch.len() {
            Frame::FileChanges(std::mem::take(&mut payload)).write_to(stream)?;
            match Frame::read_from(stream)? {
                Some(Frame::Pong(_)) => {}
                other => return Err(std::io::Error::other(format!("the agent answered {other:?}"))),
            }
        }
    }
    Ok(())
}
