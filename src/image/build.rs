//! Building an image: mmdebstrap (Debian's own, well-kept bootstrapper) makes the root
//! tree from Debian's archive, as root, in a staging directory of the store; only a
//! whole build is renamed into place, so a failed or interrupted one leaves no image
//! behind, and the next build of the same name removes what it left.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;

use super::{image_dir, store_dir, ImageName, ImageRecord, RECORD, ROOTFS};
use crate::error::UserError;
use crate::state::Paths;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    pub name: ImageName,
    pub suite: String,
    pub include: Vec<String>,
}

/// mmdebstrap's arguments for `request`, into `target`: Debian's `apt` variant (the
/// essential packages and apt, so guest root installs the rest), plus what was asked;
/// verbose, so that each package unpacked is a line of progress.
pub fn mmdebstrap_args(request: &BuildRequest, target: &Path) -> Vec<String> {
    let mut args = vec!["--mode=root".to_string(), "--variant=apt".to_string(), "--verbose".to_string()];
    if !request.include.is_empty() {
        args.push(format!("--include={}", request.include.join(",")));
    }
    args.push(request.suite.clone());
    args.push(target.display().to_string());
    args
}

/// Checks a suite or package name before it reaches mmdebstrap's command line.
pub fn check_word(what: &str, word: &str) -> Result<(), UserError> {
    let valid = !word.is_empty()
        && word.len() <= 128
        && !word.starts_with('-')
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "+-.:=~_".contains(c));
    if valid {
        Ok(())
    } else {
        Err(UserError::usage(format!("{what} {word:?} is not a Debian {what} name")).hint(format!(
            "give a {what} as Debian spells it, e.g. {}",
            if what == "suite" { "bookworm" } else { "curl" }
        )))
    }
}

/// Builds `request` with `mmdebstrap`; prints its progress (`progress` gets each line).
pub fn build(
    paths: &Paths,
    request: &BuildRequest,
    mmdebstrap: &Path,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ImageRecord> {
    if !nix::unistd::geteuid().is_root() {
        return Err(UserError::needs_root("only root builds images (they are shared by every user's VMs)")
            .hint(format!("run `sudo mvm image build {}`", request.name))
            .into());
    }
    check_word("suite", &request.suite)?;
    for package in &request.include {
        check_word("package", package)?;
    }
    let store = store_dir(paths);
    crate::state::paths::ensure_root(&paths.state_dir)?;
    crate::state::paths::own_dir(&store, 0o755)?;
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755))?;
    let _lock =
        crate::state::lock::FileLock::exclusive_private(&store.join(format!(".{}.lock", request.name)))?;
    let dir = image_dir(paths, &request.name);
    if std::fs::symlink_metadata(&dir).is_ok() {
        return Err(UserError::conflict(format!("image '{}' exists", request.name))
            .hint(format!("remove it first with `sudo mvm image rm {}`, or pick another name", request.name))
            .into());
    }
    let staging = store.join(format!(".build-{}", request.name));
    remove_staging(&staging)?;
    std::fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))?;
    let started = Instant::now();
    let result = run_mmdebstrap(mmdebstrap, &mmdebstrap_args(request, &staging.join(ROOTFS)), progress);
    if let Err(error) = result {
        let _ = remove_staging(&staging);
        return Err(error.context(format!("cannot build image '{}'", request.name)));
    }
    // mmdebstrap leaves no /etc/hosts, and a guest's programs expect localhost there.
    let hosts = staging.join(ROOTFS).join("etc/hosts");
    if std::fs::symlink_metadata(&hosts).is_err() {
        std::fs::write(&hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")?;
    }
    let record = ImageRecord {
        name: request.name.clone(),
        suite: request.suite.clone(),
        include: request.include.clone(),
        built_at: crate::output::unix_now(),
        size_bytes: tree_size(&staging.join(ROOTFS)),
        build_seconds: started.elapsed().as_secs(),
    };
    std::fs::write(staging.join(RECORD), toml::to_string(&record)?)?;
    std::fs::rename(&staging, &dir).with_context(|| format!("cannot move the image to {}", dir.display()))?;
    Ok(record)
}

/// A build's progress for a person: on a terminal, a spinner naming the step or the
/// package being unpacked; otherwise plain lines, one per step and per package.
pub struct Progress {
    what: String,
    spinner: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// Progress of building `what` ("image 'dev'", "the package layer …").
    pub fn new(what: &str) -> Progress {
        Progress { what: what.to_string(), spinner: crate::output::spinner(&format!("building {what}")) }
    }

    /// What a line mmdebstrap printed says to a person: its steps and each package it
    /// unpacks; nothing for the rest.
    pub fn text_of(line: &str) -> Option<String> {
        if let Some(step) = line.strip_prefix("I: ") {
            Some(step.to_string())
        } else {
            let package = line.strip_prefix("Unpacking ")?;
            Some(format!("unpacking {}", package.split_whitespace().next().unwrap_or(package)))
        }
    }

    /// Takes one line mmdebstrap printed.
    pub fn line(&mut self, line: &str) {
        let Some(shown) = Self::text_of(line) else { return };
        match &self.spinner {
            Some(spinner) => spinner.set_message(format!("building {}: {shown}", self.what)),
            None => eprintln!("{shown}"),
        }
    }

    /// Clears the spinner.
    pub fn finish(self) {
        if let Some(spinner) = self.spinner {
            spinner.finish_and_clear();
        }
    }
}

