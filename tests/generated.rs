//! The committed completions and man pages match what the CLI definition generates.
//! Regenerate with `MVM_UPDATE_GENERATED=1 cargo test --test generated`.

use std::path::Path;

#[test]
fn completions_and_man_pages_are_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("MVM_UPDATE_GENERATED").is_some();
    let mut files = mvm::generate::completion_files(&mvm::cli::command());
    files.extend(mvm::generate::man_pages(&mvm::cli::command()).unwrap());
    let mut stale = Vec::new();
    for (path, content) in &files {
        let target = root.join(path);
        if update {
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, content).unwrap();
        } else if std::fs::read(&target).ok().as_ref() != Some(content) {
            stale.push(path.clone());
        }
    }
    let expected: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    for entry in std::fs::read_dir(root.join("docs/man")).unwrap() {
        let path = format!("docs/man/{}", entry.unwrap().file_name().to_string_lossy());
        if !expected.contains(&path.as_str()) {
            stale.push(format!("{path} (no such subcommand any more)"));
        }
    }
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}\nregenerate with: MVM_UPDATE_GENERATED=1 cargo test --test generated"
    );
}

#[test]
fn completion_scripts_know_every_subcommand() {
    let bash = String::from_utf8(mvm::generate::completion(mvm::cli::command(), clap_complete::Shell::Bash))
        .unwrap();
    for sub in ["create", "list", "inspect", "rm", "doctor", "completions"] {
        assert!(bash.contains(sub), "{sub} missing from bash completion");
    }
}
