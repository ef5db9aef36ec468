//! What a `SIGUSR2` to the supervisor asks for: `mvm pause`, `resume` (and `up`, `shell`)
//! write the request into the runtime dir, then signal; the supervisor takes the file
//! away once it has acted.

use std::path::Path;

/// The runtime file that says what a `SIGUSR2` asks for: `pause` or `resume`.
pub const REQUEST_FILE: &str = "request";

/// The lock a pause or resume request is made under, in the runtime dir.
pub const REQUEST_LOCK: &str = "request.lock";

/// What a `SIGUSR2` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
}

impl Request {
    /// The word written to [`REQUEST_FILE`].
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Pause => "pause",
            Request::Resume => "resume",
        }
    }

    /// The request waiting in `run_dir`, if any.
    pub fn read(run_dir: &Path) -> Option<Request> {
        match std::fs::read_to_string(run_dir.join(REQUEST_FILE)).ok()?.trim() {
            "pause" => Some(Request::Pause),
            "resume" => Some(Request::Resume),
            _ => None,
        }
    }
}
