//! `mvm up`: bring the project's VM up for the calling shell (see `vm::up`); what
//! `.envrc` files call (`mvm direnv`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::error::UserError;
use crate::state::store;
use crate::state::Paths;
use crate::vm::up::{up, vm_for, Up, UpRequest};

/// Arguments of `mvm up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// The VM [default: the VM whose project is the directory, else one named after it]
    pub name: Option<String>,
    /// The project directory [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// The template to create the VM from, if it does not exist yet
    #[arg(long, short = 't', value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Pause the VM once no shell has been in the project for this long (if `up` started it);
    /// the next `up` or `shell` resumes it in milliseconds
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Stop it once no shell has been in the project for this long
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub stop_after: Duration,
    /// Take no lease for the calling shell
    #[arg(long)]
    pub no_lease: bool,
    /// Print `export MVM_VM=… MVM_IP=…` lines for a shell to eval (what `.envrc` uses)
    #[arg(long)]
    pub export: bool,
    /// Seconds to wait for the guest agent
    #[arg(long, value_name = "S", default_value_t = 120)]
    pub timeout: u64,
}

/// Runs `mvm up`.
pub fn run(args: UpArgs, paths: &Paths) -> anyhow::Result<i32> {
    let project = match &args.project {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let project = std::fs::canonicalize(&project).map_err(|error| {
        UserError::not_found(format!("project directory {} cannot be used: {error}", project.display()))
            .hint("run mvm up inside the project, or give its directory with --project DIR")
    })?;
    let name = match &args.name {
        Some(name) => name.parse()?,
        None => vm_for(paths, &project)?,
    };
    let request = UpRequest {
        template: args.template.clone(),
        idle: args.idle,
        stop_after: args.stop_after,
        lease: !args.no_lease,
        timeout: Duration::from_secs(args.timeout),
    };
    let began = Instant::now();
    let outcome =
        up(paths, &name, &project, &request).with_context(|| format!("cannot bring up VM '{name}'"))?;
    let config = store::load(paths, &name)?;
    let address = config.network.address;
    match outcome {
        Up::Running => eprintln!("mvm: VM '{name}' is running ({address})"),
        Up::Resumed => eprintln!(
            "mvm: resumed VM '{name}' in {:.0} ms ({address})",
            began.elapsed().as_secs_f64() * 1000.0
        ),
        Up::Started => {
            eprintln!("mvm: started VM '{name}' in {:.1} s ({address})", began.elapsed().as_secs_f64())
        }
        Up::Created => eprintln!(
            "mvm: created and started VM '{name}' in {:.1} s ({address})",
            began.elapsed().as_secs_f64()
        ),
    }
    if args.export {
        println!("export MVM_VM={name}");
        println!("export MVM_IP={address}");
    }
    Ok(0)
}
