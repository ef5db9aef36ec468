//! `vm.toml`: a VM's declared config, as `create` wrote it plus later `port` changes.
//!
//! The file is the whole truth about a VM at rest; everything at run time (addresses,
//! interface names, argv) is derived from it. It is always written atomically.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::addr::VmNetwork;
use crate::atomic::write_private;
use crate::error::UserError;
use crate::name::VmName;
use crate::spec::{DiskSize, MemorySize, PortForward, PortRange, Volume};

pub use mvm_privileged::record::{check_forward_count, VmRecord, MAX_FORWARDS, VM_CONFIG_FILE};

/// Which virtual machine monitor runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Hypervisor {
    /// cloud-hypervisor where hardware KVM works and it is installed, else QEMU (with TCG
    /// where KVM cannot run guests): chosen at every start.
    #[default]
    Auto,
    CloudHypervisor,
    Qemu,
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hypervisor::Auto => "auto",
            Hypervisor::CloudHypervisor => "cloud-hypervisor",
            Hypervisor::Qemu => "qemu",
        })
    }
}

/// How the project directory is shared with the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MountMode {
    /// Read-only project under a per-VM writable layer (the default).
    #[default]
    Overlay,
    /// The guest writes straight into the project.
    Rw,
    /// The guest can only read the project.
    Ro,
}

impl fmt::Display for MountMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MountMode::Overlay => "overlay",
            MountMode::Rw => "rw",
            MountMode::Ro => "ro",
        })
    }
}

/// What the guest's root file system is made of.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RootModel {
    /// The host's `/usr` (and `/nix/store`) read-only, with the VM's own `/etc` and `/var`.
    #[default]
    Host,
    /// A directory tree as the read-only lower layer, with a per-VM upper layer.
    Dir(PathBuf),
    /// An image built once (`mvm image build`), shared read-only, the VM's system layer
    /// above it; nothing of the host's `/etc` or `/usr`.
    Image(crate::name::ImageName),
}

impl RootModel {
    /// Whether a VM of this root keeps what guest root installs on a system disk of its own
    /// (a `--root DIR` tree has its own upper layer instead).
    pub fn has_system_layer(&self) -> bool {
        !matches!(self, RootModel::Dir(_))
    }
}

impl FromStr for RootModel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "host" => Ok(RootModel::Host),
            image if image.starts_with("image:") => {
                image["image:".len()..].parse().map(RootModel::Image).map_err(|error| error.to_string())
            }
            path if Path::new(path).is_absolute() => Ok(RootModel::Dir(PathBuf::from(path))),
            other => Err(format!("root {other:?} is neither 'host' nor an absolute directory")),
        }
    }
}

impl TryFrom<String> for RootModel {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<RootModel> for String {
    fn from(root: RootModel) -> String {
        root.to_string()
    }
}

impl fmt::Display for RootModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootModel::Host => f.write_str("host"),
            RootModel::Dir(path) => write!(f, "{}", path.display()),
            RootModel::Image(name) => write!(f, "image:{name}"),
        }
    }
}

/// The project directory and how the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Absolute host path; the guest sees the project at the same path.
    pub path: PathBuf,
    pub mount: MountMode,
    /// Keep the overlay's upper layer across stops.
    pub persist: bool,
}

/// A VM's declared config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub name: VmName,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    pub hypervisor: Hypervisor,
    pub cpus: u32,
    pub memory_mib: u64,
    /// The most the guest can take on the host's disk, in MiB (`state::disk`); `None` for
    /// a VM made before limits, which gets the host's default at its next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    pub root: RootModel,
    /// Drop the system layer (what guest root installed) at every start instead of
    /// keeping it like `/var`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral_system: bool,
    /// An explicit kernel; `None` means the host's (DESIGN §4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// No egress at all.
    #[serde(default)]
    pub offline: bool,
    /// The guest may reach services on the host.
    #[serde(default)]
    pub host_access: bool,
    /// Forward the guest's listeners by themselves; unset follows the host's
    /// `[defaults] auto_ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_ports: Option<bool>,
    /// Guest ports never forwarded by themselves (beside the host's `[defaults]` list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auto_ports_ignore: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Project>,
    pub network: VmNetwork,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortForward>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Debian packages the VM runs on: a package layer (an image of the base's suite
    /// with them, built once and cached; `image::packages`) replaces the base.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Processes the guest init starts at boot and keeps running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Process>,
}

