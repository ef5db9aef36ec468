//! Errors a user can act on, and the exit codes they map to.
//!
//! Most failures travel as [`anyhow::Error`] with context attached on the way up.
//! Where mvm knows *what kind* of failure it is (a VM that does not exist, a name
//! already taken, a missing binary), the root cause is a [`UserError`], which
//! carries the exit code and an optional hint. [`report`] prints the chain the way
//! just and ripgrep do: `error: …`, one `caused by: …` per layer, then `hint: …`.

use std::fmt;
use std::io::Write;

/// The documented exit codes of mvm (also listed in `mvm --help` and README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    /// Everything worked.
    Success = 0,
    /// Something failed that is not one of the kinds below.
    Failure = 1,
    /// The command line or a value in it is invalid.
    Usage = 2,
    /// The named VM (or path) does not exist.
    NotFound = 3,
    /// The request conflicts with what exists: a taken name or port, a VM in the wrong state.
    Conflict = 4,
    /// A binary, kernel or other host prerequisite is missing.
    MissingDependency = 5,
    /// The command needs root privileges.
    NeedsRoot = 6,
}

impl ExitCode {
    /// The process exit status for this code.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// The exit-code table shown in `--help`, README and the man page.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  failure
  2  usage: invalid command line or value
  3  not found: no such VM or path
  4  conflict: name or port taken, VM in the wrong state
  5  missing dependency: binary, kernel or KVM missing
  6  needs root
  `mvm shell NAME -- CMD` exits with CMD's own code.";

/// A failure whose kind is known, with a hint on how to fix it.
#[derive(Debug)]
pub struct UserError {
    kind: ExitCode,
    message: String,
    hint: Option<String>,
}

impl UserError {
    /// A failure of the given kind.
    pub fn new(kind: ExitCode, message: impl Into<String>) -> Self {
        UserError { kind, message: message.into(), hint: None }
    }

    /// An invalid value or command line (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Usage, message)
    }

    /// Something named does not exist (exit code 3).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ExitCode::NotFound, message)
    }

    /// The request conflicts with existing state (exit code 4).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Conflict, message)
    }

    /// A host prerequisite is missing (exit code 5).
    pub fn missing_dependency(message: impl Into<String>) -> Self {
        Self::new(ExitCode::MissingDependency, message)
    }

    /// The operation needs root (exit code 6).
    pub fn needs_root(message: impl Into<String>) -> Self {
        Self::new(ExitCode::NeedsRoot, message)
    }

    /// Attaches a hint telling the user how to fix the problem.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The exit code this failure maps to.
    pub fn kind(&self) -> ExitCode {
        self.kind
    }

    /// The hint, if any.
    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// The exit code for an error: that of the first [`UserError`] in its chain, else 1.
pub fn exit_code_of(error: &anyhow::Error) -> ExitCode {
    user_error_in(error).map_or(ExitCode::Failure, UserError::kind)
}

fn user_error_in(error: &anyhow::Error) -> Option<&UserError> {
    error.chain().find_map(|cause| cause.downcast_ref::<UserError>())
}

/// The hint of the first [`UserError`] in an error's chain.
pub fn hint_of(error: &anyhow::Error) -> Option<&str> {
    user_error_in(error).and_then(UserError::hint_text)
}

/// Prints `error: …`, its causes and its hint to `out`.
pub fn report(error: &anyhow::Error, out: &mut dyn Write) {
    let mut causes = error.chain();
    if let Some(top) = causes.next() {
        let _ = writeln!(out, "error: {top}");
    }
    for cause in causes {
        let _ = writeln!(out, "  caused by: {cause}");
    }
    if let Some(hint) = hint_of(error) {
        let _ = writeln!(out, "hint: {hint}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_comes_from_the_user_error_under_context() {
        let error = Err::<(), _>(UserError::not_found("no VM named 'web'"))
            .context("cannot start 'web'")
            .unwrap_err();
        assert_eq!(exit_code_of(&error), ExitCode::NotFound);
        assert_eq!(exit_code_of(&anyhow::anyhow!("plain")), ExitCode::Failure);
    }

    #[test]
    fn report_prints_chain_then_hint() {
        let error = Err::<(), _>(UserError::conflict("name taken").hint("pick another"))
            .context("cannot create 'web'")
            .unwrap_err();
        let mut out = Vec::new();
        report(&error, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "error: cannot create 'web'\n  caused by: name taken\nhint: pick another\n"
        );
    }
}
