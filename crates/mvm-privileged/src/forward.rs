//! Port forwards: a host port to a guest port, as `vm.toml` stores them and as the
//! command line writes them (`8080:3000`, `5353:53/udp`). The helper turns a VM's
//! forwards into DNAT rules (`net::plan`); `mvm` parses them from `--port` and `mvm port`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use mvm_base::error::UserError;

/// A transport protocol for a port forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// What a forward without a protocol means.
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A forward from a host port to a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

pub const PORT_HINT: &str = "write HOST:GUEST or HOST:GUEST/udp, with ports 1-65535, e.g. 8080:3000";

pub fn parse_port(text: &str, which: &str, spec: &str, lowest: u32) -> Result<u16, UserError> {
    match text.parse::<u32>() {
        Ok(port) if (lowest..=65535).contains(&port) => Ok(port as u16),
        Ok(port) => Err(UserError::usage(format!(
            "invalid port forward {spec:?}: {which} port {port} is outside 1-65535"
        ))
        .hint(PORT_HINT)),
        Err(_) => Err(UserError::usage(format!(
            "invalid port forward {spec:?}: {which} port {text:?} is not a number"
        ))
        .hint(PORT_HINT)),
    }
}

impl FromStr for PortForward {
    type Err = UserError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        Self::parse(spec, 1)
    }
}

impl PortForward {
    /// Parses `HOST:GUEST[/udp]` where the host port may be 0, meaning "pick a free one".
    pub fn parse_with_auto_host(spec: &str) -> Result<Self, UserError> {
        Self::parse(spec, 0)
    }

    fn parse(spec: &str, lowest_host_port: u32) -> Result<Self, UserError> {
        let (ports, protocol) = parse_protocol(spec)?;
        let Some((host, guest)) = ports.split_once(':') else {
            return Err(UserError::usage(format!("invalid port forward {spec:?}: expected HOST:GUEST"))
                .hint(PORT_HINT));
        };
        Ok(PortForward {
            host: parse_port(host, "host", spec, lowest_host_port)?,
            guest: parse_port(guest, "guest", spec, 1)?,
            protocol,
        })
    }
}

/// Splits `TEXT[/tcp|/udp]` into the text and its protocol (TCP when none is given).
pub fn parse_protocol(spec: &str) -> Result<(&str, Protocol), UserError> {
    match spec.rsplit_once('/') {
        Some((ports, "tcp")) => Ok((ports, Protocol::Tcp)),
        Some((ports, "udp")) => Ok((ports, Protocol::Udp)),
        Some((_, other)) => {
            Err(UserError::usage(format!("invalid port forward {spec:?}: unknown protocol {other:?}"))
                .hint(PORT_HINT))
        }
        None => Ok((spec, Protocol::Tcp)),
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.guest)?;
        if self.protocol == Protocol::Udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

/// Refuses a list in which two forwards claim the same host port and protocol.
pub fn check_unique_host_ports(ports: &[PortForward]) -> Result<(), UserError> {
    for (i, port) in ports.iter().enumerate() {
        if let Some(other) = ports[..i].iter().find(|p| p.host == port.host && p.protocol == port.protocol) {
            return Err(UserError::usage(format!(
                "host port {}/{} is given twice ({other} and {port})",
                port.host, port.protocol
            ))
            .hint("each host port can forward to one guest port; drop one of them"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_forwards() {
        let tcp: PortForward = "8080:3000".parse().unwrap();
        assert_eq!((tcp.host, tcp.guest, tcp.protocol), (8080, 3000, Protocol::Tcp));
        let udp: PortForward = "53:5353/udp".parse().unwrap();
        assert_eq!((udp.host, udp.guest, udp.protocol), (53, 5353, Protocol::Udp));
        assert_eq!("1:65535/tcp".parse::<PortForward>().unwrap().to_string(), "1:65535");
        assert_eq!(udp.to_string(), "53:5353/udp");
    }

    #[test]
    fn rejects_bad_port_forwards() {
        for (spec, why) in [
            ("8080", "expected HOST:GUEST"),
            ("0:80", "host port 0 is outside"),
            ("80:65536", "guest port 65536 is outside"),
            ("80:x", "guest port \"x\" is not a number"),
            ("-1:80", "is not a number"),
            ("80:80/sctp", "unknown protocol"),
            ("", "expected HOST:GUEST"),
            ("80:", "is not a number"),
        ] {
            let error = spec.parse::<PortForward>().unwrap_err();
            assert!(error.to_string().contains(why), "{spec:?}: {error}");
        }
    }

    #[test]
    fn refuses_a_host_port_given_twice_per_protocol() {
        let ports: Vec<PortForward> = ["80:80", "80:81/udp"].iter().map(|s| s.parse().unwrap()).collect();
        check_unique_host_ports(&ports).unwrap();
        let ports: Vec<PortForward> = ["80:80", "80:81"].iter().map(|s| s.parse().unwrap()).collect();
        assert!(check_unique_host_ports(&ports)
            .unwrap_err()
            .to_string()
            .contains("host port 80/tcp is given twice"));
    }
}
