//! Child reaping for PID 1. One thread owns `waitpid(-1)`: it reaps every orphan the
//! kernel hands to init, and passes the status of a process someone registered (the
//! agent's commands) to that registrant. A status that arrives before its registration
//! is kept until the registration comes.
//!
//! A spawn in progress is never raced: the standard library waits for a child whose
//! `exec` failed itself (and panics if that child was reaped already), so the reaper
//! first only looks at an ended child (`WNOWAIT`), then reaps it once no spawn is under
//! way ([`spawning`]).

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a status may wait for its registration; older ones belong to orphans whose
/// pid a new child may reuse.
const CLAIM_WINDOW: Duration = Duration::from_secs(5);

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};

use crate::contract::protocol::ExitStatus;

#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, Sender<ExitStatus>>,
    unclaimed: HashMap<i32, (ExitStatus, Instant)>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// Held around `Command::spawn` in PID 1: the reaper reaps nothing meanwhile.
pub fn spawning() -> std::sync::MutexGuard<'static, ()> {
    static SPAWNING: Mutex<()> = Mutex::new(());
    SPAWNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The exit status of child `pid`, delivered once it ends.
pub fn register(pid: u32) -> Receiver<ExitStatus> {
    let (sender, receiver) = channel();
    let mut registry = registry().lock().expect("reaper registry");
    match registry.unclaimed.remove(&(pid as i32)).filter(|(_, at)| at.elapsed() < CLAIM_WINDOW) {
        Some((status, _)) => {
            let _ = sender.send(status);
        }
        None => {
            registry.waiting.insert(pid as i32, sender);
        }
    }
    receiver
}

/// Reaps children forever (run on a thread of its own in PID 1).
pub fn reap_forever() -> ! {
    loop {
        // Look first, without reaping: a spawn may be about to wait for this child itself.
        let ended = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(_) => continue,
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let spawn_done = spawning();
        let (pid, status) = match waitpid(ended, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signal(signal as i32)),
            // Reaped by the spawn that made it (its exec failed).
            _ => continue,
        };
        drop(spawn_done);
        let mut registry = registry().lock().expect("reaper registry");
        match registry.waiting.remove(&pid.as_raw()) {
            Some(sender) => {
                let _ = sender.send(status);
            }
            None => {
                registry.unclaimed.retain(|_, (_, at)| at.elapsed() < CLAIM_WINDOW);
                registry.unclaimed.insert(pid.as_raw(), (status, Instant::now()));
            }
        }
    }
}
