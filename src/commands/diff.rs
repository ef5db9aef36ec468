//! `mvm diff`, `mvm apply`, `mvm discard`: review what a VM changed in its project's
//! overlay, bring changes to the project, or drop them.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::changes::{self, Change, Layers};
use crate::config::vm::{MountMode, VmConfig};
use crate::error::UserError;
use crate::name::VmName;
use crate::output::print_json;
use crate::privileged::client::ThisProcess;
use crate::state::store::{self, RunState};
use crate::state::Paths;
use crate::supervisor::launch::project_overlay;
use crate::vm::files::Files;

/// Arguments of `mvm diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The VM
    pub name: String,
    /// Show a unified diff of changed text files
    #[arg(long, conflicts_with = "json")]
    pub patch: bool,
    /// Print JSON: [{"path", "kind"}]
    #[arg(long)]
    pub json: bool,
    /// Only these paths (relative to the project, or absolute inside it)
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Arguments of `mvm apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// The VM
    pub name: String,
    /// Apply even paths whose project copy changed since the VM's copy was made
    #[arg(long)]
    pub force: bool,
    /// Only these paths (default: every change)
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Arguments of `mvm discard`.
#[derive(Debug, Clone, Args)]
pub struct DiscardArgs {
    /// The VM
    pub name: String,
    /// Only these paths (default: every change)
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// The overlay's upper layer and the project of VM `config`, and the VM's files (mounted
/// while they live).
fn layers(paths: &Paths, config: &VmConfig) -> anyhow::Result<(Files, PathBuf, PathBuf)> {
    let project = config.project.as_ref().ok_or_else(|| {
        UserError::usage(format!("VM '{}' has no project", config.name)).hint("create it with --project DIR")
    })?;
    if project.mount != MountMode::Overlay {
        return Err(UserError::usage(format!(
            "VM '{}' shares its project directly (--mount {}): its changes are already in the project",
            config.name, project.mount
        ))
        .into());
    }
    let files = Files::of(paths, &ThisProcess::new(paths), config)?;
    let run_dir = paths.vm_run_dir(&config.name);
    let overlay = project_overlay(config, files.dir(), &run_dir, crate::supervisor::launch::RunAs::Root)
        .expect("an overlay project has an overlay");
    Ok((files, overlay.upper, project.path.clone()))
}

/// Paths given on the command line, relative to the project.
fn filters(config: &VmConfig, given: &[PathBuf]) -> Vec<PathBuf> {
    let project = config.project.as_ref().map(|p| p.path.as_path()).unwrap_or(Path::new("/"));
    given
        .iter()
        .map(|path| path.strip_prefix(project).map(Path::to_path_buf).unwrap_or_else(|_| path.clone()))
        .collect()
}

/// The changes `given` selects; layers are `None` (and there are no changes) when the
/// VM never had an upper layer.
struct Selection {
    layers: Option<Layers>,
    project: PathBuf,
    found: Vec<Change>,
    /// Mounted while the selection lives: the last field, so the layers (open on it) are
    /// dropped before it is unmounted.
    _files: Files,
}

fn selected_changes(paths: &Paths, name: &VmName, given: &[PathBuf]) -> anyhow::Result<Selection> {
    let config = store::load(paths, name)?;
    let (files, upper, project) = layers(paths, &config)?;
    let filters = filters(&config, given);
    let layers = Layers::open(&upper, &project)?;
    let found = match &layers {
        Some(layers) => {
            layers.changes()?.into_iter().filter(|change| changes::selected(&change.path, &filters)).collect()
        }
        None => Vec::new(),
    };
    Ok(Selection { layers, project, found, _files: files })
}

/// Runs `mvm diff`.
pub fn run_diff(args: DiffArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    let selection = selected_changes(paths, &name, &args.paths)?;
    let Selection { layers, found, .. } = &selection;
    if args.json {
        print_json(&found)?;
    } else if args.patch {
        for change in found {
            match layers.as_ref().and_then(|layers| layers.patch(change)) {
                Some(patch) => print!("{}", changes::escape_unprintable(&patch, true)),
                None => println!(
                    "{} {}: a directory, binary, special or larger than {} MiB file",
                    change.kind.mark(),
                    changes::printable(&change.path),
                    changes::PATCH_CAP >> 20
                ),
            }
        }
    } else {
        for change in found {
            println!("{} {}", change.kind.mark(), changes::printable(&change.path));
        }
    }
    Ok(0)
}

/// Runs `mvm apply`.
pub fn run_apply(args: ApplyArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    let selection = selected_changes(paths, &name, &args.paths)?;
    let Selection { layers, project, found, .. } = &selection;
    let conflicts: Vec<String> = found
        .iter()
        .filter(|change| layers.as_ref().is_some_and(|layers| layers.conflicts_with_host(change)))
        .map(|change| changes::printable(&change.path))
        .collect();
    if !conflicts.is_empty() && !args.force {
        return Err(UserError::conflict(format!(
            "the project's copy changed after VM '{name}' made its own: {}",
            conflicts.join(", ")
        ))
        .hint(format!("compare with `mvm diff --patch {name}`, then apply with --force or pick other paths"))
        .into());
    }
    if let Some(layers) = layers {
        for change in found {
            if let Some(note) = layers.apply(change)? {
                eprintln!("note: {note}");
            }
        }
    }
    println!(
        "applied {} change{} to {}",
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        project.display()
    );
    Ok(0)
}

/// Runs `mvm discard`.
pub fn run_discard(args: DiscardArgs, paths: &Paths) -> anyhow::Result<i32> {
    let name: VmName = args.name.parse()?;
    if store::run_state(paths, &name)? == RunState::Running {
        return Err(UserError::conflict(format!("VM '{name}' is running: its overlay is in use"))
            .hint(format!(
                "stop it first (`mvm stop {name}`); a non-persistent VM drops its changes at every stop"
            ))
            .into());
    }
    let selection = selected_changes(paths, &name, &args.paths)?;
    let Selection { layers, found, .. } = &selection;
    if let Some(layers) = layers {
        for change in found {
            layers.discard(change)?;
        }
    }
    println!("discarded {} change{}", found.len(), if found.len() == 1 { "" } else { "s" });
    Ok(0)
}
