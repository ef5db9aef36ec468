//! VM and image names: what is allowed and why.
//!
//! A name becomes a directory under the state and runtime roots, the guest's hostname,
//! part of every iptables comment (`mvm:NAME`) and part of unix socket paths, which the
//! kernel limits to 107 bytes. Interface names derive from the VM's index, not its name,
//! so they always fit the kernel's 15-character limit. The rules: 1 to 32 characters,
//! lowercase ASCII letters, digits and `-`, starting with a letter, not ending with `-`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::UserError;

/// The longest name accepted (a hostname label allows 63; sockets want shorter).
pub const MAX_NAME_LEN: usize = 32;

/// A validated VM name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A valid name made from a directory's name (`~/src/My_App` → `my-app`), for VMs that
    /// `mvm up` creates for the current directory.
    pub fn for_directory(dir: &std::path::Path) -> Option<VmName> {
        let base = dir.file_name()?.to_string_lossy().to_ascii_lowercase();
        let mut name = String::new();
        for c in base.chars() {
            match c {
                'a'..='z' | '0'..='9' => name.push(c),
                _ if !name.is_empty() && !name.ends_with('-') => name.push('-'),
                _ => {}
            }
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            name.insert_str(0, "vm-");
        }
        name.truncate(MAX_NAME_LEN);
        name.trim_end_matches('-').parse().ok()
    }
}

const NAME_HINT: &str =
    "use 1-32 lowercase letters, digits and '-', starting with a letter, e.g. 'web' or 'api-2'";

impl FromStr for VmName {
    type Err = UserError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let problem = if name.is_empty() {
            Some("is empty".to_string())
        } else if name.len() > MAX_NAME_LEN {
            Some(format!("is {} characters long; the limit is {MAX_NAME_LEN}", name.len()))
        } else if let Some(bad) =
            name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            Some(format!("contains {bad:?}"))
        } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some("does not start with a letter".to_string())
        } else if name.ends_with('-') {
            Some("ends with '-'".to_string())
        } else {
            None
        };
        match problem {
            Some(problem) => {
                Err(UserError::usage(format!("invalid VM name {name:?}: it {problem}")).hint(NAME_HINT))
            }
            None => Ok(VmName(name.to_string())),
        }
    }
}

impl TryFrom<String> for VmName {
    type Error = UserError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl From<VmName> for String {
    fn from(name: VmName) -> String {
        name.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VmName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A validated image name: the rules of VM names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

impl ImageName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ImageName {
    type Err = UserError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.parse::<VmName>() {
            Ok(_) => Ok(ImageName(text.to_string())),
            Err(error) => Err(UserError::usage(format!(
                "invalid image name {text:?}: {}",
                error.to_string().split_once(": ").map_or(error.to_string(), |(_, why)| why.to_string())
            ))
            .hint("use 1-32 lowercase letters, digits and '-', starting with a letter, e.g. 'bookworm-dev'")),
        }
    }
}

impl TryFrom<String> for ImageName {
    type Error = UserError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<ImageName> for String {
    fn from(name: ImageName) -> String {
        name.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_directories() {
        let name = |dir: &str| VmName::for_directory(std::path::Path::new(dir)).map(|n| n.to_string());
        assert_eq!(name("/home/ann/src/web").as_deref(), Some("web"));
        assert_eq!(name("/src/My_App.v2").as_deref(), Some("my-app-v2"));
        assert_eq!(name("/src/2048").as_deref(), Some("vm-2048"));
        assert_eq!(name("/src/__x__").as_deref(), Some("x"));
        assert_eq!(name(&format!("/src/{}", "a".repeat(40))).unwrap().len(), MAX_NAME_LEN);
        assert_eq!(name("/"), None);
    }

    #[test]
    fn accepts_ordinary_names() {
        for name in ["web", "api-2", "a", "x1", &"a".repeat(MAX_NAME_LEN)] {
            assert_eq!(name.parse::<VmName>().unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_bad_names_saying_why() {
        let cases = [
            ("", "is empty"),
            (&"a".repeat(MAX_NAME_LEN + 1) as &str, "the limit is 32"),
            ("a/b", "contains '/'"),
            ("a b", "contains ' '"),
            ("a.b", "contains '.'"),
            ("Web", "contains 'W'"),
            ("1web", "does not start with a letter"),
            ("-web", "does not start with a letter"),
            ("web-", "ends with '-'"),
            ("wéb", "contains 'é'"),
        ];
        for (name, why) in cases {
            let error = name.parse::<VmName>().unwrap_err();
            assert!(error.to_string().contains(why), "{name:?}: {error}");
            assert!(error.hint_text().is_some());
        }
    }
}