/// When a process is started again after it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    /// After a non-zero exit or a signal (the default).
    #[default]
    OnFailure,
    Always,
}

/// A process the guest runs for the VM's whole life (`[[processes]]` in `vm.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Letters, digits, `-` and `_`; names its log, `/var/log/mvm/NAME.log` in the guest.
    pub name: String,
    /// Run with `/bin/sh -c`.
    pub command: String,
    /// Where it runs [default: the project, else `/`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
}

pub(crate) fn check_processes(processes: &[Process]) -> Result<(), UserError> {
    for (i, process) in processes.iter().enumerate() {
        let valid = !process.name.is_empty()
            && process.name.len() <= 64
            && process.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(UserError::usage(format!(
                "process name {:?} must have 1-64 letters, digits, '-' or '_'",
                process.name
            )));
        }
        if processes[..i].iter().any(|other| other.name == process.name) {
            return Err(UserError::usage(format!("process {:?} is declared twice", process.name)));
        }
    }
    Ok(())
}

impl VmConfig {
    /// The VM's memory size.
    pub fn memory(&self) -> MemorySize {
        MemorySize::from_mib(self.memory_mib)
    }

    /// What the privileged part reads of this VM's record (`vm.toml`).
    pub fn record(&self) -> VmRecord {
        VmRecord {
            name: self.name.clone(),
            disk_mib: self.disk_mib,
            offline: self.offline,
            host_access: self.host_access,
            network: self.network.clone(),
            ports: self.ports.clone(),
        }
    }

    /// The VM's disk limit, when it has one.
    pub fn disk(&self) -> Option<DiskSize> {
        self.disk_mib.map(DiskSize::from_mib)
    }

    /// Parses `vm.toml` text.
    pub fn parse(text: &str) -> Result<VmConfig, UserError> {
        let config: VmConfig = mvm_privileged::record::parse_toml(text)?;
        check_processes(&config.processes)?;
        check_forward_count(config.ports.len())?;
        Ok(config)
    }

