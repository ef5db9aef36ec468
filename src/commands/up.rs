//! `mvm up`: make sure the VM of a project runs, creating and starting it as needed, and
//! take a lease for the calling shell. This is what `.envrc` files call (`mvm direnv`).
//!
//! Idempotent and safe when shells race: everything happens under a per-name lock, so
//! the first caller creates and starts the VM and the others find it running. A VM that
//! `up` started stops by itself once no lease holder has been in the project for the idle
//! time (`state::lease`); one started some other way is left alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::commands::create::{self, CreateArgs, HostLimits};
use crate::commands::start::{self, Started};
use crate::config::host::HostConfig;
use crate::error::UserError;
use crate::name::VmName;
use crate::state::lease;
use crate::state::lock::FileLock;
use crate::state::store;
use crate::state::Paths;

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
    /// Stop the VM once no shell has been in the project for this long (if `up` started it)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle: Duration,
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
    let began = Instant::now();
    let outcome =
        up(paths, &name, &project, &args).with_context(|| format!("cannot bring up VM '{name}'"))?;
    let config = store::load(paths, &name)?;
    let address = config.network.address;
    match outcome {
        Up::Running => eprintln!("mvm: VM '{name}' is running ({address})"),
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

/// What `up` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    Running,
    Started,
    Created,
}

/// The VM whose project is `project`, else a new name made from the directory's.
fn vm_for(paths: &Paths, project: &Path) -> anyhow::Result<VmName> {
    let owner = store::list(paths)?
        .into_iter()
        .filter_map(|entry| entry.config.ok())
        .find(|config| config.project.as_ref().is_some_and(|p| p.path == project));
    match owner {
        Some(config) => Ok(config.name),
        None => VmName::for_directory(project).ok_or_else(|| {
            UserError::usage(format!("no VM name can be made from {}", project.display()))
                .hint("give one: `mvm up NAME`")
                .into()
        }),
    }
}

/// Creates VM `name` if missing and starts it if stopped, then leases it to the calling shell.
pub fn up(paths: &Paths, name: &VmName, project: &Path, args: &UpArgs) -> anyhow::Result<Up> {
    crate::state::paths::ensure_root(&paths.run_dir)?;
    let _up = FileLock::exclusive(&paths.up_lock(name))?;
    let mut outcome = Up::Running;
    if !store::exists(paths, name) {
        let host = HostConfig::load(&paths.config_file)?;
        let request = CreateArgs {
            name: name.to_string(),
            template: args.template.clone(),
            via_up: true,
            project: Some(project.to_path_buf()),
            root: "host".into(),
            ..CreateArgs::default()
        };
        create::create(&request, paths, &host, HostLimits::of_this_host())?;
        outcome = Up::Created;
    }
    let run_dir = paths.vm_run_dir(name);
    if start::start(paths, name, true, Duration::from_secs(args.timeout))? != Started::AlreadyRunning {
        lease::enable_auto_stop(&run_dir, args.idle)?;
        if outcome == Up::Running {
            outcome = Up::Started;
        }
    }
    if !args.no_lease {
        if let Some(shell) = lease::calling_shell() {
            lease::take(&run_dir, shell, lease::Scope::Project)?;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_vm_of_a_project_or_names_one_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let project = dir.path().join("Shop_Front");
        std::fs::create_dir(&project).unwrap();
        let project = project.canonicalize().unwrap();
        assert_eq!(vm_for(&paths, &project).unwrap().as_str(), "shop-front");
        let request = CreateArgs {
            name: "web".into(),
            project: Some(project.clone()),
            root: "host".into(),
            ..CreateArgs::default()
        };
        let limits = HostLimits { cpus: 2, memory_mib: None };
        create::create(&request, &paths, &HostConfig::default(), limits).unwrap();
        assert_eq!(vm_for(&paths, &project).unwrap().as_str(), "web");
    }
}