/// Runs mmdebstrap, handing each line it prints to `progress`; on failure, the error
/// quotes its last lines (where apt says which package it could not find).
fn run_mmdebstrap(program: &Path, args: &[String], progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let echo = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).count());
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines().map_while(Result::ok) {
        progress(&line);
        tail.push(line);
        if tail.len() > 8 {
            tail.remove(0);
        }
    }
    let _ = echo.join();
    let status = child.wait()?;
    if !status.success() {
        let errors: Vec<&String> = tail.iter().filter(|line| line.starts_with("E:")).collect();
        let shown = if errors.is_empty() { tail.iter().collect() } else { errors };
        let text: Vec<&str> = shown.iter().map(|line| line.as_str()).collect();
        return Err(UserError::new(
            crate::error::ExitCode::Failure,
            format!("mmdebstrap failed ({status}):\n{}", text.join("\n")),
        )
        .hint("check the suite and package names, and that this host reaches Debian's archive")
        .into());
    }
    Ok(())
}

/// Removes a staging directory a build left (killed half-way): whatever mmdebstrap had
/// mounted in it is unmounted first, and the removal never descends into a mount.
fn remove_staging(staging: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(staging).is_err() {
        return Ok(());
    }
    let prefix = format!("{}/", staging.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(PathBuf::from)
        .collect();
    // Deepest first.
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
    let store = crate::fs::Tree::open(staging.parent().expect("the store"))?;
    store
        .remove(Path::new(staging.file_name().expect("a name")))
        .with_context(|| format!("cannot remove the unfinished build {}", staging.display()))
}

/// The bytes `dir`'s files take on disk, each inode counted once.
fn tree_size(dir: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            }
            if seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(include: &[&str]) -> BuildRequest {
        BuildRequest {
            name: "dev".parse().unwrap(),
            suite: "bookworm".into(),
            include: include.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn exact_mmdebstrap_argv() {
        assert_eq!(
            mmdebstrap_args(&request(&["curl", "git"]), Path::new("/s/.images/.build-dev/rootfs")),
            [
                "--mode=root",
                "--variant=apt",
                "--verbose",
                "--include=curl,git",
                "bookworm",
                "/s/.images/.build-dev/rootfs"
            ]
        );
        assert_eq!(
            mmdebstrap_args(&request(&[]), Path::new("/t")),
            ["--mode=root", "--variant=apt", "--verbose", "bookworm", "/t"]
        );
    }

    #[test]
    fn progress_names_steps_and_packages() {
        assert_eq!(
            Progress::text_of("I: installing remaining packages inside the chroot...").unwrap(),
            "installing remaining packages inside the chroot..."
        );
        assert_eq!(
            Progress::text_of("Unpacking postgresql-15 (15.8-0+deb12u1) ...").unwrap(),
            "unpacking postgresql-15"
        );
        assert_eq!(Progress::text_of("Selecting previously unselected package libpq5:amd64."), None);
    }

    #[test]
    fn suites_and_packages_cannot_become_options() {
        assert!(check_word("package", "libstdc++6").is_ok());
        assert!(check_word("package", "python3.11").is_ok());
        for bad in ["", "--hook-dir=/tmp", "a b", "a,b", "$(id)", "../x"] {
            assert!(check_word("package", bad).is_err(), "{bad:?} passed");
        }
    }

    /// A failed mmdebstrap (a stand-in that fails as it does for an unknown package)
    /// leaves no image and no staging behind, and says why.
    #[test]
    fn a_failed_build_leaves_nothing_and_says_why() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_failed_build_leaves_nothing: builds are root's");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let fake = dir.path().join("mmdebstrap");
        std::fs::write(&fake, "#!/bin/sh\necho 'I: working' >&2\nfor last; do :; done\nmkdir -p \"$last\"\necho 'E: Unable to locate package nosuch' >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut lines = Vec::new();
        let error = build(&paths, &request(&["nosuch"]), &fake, &mut |line| lines.push(line.to_string()))
            .unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("Unable to locate package nosuch"), "{text}");
        assert_eq!(lines, ["I: working", "E: Unable to locate package nosuch"]);
        let left: Vec<String> = std::fs::read_dir(store_dir(&paths))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// A build killed half-way left its staging tree: the next build of the name removes
    /// it and succeeds.
    #[test]
    fn an_interrupted_build_can_be_run_again() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP an_interrupted_build_can_be_run_again: builds are root's");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let staging = store_dir(&paths).join(".build-dev/rootfs/usr");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("half"), "").unwrap();
        let fake = dir.path().join("mmdebstrap");
        std::fs::write(
            &fake,
            "#!/bin/sh\nfor last; do :; done\nmkdir -p \"$last/usr/bin\" \"$last/etc\" && echo ok > \"$last/usr/bin/tool\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let record = build(&paths, &request(&[]), &fake, &mut |_| {}).unwrap();
        assert_eq!(record.name.as_str(), "dev");
        let root = super::super::rootfs(&paths, &record.name);
        assert!(root.join("usr/bin/tool").is_file());
        assert!(!root.join("usr/half").exists(), "the interrupted build's files were kept");
        assert!(std::fs::read_to_string(root.join("etc/hosts")).unwrap().contains("localhost"));
        assert_eq!(super::super::load(&paths, &record.name).unwrap(), record);
        // Built once: a second build of the name is refused.
        let again = build(&paths, &request(&[]), &fake, &mut |_| {}).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
    }
}
