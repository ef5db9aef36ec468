//! Templates: `vm.toml` fragments for common kinds of project (`mvm create --template T`).
//!
//! The built-in templates are the repository's `templates/*.toml`, compiled in. A host adds
//! its own as `NAME.toml` in the `templates/` directory beside its config file
//! (`/etc/mvm/templates/`); they win over built-ins of the same name. `--template` also
//! takes a path to a file. A template may `include` others: their lists come first, their
//! `[env]` is merged under the template's own, and the template's own `cpus` and `memory`
//! win over theirs (else the largest included value is used).
//!
//! A port written as a bare `GUEST` number is forwarded from a host port chosen at create:
//! the same number when it is free, else any free one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::config::vm::{check_processes, Process};
use crate::error::UserError;
use crate::spec::{self, MemorySize, PortForward, PortRange, Volume};

/// The templates compiled into mvm, by name.
const BUILTIN: &[(&str, &str)] = &[
    ("django", include_str!("../../templates/django.toml")),
    ("django-postgres", include_str!("../../templates/django-postgres.toml")),
    ("node", include_str!("../../templates/node.toml")),
    ("postgres", include_str!("../../templates/postgres.toml")),
];

/// How deep `include` may nest (a cycle is reported when this is exceeded).
const MAX_INCLUDE_DEPTH: usize = 8;

/// A template file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    description: String,
    #[serde(default)]
    include: Vec<String>,
    cpus: Option<u32>,
    memory: Option<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    processes: Vec<Process>,
    /// Forward the guest's listeners by themselves (unset: the host's default).
    auto_ports: Option<bool>,
    /// Guest ports never forwarded by themselves.
    #[serde(default)]
    auto_ports_ignore: Vec<PortRange>,
    /// Debian packages the VM runs on (a cached package layer; see `image::packages`).
    #[serde(default)]
    packages: Vec<String>,
}

/// Where a template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Builtin,
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Builtin => f.write_str("built-in"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A template with its includes resolved and every value checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub source: Source,
    pub description: String,
    /// The file's text, as `mvm templates NAME` prints it.
    pub text: String,
    pub cpus: Option<u32>,
    pub memory: Option<MemorySize>,
    /// Forwards; host port 0 means "chosen at create".
    pub ports: Vec<PortForward>,
    pub volumes: Vec<Volume>,
    pub env: BTreeMap<String, String>,
    pub processes: Vec<Process>,
    pub auto_ports: Option<bool>,
    pub auto_ports_ignore: Vec<PortRange>,
    /// Debian packages, its includes' first, each once.
    pub packages: Vec<String>,
}

/// The templates a host offers: built-ins and the files in `host_dir`.
pub struct Catalog {
    host_dir: PathBuf,
}

impl Catalog {
    /// The catalog of a host whose config file is `config_file`.
    pub fn beside(config_file: &Path) -> Catalog {
        Catalog { host_dir: config_file.parent().unwrap_or(Path::new("/")).join("templates") }
    }

