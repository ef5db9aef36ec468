//! `mvm templates`: the templates `mvm create --template` takes, or one template's file.

use clap::Args;
use serde::Serialize;

use crate::config::template::{Catalog, Template};
use crate::output::{self, print_json, print_table};
use crate::state::Paths;

/// Arguments of `mvm templates`.
#[derive(Debug, Clone, Args)]
pub struct TemplatesArgs {
    /// Print this template's file instead of the list
    #[arg(value_name = "TEMPLATE")]
    pub name: Option<String>,
    /// Print a JSON array instead of a table
    #[arg(long, conflicts_with = "name")]
    pub json: bool,
}

/// A template as `--json` shows it.
#[derive(Debug, Serialize)]
struct TemplateSummary {
    name: String,
    source: String,
    description: String,
    cpus: Option<u32>,
    memory: Option<String>,
    ports: Vec<String>,
    volumes: Vec<String>,
    processes: Vec<String>,
    /// The Debian packages its VMs run on (their package layer).
    packages: Vec<String>,
}

impl From<&Template> for TemplateSummary {
    fn from(template: &Template) -> Self {
        TemplateSummary {
            name: template.name.clone(),
            source: template.source.to_string(),
            description: template.description.clone(),
            cpus: template.cpus,
            memory: template.memory.map(|memory| memory.to_string()),
            ports: template.ports.iter().map(guest_port).collect(),
            volumes: template
                .volumes
                .iter()
                .map(|volume| format!("{}:{}", volume.name, volume.guest_path.display()))
                .collect(),
            processes: template.processes.iter().map(|process| process.name.clone()).collect(),
            packages: template.packages.clone(),
        }
    }
}

/// A template's forward as written: `GUEST` when the host port is chosen at create.
fn guest_port(port: &crate::spec::PortForward) -> String {
    match port.host {
        0 => port.to_string().trim_start_matches("0:").to_string(),
        _ => port.to_string(),
    }
}

/// Runs `mvm templates`.
pub fn run(args: TemplatesArgs, paths: &Paths) -> anyhow::Result<i32> {
    let catalog = Catalog::beside(&paths.config_file);
    if let Some(name) = &args.name {
        print!("{}", catalog.get(name)?.text);
        return Ok(0);
    }
    let summaries: Vec<TemplateSummary> = catalog.all()?.iter().map(TemplateSummary::from).collect();
    if args.json {
        print_json(&summaries)?;
        return Ok(0);
    }
    let mut table =
        output::table(["NAME", "CPUS", "MEMORY", "PORTS", "PROCESSES", "PACKAGES", "DESCRIPTION"]);
    for template in &summaries {
        table.add_row([
            template.name.clone(),
            template.cpus.map_or("-".into(), |cpus| cpus.to_string()),
            template.memory.clone().unwrap_or_else(|| "-".into()),
            template.ports.join(","),
            template.processes.join(","),
            if template.packages.is_empty() { "-".into() } else { template.packages.join(",") },
            template.description.clone(),
        ]);
    }
    print_table(&table);
    eprintln!("use one with `mvm create NAME --template TEMPLATE`; `mvm templates TEMPLATE` shows its file");
    Ok(0)
}
