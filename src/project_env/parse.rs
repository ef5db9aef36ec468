//! What devenv and nix print: `print-dev-env --json` and `devenv info`.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Deserialize;

use crate::config::vm::{Process, RestartPolicy};
use crate::contract::GUEST_PATH;

/// Variables of a build environment that describe the build, not the project, or that
/// the guest sets itself.
const NOT_CARRIED: [&str; 14] = [
    "HOME",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "TERM",
    "TMP",
    "TMPDIR",
    "TEMP",
    "TEMPDIR",
    "NIX_BUILD_TOP",
    "NIX_BUILD_CORES",
    "NIX_LOG_FD",
    "SHELL",
    "USER",
];

/// The variables a shell should have from `nix print-dev-env --json` output: the exported
/// ones with string values, without the build's own, `PATH` followed by the guest's.
pub fn parse_print_dev_env(json: &str) -> anyhow::Result<BTreeMap<String, String>> {
    #[derive(Deserialize)]
    struct DevEnv {
        variables: BTreeMap<String, Variable>,
    }
    #[derive(Deserialize)]
    struct Variable {
        #[serde(rename = "type")]
        kind: String,
        value: serde_json::Value,
    }
    let env: DevEnv = serde_json::from_str(json).context("the environment is not print-dev-env's JSON")?;
    let mut variables: BTreeMap<String, String> = env
        .variables
        .into_iter()
        .filter(|(name, variable)| variable.kind == "exported" && !NOT_CARRIED.contains(&name.as_str()))
        .filter_map(|(name, variable)| Some((name, variable.value.as_str()?.to_string())))
        .collect();
    let path = match variables.get("PATH").filter(|path| !path.is_empty()) {
        Some(path) => format!("{path}:{GUEST_PATH}"),
        None => GUEST_PATH.to_string(),
    };
    variables.insert("PATH".into(), path);
    Ok(variables)
}

/// devenv's processes from the `# processes` section of `devenv info`, whose lines read
/// `- NAME: COMMAND` (`COMMAND` is `exec /nix/store/…-NAME` in current devenv).
pub fn parse_devenv_info_processes(info: &str) -> Vec<Process> {
    let mut in_section = false;
    let mut processes = Vec::new();
    for line in info.lines() {
        if let Some(heading) = line.strip_prefix("# ") {
            in_section = heading.trim() == "processes";
            continue;
        }
        let Some(entry) = line.strip_prefix("- ").filter(|_| in_section) else { continue };
        let Some((name, command)) = entry.split_once(": ") else { continue };
        let process = Process {
            name: name.trim().to_string(),
            command: command.trim().to_string(),
            workdir: None,
            env: BTreeMap::new(),
            restart: RestartPolicy::OnFailure,
        };
        if crate::config::vm::check_processes(std::slice::from_ref(&process)).is_ok() {
            processes.push(process);
        }
    }
    processes
}
