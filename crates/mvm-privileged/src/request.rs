//! The closed set of requests the helper serves, and how an argv spells one.

use std::fmt;

use mvm_base::error::UserError;
use mvm_base::name::VmName;

/// Where `sudo mvm setup` installs the helper.
pub const HELPER_PATH: &str = "/usr/local/libexec/mvm/mvm-helper";

/// Everything the helper does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Bring the VM's bridge, tap (owned by the caller) and firewall rules up.
    NetworkUp(VmName),
    /// Converge the VM's firewall rules to its record (after `mvm port`).
    NetworkRules(VmName),
    /// Remove the VM's tap, bridge and rules.
    NetworkDown(VmName),
    /// Bind the VM's DNS sockets (port 53 on its gateway, which only root may bind) and
    /// pass them back over the Unix socket that is the helper's stdin.
    DnsSockets(VmName),
    /// Make the VM's files disk if missing and mount it on its `files/`.
    DiskUp(VmName),
    /// Unmount the VM's files disk (at a stop).
    DiskDown(VmName),
    /// Unmount the VM's files disk and delete it (`mvm rm`).
    DiskRemove(VmName),
}

impl Request {
    /// The request an argv (without the program) spells.
    pub fn parse(args: &[String]) -> Result<Request, UserError> {
        let usage = || {
            UserError::usage(
                "usage: mvm-helper network-up|network-rules|network-down|dns-sockets|disk-up|disk-down|disk-rm NAME",
            )
        };
        let [verb, name] = args else { return Err(usage()) };
        let name: VmName = name.parse()?;
        match verb.as_str() {
            "network-up" => Ok(Request::NetworkUp(name)),
            "network-rules" => Ok(Request::NetworkRules(name)),
            "network-down" => Ok(Request::NetworkDown(name)),
            "dns-sockets" => Ok(Request::DnsSockets(name)),
            "disk-up" => Ok(Request::DiskUp(name)),
            "disk-down" => Ok(Request::DiskDown(name)),
            "disk-rm" => Ok(Request::DiskRemove(name)),
            _ => Err(usage()),
        }
    }

    /// The argv (without the program) that spells this request.
    pub fn to_args(&self) -> [String; 2] {
        let (verb, name) = match self {
            Request::NetworkUp(name) => ("network-up", name),
            Request::NetworkRules(name) => ("network-rules", name),
            Request::NetworkDown(name) => ("network-down", name),
            Request::DnsSockets(name) => ("dns-sockets", name),
            Request::DiskUp(name) => ("disk-up", name),
            Request::DiskDown(name) => ("disk-down", name),
            Request::DiskRemove(name) => ("disk-rm", name),
        };
        [verb.to_string(), name.to_string()]
    }

    /// The VM the request is about.
    pub fn vm(&self) -> &VmName {
        match self {
            Request::NetworkUp(name)
            | Request::NetworkRules(name)
            | Request::NetworkDown(name)
            | Request::DnsSockets(name)
            | Request::DiskUp(name)
            | Request::DiskDown(name)
            | Request::DiskRemove(name) => name,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_args().join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_nothing_else_parses() {
        let web: VmName = "web".parse().unwrap();
        for request in [
            Request::NetworkUp(web.clone()),
            Request::NetworkRules(web.clone()),
            Request::NetworkDown(web.clone()),
            Request::DnsSockets(web.clone()),
            Request::DiskUp(web.clone()),
            Request::DiskDown(web.clone()),
            Request::DiskRemove(web.clone()),
        ] {
            assert_eq!(Request::parse(&request.to_args()).unwrap(), request);
        }
        let parse = |args: &[&str]| Request::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        for bad in [
            &["network-up"][..],
            &["network-up", "web", "extra"],
            &["mount", "web"],
            &["network-up", "../etc"],
            &["network-up", "-web"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
