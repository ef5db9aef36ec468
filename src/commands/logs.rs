//! `mvm logs`: a VM's serial console (or another of its logs), optionally followed.

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::error::UserError;
use crate::fs::Tree;
use crate::log_cap::LOG_CAP;
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
    // Process logs are in the guest's `var/`; the others in the VM's own `log/`, which
    // the hypervisor writes. Both are read beneath their directory, regular files only.
    let mut files = None;
    let (dir, relative) = match &args.process {
        Some(process) => {
            if !config.processes.iter().any(|p| &p.name == process) {
                return Err(UserError::not_found(format!("VM '{name}' declares no process {process:?}"))
                    .hint(format!("`mvm inspect {name}` lists its processes"))
                    .into());
            }
            let files = files.insert(crate::vm::files::Files::of(
                paths,
                &crate::privileged::client::ThisProcess::new(paths),
                &config,
            )?);
            (files.dir().join("var"), crate::view::process_file(process, "log"))
        }
        None => {
            let file_name = match args.source {
                LogSource::Console => "console.log",
                LogSource::Supervisor => "supervisor.log",
                LogSource::Hypervisor => "hypervisor.log",
            };
            (paths.vm_dir(&name).join("log"), PathBuf::from(file_name))
        }
    };
    let shown = relative.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let running = || store::run_state(paths, &name).is_ok_and(|state| state == RunState::Running);
    let open = || Tree::open(&dir).and_then(|tree| tree.open_file(&relative));
    let mut file = loop {
        match open() {
            Ok(file) => break file,
            Err(error) if error.kind() != ErrorKind::NotFound => {
                return Err(anyhow::Error::from(error).context(format!("cannot read VM '{name}''s {shown}")))
            }
            Err(_) if !args.follow || !running() => {
                return Err(UserError::not_found(format!("VM '{name}' has no {shown} yet"))
                    .hint(format!("start it with `mvm start {name}`"))
                    .into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(crate::fs::data_start(&file, len.saturating_sub(LOG_CAP))?))?;
    let mut out = std::io::stdout().lock();
    if !args.follow {
        // At most the cap, however fast the guest appends meanwhile.
        std::io::copy(&mut file.take(LOG_CAP), &mut out)?;
        return Ok(0);
    }
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n > 0 {
            out.write_all(&buffer[..n])?;
            continue;
        }
        out.flush()?;
        if !running() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
        // A new boot (or a rotation) truncates the log; start over from its beginning.
        let now = open().and_then(|file| file.metadata()).map_or(0, |meta| meta.len());
        if file.stream_position()? > now {
            file = open()?;
            file.seek(SeekFrom::Start(crate::fs::data_start(&file, 0)?))?;
        }
    }
}