    /// Reads and parses the `vm.toml` at `path`, checking that it names the VM `expected`.
    /// The file is its owner's, who may be a member root reads for: it is read only as a
    /// regular file (no symlink, FIFO or device), capped, never followed.
    pub fn load(path: &Path, expected: &VmName) -> anyhow::Result<VmConfig> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            anyhow::bail!("{} names no file", path.display());
        };
        let bytes = crate::fs::Tree::open(dir)
            .and_then(|dir| dir.read(Path::new(name), crate::fs::RECORD_CAP))
            .with_context(|| format!("cannot read {}", path.display()))?;
        let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
        let config = Self::parse(&text).with_context(|| format!("{} is corrupt", path.display()))?;
        if &config.name != expected {
            return Err(UserError::usage(format!(
                "{} names VM {:?}, but its directory is {:?}",
                path.display(),
                config.name.as_str(),
                expected.as_str()
            ))
            .into());
        }
        Ok(config)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a VmConfig always serializes")
    }

    /// Writes the config to `path` atomically, readable by root only (`[env]` may hold tokens).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        write_private(path, self.to_toml().as_bytes())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::addr::AddressPool;

    pub(crate) fn sample() -> VmConfig {
        let pool = AddressPool::new("10.200.0.0/16".parse().unwrap(), 24).unwrap();
        VmConfig {
            name: "web".parse().unwrap(),
            created_at: 1_700_000_000,
            hypervisor: Hypervisor::Qemu,
            cpus: 2,
            memory_mib: 1024,
            disk_mib: Some(8192),
            root: RootModel::Host,
            ephemeral_system: true,
            kernel: None,
            offline: false,
            host_access: true,
            auto_ports: Some(false),
            auto_ports_ignore: vec!["5432".parse().unwrap(), "9000-9100".parse().unwrap()],
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
            project: Some(Project { path: "/src/web".into(), mount: MountMode::Overlay, persist: true }),
            network: pool.vm(4).unwrap(),
            ports: vec!["8080:3000".parse().unwrap(), "53:53/udp".parse().unwrap()],
            volumes: vec!["data:/data".parse().unwrap()],
            packages: vec!["curl".into()],
            processes: vec![Process {
                name: "web".into(),
                command: "python3 -m http.server 3000".into(),
                workdir: None,
                env: BTreeMap::new(),
                restart: RestartPolicy::Always,
            }],
        }
    }

    /// The helper reads a `vm.toml` as `VmRecord`: the same fields as the record mvm
    /// hands the privileged part in-process, whatever else the file holds.
    #[test]
    fn the_helper_reads_the_record_mvm_hands_it() {
        let vm = sample();
        assert_eq!(VmRecord::parse(&vm.to_toml()).unwrap(), vm.record());
        let offline = VmConfig { offline: true, host_access: false, disk_mib: None, ports: vec![], ..vm };
        assert_eq!(VmRecord::parse(&offline.to_toml()).unwrap(), offline.record());
    }

    #[test]
    fn round_trips_through_toml() {
        let config = sample();
        let text = config.to_toml();
        assert_eq!(VmConfig::parse(&text).unwrap(), config);
        assert!(text.contains("[[ports]]") && text.contains("protocol = \"udp\""), "{text}");
        assert!(text.contains("address = \"10.200.4.2\""), "{text}");
    }

    #[test]
    fn reports_corruption_and_name_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VM_CONFIG_FILE);
        std::fs::write(&path, "name = \"web\"\ncpus = \"many\"").unwrap();
        let error = format!("{:#}", VmConfig::load(&path, &"web".parse().unwrap()).unwrap_err());
        assert!(error.contains("is corrupt"), "{error}");
        sample().save(&path).unwrap();
        let error = VmConfig::load(&path, &"api".parse().unwrap()).unwrap_err().to_string();
        assert!(error.contains("names VM \"web\""), "{error}");
    }

    #[test]
    fn process_names_are_checked() {
        let mut config = sample();
        config.processes[0].name = "../x".into();
        assert!(VmConfig::parse(&config.to_toml()).unwrap_err().to_string().contains("process name"));
        let mut config = sample();
        config.processes.push(config.processes[0].clone());
        assert!(VmConfig::parse(&config.to_toml()).unwrap_err().to_string().contains("declared twice"));
    }

    #[test]
    fn root_model_forms() {
        assert_eq!("host".parse::<RootModel>().unwrap(), RootModel::Host);
        assert_eq!("/srv/root".parse::<RootModel>().unwrap().to_string(), "/srv/root");
        assert!("relative".parse::<RootModel>().is_err());
        let image = "image:dev".parse::<RootModel>().unwrap();
        assert_eq!(image, RootModel::Image("dev".parse().unwrap()));
        assert_eq!(image.to_string(), "image:dev");
        assert!("image:../x".parse::<RootModel>().is_err());
    }

    /// A member's `vm.toml` that is a FIFO, a symlink to a root-only file, or huge is
    /// refused at once: root's `mvm list` neither hangs, nor echoes the file, nor fills memory.
    #[test]
    fn a_planted_vm_toml_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let name: VmName = "web".parse().unwrap();
        let path = dir.path().join("vm.toml");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let started = std::time::Instant::now();
        assert!(VmConfig::load(&path, &name).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "a FIFO blocked the read");
        std::fs::remove_file(&path).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root-only first line\n").unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let error = format!("{:#}", VmConfig::load(&path, &name).unwrap_err());
        assert!(!error.contains("root-only first line"), "{error}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![b'#'; (crate::fs::RECORD_CAP + 1) as usize]).unwrap();
        assert!(format!("{:#}", VmConfig::load(&path, &name).unwrap_err()).contains("larger than"));
    }

    /// A `vm.toml` written by hand with thousands of forwards is refused (the helper makes
    /// firewall rules from it), and so is one forward past the cap anywhere.
    #[test]
    fn forwards_are_capped() {
        let mut config = sample();
        config.ports =
            (0..=MAX_FORWARDS as u16).map(|i| format!("{}:3000", 20000 + i).parse().unwrap()).collect();
        let error = VmConfig::parse(&config.to_toml()).unwrap_err();
        assert!(error.to_string().contains("at most 256"), "{error}");
        assert!(check_forward_count(MAX_FORWARDS).is_ok());
    }
}
