//! The VM's declared processes (`[[processes]]`), run by the guest init: started at boot,
//! restarted by policy (with a growing pause), stopped with SIGTERM before power-off.
//! Each writes `/var/log/mvm/NAME.log` and keeps `/var/log/mvm/NAME.state` current, which
//! the host reads through the VM's `var/` (`mvm logs --process`, `mvm inspect`).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::vm::{Process, RestartPolicy};
use crate::contract::protocol::ExitStatus;
use crate::contract::{ProcessState, GUEST_PATH, PROCESS_LOG_DIR as LOG_DIR};
use crate::guest::reaper;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

static STOPPING: AtomicBool = AtomicBool::new(false);

fn running() -> &'static Mutex<HashMap<String, u32>> {
    static RUNNING: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

/// Starts every process on a thread of its own.
pub fn start_all(processes: Vec<Process>) {
    let _ = std::fs::create_dir_all(LOG_DIR);
    let logs: Vec<String> =
        processes.iter().map(|process| format!("{LOG_DIR}/{}.log", process.name)).collect();
    for process in processes {
        std::thread::spawn(move || keep_running(&process));
    }
    if !logs.is_empty() {
        std::thread::spawn(move || loop {
            // A chatty dev server must not fill the host's disk through /var.
            for log in &logs {
                let _ = crate::log_cap::cap_log(std::path::Path::new(log), crate::log_cap::LOG_CAP);
            }
            std::thread::sleep(Duration::from_secs(2));
        });
    }
}

fn write_state(name: &str, state: &ProcessState) {
    if let Ok(json) = serde_json::to_vec(state) {
        let _ =
            crate::atomic::write_atomic(&std::path::Path::new(LOG_DIR).join(format!("{name}.state")), &json);
    }
}

fn keep_running(process: &Process) {
    let mut restarts = 0;
    let mut pause = Duration::from_secs(1);
    let mut last_exit = None;
    while !STOPPING.load(Ordering::SeqCst) {
        let log =
            OpenOptions::new().create(true).append(true).open(format!("{LOG_DIR}/{}.log", process.name));
        let Ok(log) = log else { return };
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", &process.command])
            .current_dir(process.workdir.as_deref().unwrap_or("/"))
            .env_clear()
            .env("PATH", GUEST_PATH)
            .env("HOME", "/root")
            .envs(&process.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_or(Stdio::null(), Stdio::from))
            .stderr(Stdio::from(log));
        // SAFETY: setsid is async-signal-safe; the process leads its own group, so a stop
        // reaches everything it started.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
        }
        let started = Instant::now();
        let spawned = {
            let _no_reaping = reaper::spawning();
            command.spawn()
        };
        let status = match spawned {
            Ok(child) => {
                let pid = child.id();
                let status = reaper::register(pid);
                running().lock().expect("process registry").insert(process.name.clone(), pid);
                write_state(
                    &process.name,
                    &ProcessState { state: "running".into(), pid: Some(pid), restarts, last_exit },
                );
                let status = status.recv().unwrap_or(ExitStatus::Code(255));
                running().lock().expect("process registry").remove(&process.name);
                status
            }
            Err(_) => ExitStatus::Code(127),
        };
        last_exit = Some(status);
        let again = match process.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => status != ExitStatus::Code(0),
            RestartPolicy::Always => true,
        };
        let state = if again && !STOPPING.load(Ordering::SeqCst) { "restarting" } else { "exited" };
        write_state(&process.name, &ProcessState { state: state.into(), pid: None, restarts, last_exit });
        if state == "exited" {
            return;
        }
        // Back off while it keeps failing fast; a process that ran a while starts at 1 s again.
        pause = if started.elapsed() > Duration::from_secs(30) {
            Duration::from_secs(1)
        } else {
            (pause * 2).min(Duration::from_secs(30))
        };
        std::thread::sleep(pause / 2);
        restarts += 1;
    }
}

/// Stops every process: SIGTERM to its group, SIGKILL after `grace`.
pub fn stop_all(grace: Duration) {
    STOPPING.store(true, Ordering::SeqCst);
    let pids: Vec<u32> = running().lock().expect("process registry").values().copied().collect();
    for pid in &pids {
        let _ = kill(Pid::from_raw(-(*pid as i32)), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while !running().lock().expect("process registry").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in running().lock().expect("process registry").values() {
        let _ = kill(Pid::from_raw(-(*pid as i32)), Signal::SIGKILL);
    }
}
