//! The small value syntaxes of the command line: ports (`8080:3000/udp`), memory sizes
//! (`512M`, `2G`), volumes (`data:/var/lib/data`) and environment variables (`K=V`).
//!
//! Each parses with [`FromStr`] into the same type `vm.toml` stores, so the command line
//! and the file cannot disagree about what a value means.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::UserError;
pub use mvm_privileged::forward::{check_unique_host_ports, PortForward, Protocol};
use mvm_privileged::forward::{parse_port, parse_protocol};

/// A host port to stop forwarding: `HOST` (every protocol) or `HOST/tcp|udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPortSelector {
    pub port: u16,
    pub protocol: Option<Protocol>,
}

impl HostPortSelector {
    /// Whether `forward` is selected.
    pub fn matches(&self, forward: &PortForward) -> bool {
        forward.host == self.port && self.protocol.is_none_or(|protocol| protocol == forward.protocol)
    }
}

impl FromStr for HostPortSelector {
    type Err = UserError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let protocol = spec.contains('/').then(|| parse_protocol(spec)).transpose()?;
        let port_text = protocol.map_or(spec, |(text, _)| text);
        Ok(HostPortSelector {
            port: parse_port(port_text, "host", spec, 1)?,
            protocol: protocol.map(|(_, protocol)| protocol),
        })
    }
}

/// Guest ports kept from automatic forwarding: `5432` or `9000-9100` (both protocols).
/// In TOML a single port may also be written as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

const PORT_RANGE_HINT: &str = "write a port or a range, e.g. 5432 or 9000-9100";

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = UserError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid =
            |why: &str| UserError::usage(format!("invalid port range {spec:?}: {why}")).hint(PORT_RANGE_HINT);
        let (first, last) = spec.split_once('-').unwrap_or((spec, spec));
        let port = |text: &str| match text.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(invalid("ports are numbers from 1 to 65535")),
            Ok(port) => Ok(port),
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(invalid("the first port is above the last"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first == self.last {
            true => write!(f, "{}", self.first),
            false => write!(f, "{}-{}", self.first, self.last),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.first == self.last {
            true => serializer.serialize_u16(self.first),
            false => serializer.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(i64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(port) => port.to_string().parse(),
            Written::Text(text) => text.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// A memory size, kept in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemorySize {
    mib: u64,
}

/// The smallest memory a VM may have.
pub const MIN_MEMORY_MIB: u64 = 128;

const MEMORY_HINT: &str = "write a size such as 512M, 2G or 1536 (MiB), at least 128M";

impl MemorySize {
    /// A size of `mib` MiB.
    pub fn from_mib(mib: u64) -> Self {
        MemorySize { mib }
    }

    /// The size in MiB.
    pub fn mib(self) -> u64 {
        self.mib
    }
}

impl FromStr for MemorySize {
    type Err = UserError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        parse_mib(spec, "memory size", MIN_MEMORY_MIB, MEMORY_HINT).map(MemorySize::from_mib)
    }
}

/// `spec` (`512M`, `2G`, `1T`, or MiB without a unit) in MiB, at least `min_mib`; `what`
/// and `hint` name the value in errors.
fn parse_mib(spec: &str, what: &str, min_mib: u64, hint: &'static str) -> Result<u64, UserError> {
    let invalid = || UserError::usage(format!("invalid {what} {spec:?}")).hint(hint);
    let text = spec.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let factor_mib: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return Err(invalid()),
    };
    let mib = number.checked_mul(factor_mib).ok_or_else(invalid)?;
    if mib < min_mib {
        return Err(
            UserError::usage(format!("{what} {spec:?} is below the minimum of {min_mib} MiB")).hint(hint)
        );
    }
    Ok(mib)
}

/// Writes `mib` as `2G` when whole GiB, else `1536M`.
fn write_mib(f: &mut fmt::Formatter<'_>, mib: u64) -> fmt::Result {
    if mib % 1024 == 0 {
        write!(f, "{}G", mib / 1024)
    } else {
        write!(f, "{mib}M")
    }
}

/// A VM's disk limit (`--disk`), kept in MiB: the most its guest can take on the host's
/// disk (`state::disk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiskSize {
    mib: u64,
}

use mvm_privileged::disk::layout::DISK_HINT;

impl DiskSize {
    /// A limit of `mib` MiB.
    pub fn from_mib(mib: u64) -> Self {
        DiskSize { mib }
    }

    /// A limit of `mib` MiB, refused outside the bounds of
    /// [`check_limit`](mvm_privileged::disk::layout::check_limit); `spec`
    /// says how it was written.
    pub fn checked(mib: u64, spec: &str) -> Result<Self, UserError> {
        mvm_privileged::disk::layout::check_limit(mib, spec)?;
        Ok(DiskSize { mib })
    }

    /// The limit in MiB.
    pub fn mib(self) -> u64 {
        self.mib
    }
}

impl FromStr for DiskSize {
    type Err = UserError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        DiskSize::checked(parse_mib(spec, "disk size", 0, DISK_HINT)?, spec)
    }
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_mib(f, self.mib)
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_mib(f, self.mib)
    }
}

