//! Shared test support: a sandboxed `mvm` (its own state, run and config roots), tier
//! gates that print why a test skips, and network namespaces that clean up after
//! themselves.
#![allow(dead_code)]

pub mod debs;
pub mod django;
pub mod dns;
pub mod e2e;
pub mod netns;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The mvm binary under test.
pub fn mvm_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mvm"))
}

/// Reports a skipped test on the real stderr (libtest captures `eprintln!`, not this),
/// or fails it when `MVM_TEST_STRICT` is set, as in CI where every tier must run.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("MVM_TEST_STRICT").is_some() {
        panic!("{test} cannot run: {reason} (MVM_TEST_STRICT is set, so skipping is a failure)");
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {reason}");
}

/// True when running as root; otherwise reports the skip.
pub fn require_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip(test, "needs root");
    }
    root
}

/// True when `program` is on PATH; otherwise reports the skip.
pub fn require_program(test: &str, program: &str) -> bool {
    let found = which::which(program).is_ok();
    if !found {
        skip(test, &format!("{program} is not installed (scripts/setup installs it)"));
    }
    found
}

/// The outcome of one `mvm` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts exit `code` and that stderr contains each of `needles`.
    #[track_caller]
    pub fn fails(&self, code: i32, needles: &[&str]) -> &Self {
        assert_eq!(self.code, code, "wrong exit code\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        for needle in needles {
            assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        }
        self
    }
}

/// An mvm whose state, runtime and config roots live in a temp dir of its own, deleted
/// afterwards unless `MVM_TEST_KEEP` is set (to read a failed test's logs).
pub struct Sandbox {
    dir: Option<tempfile::TempDir>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("mvm-test-").tempdir().unwrap();
        Sandbox { dir: Some(dir) }
    }

    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("sandbox dir").path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root().join("run")
    }

    pub fn config_file(&self) -> PathBuf {
        self.root().join("config.toml")
    }

    /// A fresh directory under the sandbox, e.g. a project.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let dir = self.root().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `mvm ARGS…` as a command, ready to run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(mvm_binary());
        command
            .args(args)
            .env("MVM_STATE_DIR", self.state_dir())
            .env("MVM_RUN_DIR", self.run_dir())
            .env("MVM_CONFIG", self.config_file())
            .env_remove("MVM_FAILPOINT")
            .stdin(Stdio::null());
        command
    }

    /// Runs `mvm ARGS…`.
    pub fn mvm(&self, args: &[&str]) -> Run {
        Run::from_output(self.command(args).output().unwrap())
    }

    /// Runs `mvm ARGS…` as user `uid` (the caller must be root).
    pub fn mvm_as(&self, uid: u32, args: &[&str]) -> Run {
        let mut command = self.command(args);
        // SAFETY: only async-signal-safe calls (setgid, setuid) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setgid(nix::unistd::Gid::from_raw(uid))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
                Ok(())
            });
        }
        Run::from_output(command.output().unwrap())
    }

    /// The names of the VM directories on disk (hidden entries excluded).
    pub fn vm_dirs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.state_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// Every entry of the state dir, hidden ones included.
    pub fn state_entries(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.state_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> =
            entries.map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// `mvm list --json`, parsed.
    pub fn list_json(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(self.mvm(&["list", "--json"]).ok()).unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::env::var_os("MVM_TEST_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                let _ = writeln!(std::io::stderr().lock(), "keeping {}", dir.keep().display());
            }
        }
    }
}
