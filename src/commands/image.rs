//! `mvm image build|list|rm`: clean Debian images, built once and shared read-only by
//! the VMs made from them (see `image`).

use clap::{Args, Subcommand};

use crate::config::host::HostConfig;
use crate::image::build::BuildRequest;
use crate::image::{self, ImageName};
use crate::output::{format_bytes, print_json, print_table, table};
use crate::state::Paths;

/// Arguments of `mvm image`.
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub action: ImageAction,
}

/// What `mvm image` does.
#[derive(Debug, Clone, Subcommand)]
pub enum ImageAction {
    /// Build an image from Debian's archive with mmdebstrap (root; once per name)
    Build {
        /// The image's name
        name: String,
        /// The Debian suite
        #[arg(long, default_value = image::DEFAULT_SUITE)]
        suite: String,
        /// Packages to add to Debian's minimal system with apt (repeatable or comma-separated)
        #[arg(long, value_name = "PKG", value_delimiter = ',')]
        include: Vec<String>,
    },
    /// List the images
    #[command(visible_alias = "ls")]
    List {
        /// Print JSON (stable field names)
        #[arg(long)]
        json: bool,
    },
    /// Remove an image no VM is made from (root)
    Rm {
        /// The image's name
        name: String,
    },
}

/// Runs `mvm image`.
pub fn run(args: ImageArgs, paths: &Paths) -> anyhow::Result<i32> {
    match args.action {
        ImageAction::Build { name, suite, include } => {
            let request = BuildRequest { name: name.parse()?, suite, include };
            crate::image::packages::check_layer_name(&request)?;
            let host = HostConfig::load(&paths.config_file)?;
            let tools = image::build::BuildTools::find(&host)?;
            let mut progress = image::build::Progress::new(&format!("image '{}'", request.name));
            let built = image::build::build(paths, &request, &tools, &mut |line| progress.line(line));
            progress.finish();
            let record = built?;
            println!(
                "built image '{}' ({} {}, {}) in {} s",
                record.name,
                record.suite,
                if record.include.is_empty() { "minimal".to_string() } else { record.include.join(",") },
                format_bytes(record.size_bytes),
                record.build_seconds
            );
        }
        ImageAction::List { json } => {
            let images = image::list(paths)?;
            if json {
                print_json(&images)?;
            } else {
                let mut rows = table(["NAME", "SUITE", "PACKAGES", "SIZE", "BUILT"]);
                for record in &images {
                    let built = std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.built_at);
                    rows.add_row([
                        record.name.to_string(),
                        record.suite.clone(),
                        if record.include.is_empty() { "-".to_string() } else { record.include.join(",") },
                        format_bytes(record.size_bytes),
                        humantime::format_rfc3339_seconds(built).to_string(),
                    ]);
                }
                print_table(&rows);
            }
        }
        ImageAction::Rm { name } => {
            let name: ImageName = name.parse()?;
            image::remove(paths, &name)?;
            println!("removed image '{name}'");
        }
    }
    Ok(0)
}