/// A named persistent volume and where the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub guest_path: PathBuf,
}

const VOLUME_HINT: &str =
    "write NAME:GUEST_PATH, e.g. pgdata:/var/lib/postgresql; NAME uses letters, digits, '-' and '_'";

impl FromStr for Volume {
    type Err = UserError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid =
            |why: &str| UserError::usage(format!("invalid volume {spec:?}: {why}")).hint(VOLUME_HINT);
        let (name, guest_path) = spec.split_once(':').ok_or_else(|| invalid("expected NAME:GUEST_PATH"))?;
        if name.is_empty() || name.len() > 64 {
            return Err(invalid("the name must have 1 to 64 characters"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || name.starts_with('-') {
            return Err(invalid("the name may use only letters, digits, '-' and '_'"));
        }
        let guest_path = normalize_guest_path(guest_path).map_err(|why| invalid(&why))?;
        Ok(Volume { name: name.to_string(), guest_path })
    }
}

/// Checks that `path` is an absolute guest path below `/` with no `.`/`..` parts.
pub fn normalize_guest_path(path: &str) -> Result<PathBuf, String> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(format!("the guest path {path:?} is not absolute"));
    }
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("the guest path {path:?} contains '.' or '..'"))
            }
        }
    }
    if clean == Path::new("/") {
        return Err("the guest path cannot be '/' itself".to_string());
    }
    Ok(clean)
}

/// Refuses two volumes with the same name or the same guest path.
pub fn check_unique_volumes(volumes: &[Volume]) -> Result<(), UserError> {
    for (i, volume) in volumes.iter().enumerate() {
        for other in &volumes[..i] {
            if other.name == volume.name || other.guest_path == volume.guest_path {
                return Err(UserError::usage(format!(
                    "volumes {}:{} and {}:{} clash: names and guest paths must be unique",
                    other.name,
                    other.guest_path.display(),
                    volume.name,
                    volume.guest_path.display()
                )));
            }
        }
    }
    Ok(())
}

/// An environment variable given as `K=V`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

impl FromStr for EnvVar {
    type Err = UserError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| {
            UserError::usage(format!("invalid environment variable {spec:?}: {why}"))
                .hint("write KEY=VALUE, with KEY made of letters, digits and '_', not starting with a digit")
        };
        let (key, value) = spec.split_once('=').ok_or_else(|| invalid("expected KEY=VALUE"))?;
        let valid_key = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(invalid("the key is not a valid variable name"));
        }
        Ok(EnvVar { key: key.to_string(), value: value.to_string() })
    }
}

/// Checks a suite or package name (Debian's rules: a lowercase letter or digit, then
/// those, `+`, `-` and `.`) before it reaches mmdebstrap's command line: no option, no
/// version pin (`=`), no architecture (`:`) and no apt pattern (`~`) can pass.
pub fn check_debian_word(what: &str, word: &str) -> Result<(), UserError> {
    let lower_or_digit = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = word.len() <= 128
        && word.starts_with(lower_or_digit)
        && word.chars().all(|c| lower_or_digit(c) || "+-.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(UserError::usage(format!("{what} {word:?} is not a Debian {what} name")).hint(format!(
            "give a {what} as Debian spells it, e.g. {}",
            if what == "suite" { "bookworm" } else { "curl" }
        )))
    }
}