    /// Every template's name and source, host files first in precedence, sorted by name.
    pub fn names(&self) -> anyhow::Result<Vec<(String, Source)>> {
        let mut names: BTreeMap<String, Source> =
            BUILTIN.iter().map(|(name, _)| (name.to_string(), Source::Builtin)).collect();
        match std::fs::read_dir(&self.host_dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry?.path();
                    if let (Some(stem), Some("toml")) =
                        (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|e| e.to_str()))
                    {
                        names.insert(stem.to_string(), Source::File(path.clone()));
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", self.host_dir.display()))
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Every template, resolved.
    pub fn all(&self) -> anyhow::Result<Vec<Template>> {
        self.names()?.into_iter().map(|(name, _)| self.get(&name)).collect()
    }

    /// The template `reference` names: a template name, or a path to a `.toml` file.
    pub fn get(&self, reference: &str) -> anyhow::Result<Template> {
        self.resolve(reference, 0).with_context(|| format!("template {reference:?}"))
    }

    fn read(&self, reference: &str) -> anyhow::Result<(String, Source, String)> {
        if reference.contains('/') || reference.ends_with(".toml") {
            let path = PathBuf::from(reference);
            // Read with the invoking user's rights, so that a parse error can never quote
            // a file they could not read.
            let text = crate::host::user::with_rights_of_invoking_user(|| std::fs::read_to_string(&path))?
                .map_err(|error| {
                    UserError::not_found(format!("cannot read template file {}: {error}", path.display()))
                })?;
            let name = path.file_stem().map_or(reference.to_string(), |s| s.to_string_lossy().into_owned());
            return Ok((name, Source::File(path), text));
        }
        let host_file = self.host_dir.join(format!("{reference}.toml"));
        if let Ok(text) = std::fs::read_to_string(&host_file) {
            return Ok((reference.to_string(), Source::File(host_file), text));
        }
        match BUILTIN.iter().find(|(name, _)| *name == reference) {
            Some((name, text)) => Ok((name.to_string(), Source::Builtin, text.to_string())),
            None => {
                let known: Vec<String> = self.names()?.into_iter().map(|(name, _)| name).collect();
                Err(UserError::not_found(format!("there is no template {reference:?}"))
                    .hint(format!("known templates: {}; `mvm templates` describes them", known.join(", ")))
                    .into())
            }
        }
    }

    fn resolve(&self, reference: &str, depth: usize) -> anyhow::Result<Template> {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(UserError::usage(format!(
                "includes nest deeper than {MAX_INCLUDE_DEPTH} levels (is there a cycle?)"
            ))
            .into());
        }
        let (name, source, text) = self.read(reference)?;
        let file: TemplateFile = toml::from_str(&text).map_err(|error| {
            UserError::usage(format!("{source} is not a valid template: {}", error.to_string().trim_end()))
        })?;
        let mut template = Template {
            name,
            source,
            description: file.description.clone(),
            text,
            cpus: None,
            memory: None,
            ports: Vec::new(),
            volumes: Vec::new(),
            env: BTreeMap::new(),
            processes: Vec::new(),
            auto_ports: None,
            auto_ports_ignore: Vec::new(),
            packages: Vec::new(),
        };
        for included in &file.include {
            let part = self.resolve(included, depth + 1).with_context(|| format!("included {included:?}"))?;
            template.cpus = template.cpus.max(part.cpus);
            template.memory = template.memory.max(part.memory);
            template.ports.extend(part.ports);
            template.volumes.extend(part.volumes);
            template.env.extend(part.env);
            template.processes.extend(part.processes);
            template.auto_ports = template.auto_ports.or(part.auto_ports);
            template.auto_ports_ignore.extend(part.auto_ports_ignore);
            template.packages.extend(part.packages);
        }
        template.cpus = file.cpus.or(template.cpus);
        if let Some(memory) = &file.memory {
            template.memory = Some(memory.parse()?);
        }
        for port in &file.ports {
            template.ports.push(parse_template_port(port)?);
        }
        for volume in &file.volumes {
            template.volumes.push(volume.parse()?);
        }
        template.env.extend(file.env);
        template.processes.extend(file.processes);
        template.auto_ports = file.auto_ports.or(template.auto_ports);
        template.auto_ports_ignore.extend(file.auto_ports_ignore);
        template.packages.extend(file.packages);
        template.packages = crate::spec::normalized_packages(&template.packages)?;
        check_processes(&template.processes)?;
        spec::check_unique_volumes(&template.volumes)?;
        Ok(template)
    }
}

/// `GUEST[/udp]` (host port chosen at create) or `HOST:GUEST[/udp]`.
fn parse_template_port(text: &str) -> Result<PortForward, UserError> {
    if text.contains(':') {
        PortForward::parse_with_auto_host(text)
    } else {
        PortForward::parse_with_auto_host(&format!("0:{text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::beside(&dir.path().join("config.toml"));
        (dir, catalog)
    }

    #[test]
    fn every_builtin_template_resolves() {
        let (_dir, catalog) = catalog();
        let all = catalog.all().unwrap();
        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["django", "django-postgres", "node", "postgres"]);
        for template in &all {
            assert!(!template.processes.is_empty(), "{} runs nothing", template.name);
            assert!(!template.ports.is_empty(), "{} forwards nothing", template.name);
            assert!(template.cpus.is_some() && template.memory.is_some(), "{}", template.name);
        }
    }

    #[test]
    fn includes_join_lists_and_own_values_win() {
        let (_dir, catalog) = catalog();
        let both = catalog.get("django-postgres").unwrap();
        let names: Vec<&str> = both.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web", "postgres"]);
        let guest_ports: Vec<u16> = both.ports.iter().map(|p| p.guest).collect();
        assert_eq!(guest_ports, [8000, 5432]);
        assert!(both.ports.iter().all(|p| p.host == 0));
        assert_eq!(both.memory, Some("2G".parse().unwrap()));
        assert_eq!(both.env["PGHOST"], "127.0.0.1");
        assert_eq!(both.env["PYTHONUNBUFFERED"], "1");
        assert!(both.env["DATABASE_URL"].starts_with("postgres://"));
        assert_eq!(both.volumes, vec!["pgdata:/var/lib/mvm/postgresql".parse::<Volume>().unwrap()]);
    }

    #[test]
    fn host_templates_are_listed_and_win() {
        let (dir, catalog) = catalog();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/node.toml"), "description = \"ours\"\ncpus = 1\n").unwrap();
        std::fs::write(dir.path().join("templates/go.toml"), "description = \"go\"\nports = [\"8080:80\"]\n")
            .unwrap();
        let names = catalog.names().unwrap();
        assert!(names.contains(&("go".to_string(), Source::File(dir.path().join("templates/go.toml")))));
        assert_eq!(catalog.get("node").unwrap().description, "ours");
        assert_eq!(catalog.get("go").unwrap().ports[0].host, 8080);
        let by_path = dir.path().join("templates/go.toml");
        assert_eq!(catalog.get(by_path.to_str().unwrap()).unwrap().name, "go");
    }

    #[test]
    fn templates_switch_automatic_forwarding_and_ignore_ports() {
        let (dir, catalog) = catalog();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        let write =
            |name: &str, text: &str| std::fs::write(dir.path().join(format!("templates/{name}.toml")), text);
        write("quiet", "description = \"q\"\nauto_ports = false\nauto_ports_ignore = [5432]\n").unwrap();
        write(
            "debug",
            "description = \"d\"\ninclude = [\"quiet\"]\nauto_ports_ignore = [9229, \"9000-9100\"]\n",
        )
        .unwrap();
        let debug = catalog.get("debug").unwrap();
        assert_eq!(debug.auto_ports, Some(false));
        let ignored: Vec<String> = debug.auto_ports_ignore.iter().map(ToString::to_string).collect();
        assert_eq!(ignored, ["5432", "9229", "9000-9100"]);
        assert_eq!(catalog.get("node").unwrap().auto_ports, None);
    }

    #[test]
    fn bad_templates_are_explained() {
        let (dir, catalog) = catalog();
        let error = format!("{:#}", catalog.get("rails").unwrap_err());
        assert!(error.contains("there is no template \"rails\""), "{error}");
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        let write =
            |name: &str, text: &str| std::fs::write(dir.path().join(format!("templates/{name}.toml")), text);
        write("typo", "description = \"x\"\ncpu = 2\n").unwrap();
        let error = format!("{:#}", catalog.get("typo").unwrap_err());
        assert!(error.contains("not a valid template") && error.contains("cpu"), "{error}");
        write("loop", "description = \"x\"\ninclude = [\"loop\"]\n").unwrap();
        let error = format!("{:#}", catalog.get("loop").unwrap_err());
        assert!(error.contains("is there a cycle?"), "{error}");
        write("twice", "description = \"x\"\ninclude = [\"node\", \"node\"]\n").unwrap();
        let error = format!("{:#}", catalog.get("twice").unwrap_err());
        assert!(error.contains("declared twice"), "{error}");
    }
}
