//! One module per subcommand: an Args struct and a `run`.

pub mod completions;
pub mod create;
pub mod diff;
pub mod direnv;
pub mod doctor;
pub mod image;
pub mod inspect;
pub mod list;
pub mod logs;
pub mod pause;
pub mod port;
pub mod restart;
pub mod rm;
pub mod setup;
pub mod shell;
pub mod start;
pub mod stop;
pub mod supervise;
pub mod templates;
pub mod up;
