//! Files generated from the CLI definition (`cli::command()`, passed in): shell completions
//! and man pages. The copies committed under `completions/` and `docs/` are checked against
//! these by a test.

use clap_complete::Shell;

/// The completion script for `shell`.
pub fn completion(mut command: clap::Command, shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "mvm", &mut script);
    script
}

/// The committed completion files: (path relative to the repository, content).
pub fn completion_files(command: &clap::Command) -> Vec<(String, Vec<u8>)> {
    [
        (Shell::Bash, "completions/mvm.bash"),
        (Shell::Zsh, "completions/_mvm"),
        (Shell::Fish, "completions/mvm.fish"),
    ]
    .into_iter()
    .map(|(shell, path)| (path.to_string(), completion(command.clone(), shell)))
    .collect()
}

/// The man pages: `docs/mvm.1` and one `docs/man/mvm-SUBCOMMAND.1` per subcommand.
pub fn man_pages(command: &clap::Command) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = vec![("docs/mvm.1".to_string(), render_man(command.clone())?)];
    for sub in command.get_subcommands() {
        let name = format!("mvm-{}", sub.get_name());
        let page = sub.clone().name(name.clone()).display_name(name.clone()).bin_name(name.clone());
        pages.push((format!("docs/man/{name}.1"), render_man(page)?));
    }
    Ok(pages)
}

fn render_man(command: clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page)?;
    Ok(page)
}