/// Checked package names, sorted, each once.
pub fn normalized_packages(packages: &[String]) -> Result<Vec<String>, UserError> {
    for package in packages {
        check_debian_word("package", package)?;
    }
    let mut packages = packages.to_vec();
    packages.sort();
    packages.dedup();
    Ok(packages)
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_ranges_parse_print_and_round_trip() {
        let one: PortRange = "5432".parse().unwrap();
        let many: PortRange = "9000-9100".parse().unwrap();
        assert!(one.contains(5432) && !one.contains(5433));
        assert!(many.contains(9000) && many.contains(9100) && !many.contains(9101));
        assert_eq!((one.to_string(), many.to_string()), ("5432".into(), "9000-9100".into()));
        for bad in ["0", "70000", "x", "9100-9000", "1-", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct List {
            ignore: Vec<PortRange>,
        }
        let list: List = toml::from_str("ignore = [5432, \"9000-9100\"]").unwrap();
        assert_eq!(list.ignore, [one, many]);
        assert_eq!(toml::from_str::<List>(&toml::to_string(&list).unwrap()).unwrap(), list);
        assert!(toml::from_str::<List>("ignore = [-1]").is_err());
    }

    use super::*;

    #[test]
    fn auto_host_ports_and_selectors() {
        assert_eq!(PortForward::parse_with_auto_host("0:80").unwrap().host, 0);
        assert!("0:80".parse::<PortForward>().is_err());
        assert!(PortForward::parse_with_auto_host("80:0").is_err());
        let any: HostPortSelector = "8080".parse().unwrap();
        let udp: HostPortSelector = "8080/udp".parse().unwrap();
        let forward: PortForward = "8080:80".parse().unwrap();
        assert!(any.matches(&forward) && !udp.matches(&forward));
        assert!("x/udp".parse::<HostPortSelector>().is_err());
        assert!("8080/sctp".parse::<HostPortSelector>().is_err());
    }

    #[test]
    fn parses_memory_sizes() {
        for (spec, mib) in [("128", 128), ("512M", 512), ("2G", 2048), ("1GiB", 1024), ("1536mb", 1536)] {
            assert_eq!(spec.parse::<MemorySize>().unwrap().mib(), mib, "{spec}");
        }
        assert_eq!(MemorySize::from_mib(2048).to_string(), "2G");
        assert_eq!(MemorySize::from_mib(1536).to_string(), "1536M");
    }

    #[test]
    fn rejects_bad_memory_sizes() {
        for spec in ["", "G", "1.5G", "12X", "-1G", "99999999999999999999T", "1 G B"] {
            assert!(spec.parse::<MemorySize>().is_err(), "{spec:?}");
        }
        let error = "127M".parse::<MemorySize>().unwrap_err();
        assert!(error.to_string().contains("below the minimum"), "{error}");
    }

    #[test]
    fn disk_sizes_are_bounded_both_ways() {
        assert_eq!("20G".parse::<DiskSize>().unwrap().mib(), 20 * 1024);
        assert_eq!("2048".parse::<DiskSize>().unwrap().to_string(), "2G");
        for (spec, why) in [("1G", "below the minimum"), ("17T", "above the maximum"), ("lots", "invalid")] {
            let error = spec.parse::<DiskSize>().unwrap_err();
            assert!(error.to_string().contains(why), "{spec}: {error}");
        }
    }

    #[test]
    fn parses_and_checks_volumes() {
        let volume: Volume = "pgdata:/var/lib/postgresql/".parse().unwrap();
        assert_eq!(volume.name, "pgdata");
        assert_eq!(volume.guest_path, Path::new("/var/lib/postgresql"));
        for spec in ["a/b:/x", "..:/x", ":/x", "data", "data:relative", "data:/", "data:/a/../b"] {
            assert!(spec.parse::<Volume>().is_err(), "{spec:?}");
        }
        let clash: Vec<Volume> = ["a:/x", "b:/x"].iter().map(|s| s.parse().unwrap()).collect();
        assert!(check_unique_volumes(&clash).is_err());
    }

    #[test]
    fn parses_env_vars() {
        let var: EnvVar = "RUST_LOG=debug=1".parse().unwrap();
        assert_eq!((var.key.as_str(), var.value.as_str()), ("RUST_LOG", "debug=1"));
        for spec in ["NOVALUE", "=x", "1A=x", "A-B=x"] {
            assert!(spec.parse::<EnvVar>().is_err(), "{spec:?}");
        }
    }
}
