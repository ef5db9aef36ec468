//! `mvm direnv`: print the `.envrc` lines that bring a project's VM up on `cd` (the text of
//! the repository's `templates/envrc`, with the VM name and template given here).

use clap::Args;

/// The `.envrc` text, as shipped in `templates/envrc`.
pub const ENVRC: &str = include_str!("../../templates/envrc");
/// The line of [`ENVRC`] that says how `mvm up` is called.
const UP_LINE: &str =
    r#"mvm_up=(mvm up --export --idle "${MVM_IDLE:-5m}" --stop-after "${MVM_STOP_AFTER:-1h}")"#;

/// Arguments of `mvm direnv`.
#[derive(Debug, Clone, Default, Args)]
pub struct DirenvArgs {
    /// The VM [default: the VM whose project is the directory, else one named after it]
    pub name: Option<String>,
    /// The template to create the VM from on first entry
    #[arg(long, short = 't', value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// The idle time before the VM pauses [default: $MVM_IDLE, else 5m; it stops after $MVM_STOP_AFTER, else 1h]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle: Option<std::time::Duration>,
}

/// Runs `mvm direnv`.
pub fn run(args: DirenvArgs) -> anyhow::Result<i32> {
    if let Some(name) = &args.name {
        name.parse::<crate::name::VmName>()?;
    }
    print!("{}", envrc(&args));
    eprintln!("mvm: save this as .envrc in the project and run `direnv allow`");
    Ok(0)
}

/// The `.envrc` text for `args`.
pub fn envrc(args: &DirenvArgs) -> String {
    let mut call = String::from("mvm_up=(mvm up --export");
    if let Some(name) = &args.name {
        call.push_str(&format!(" {name}"));
    }
    if let Some(template) = &args.template {
        call.push_str(&format!(" --template {}", shell_quote(template)));
    }
    let idle = match args.idle {
        // One shell word: humantime writes `1m 30s`.
        Some(idle) => shell_quote(&humantime::format_duration(idle).to_string()),
        None => r#""${MVM_IDLE:-5m}""#.to_string(),
    };
    call.push_str(&format!(r#" --idle {idle} --stop-after "${{MVM_STOP_AFTER:-1h}}")"#));
    ENVRC.replace(UP_LINE, &call)
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_options_it_is_the_shipped_file() {
        assert!(ENVRC.contains(UP_LINE));
        assert_eq!(envrc(&DirenvArgs::default()), ENVRC);
    }

    #[test]
    fn options_go_into_the_up_call() {
        let args = DirenvArgs {
            name: Some("web".into()),
            template: Some("my templates/x.toml".into()),
            idle: Some(std::time::Duration::from_secs(90)),
        };
        let text = envrc(&args);
        assert!(
            text.contains(
                "mvm_up=(mvm up --export web --template 'my templates/x.toml' --idle '1m 30s' --stop-after \"${MVM_STOP_AFTER:-1h}\")"
            ),
            "{text}"
        );
    }
}
