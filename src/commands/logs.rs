//! `mvm logs`: a VM's serial console (or another of its logs), optionally followed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::error::UserError;
use crate::name::VmName;
use crate::state::store::{self, RunState};
use crate::state::Paths;

/// Which log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogSource {
    Console,
    Supervisor,
    Hypervisor,
}

/// Arguments of `mvm logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The VM
    pub name: String,
    /// Keep printing what is appended, until the VM stops
    #[arg(short, long)]
    pub follow: bool,
    /// Which log to show
    #[arg(long, value_enum, default_value = "console")]
    pub source: LogSource,
    /// Show this declared process's output instead
    #[arg(long, value_name = "NAME", conflicts_with = "source")]
    pub process: Option<String>,
}

/// Runs `mvm logs`.
pub fn run(args: LogsArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    let config = store::load(paths, &name)?;
    let (path, file_name) = match &args.process {
        Some(process) => {
            if !config.processes.iter().any(|p| &p.name == process) {
                return Err(UserError::not_found(format!("VM '{name}' declares no process {process:?}"))
                    .hint(format!("`mvm inspect {name}` lists its processes"))
                    .into());
            }
            let file_name = format!("{process}.log");
            (crate::view::process_dir(paths, &name).join(&file_name), file_name)
        }
        None => {
            let file_name = match args.source {
                LogSource::Console => "console.log",
                LogSource::Supervisor => "supervisor.log",
                LogSource::Hypervisor => "hypervisor.log",
            };
            (paths.vm_dir(&name).join("log").join(file_name), file_name.to_string())
        }
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(_) if !args.follow => {
            return Err(UserError::not_found(format!("VM '{name}' has no {file_name} yet"))
                .hint(format!("start it with `mvm start {name}`"))
                .into())
        }
        Err(_) => loop {
            if let Ok(file) = std::fs::File::open(&path) {
                break file;
            }
            std::thread::sleep(Duration::from_millis(100));
        },
    };
    let mut out = std::io::stdout().lock();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n > 0 {
            out.write_all(&buffer[..n])?;
            continue;
        }
        out.flush()?;
        if !args.follow {
            return Ok(0);
        }
        if store::run_state(paths, &name)? != RunState::Running {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
        // A new boot truncates the console; start over from its beginning.
        if file.stream_position()? > std::fs::metadata(&path).map_or(0, |m| m.len()) {
            file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(0))?;
        }
    }
}
