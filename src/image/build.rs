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
use crate::spec::check_debian_word;
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

/// The programs a build runs.
#[derive(Debug, Clone)]
pub struct BuildTools {
    pub mmdebstrap: PathBuf,
    /// `mkfs.ext4`, which packs the tree into the image's disk.
    pub mkfs: PathBuf,
}

impl BuildTools {
    /// The host's, or what is missing and how to install it.
    pub fn find(host: &crate::config::host::HostConfig) -> Result<BuildTools, UserError> {
        use crate::host::binaries::Tool;
        Ok(BuildTools {
            mmdebstrap: Tool::Mmdebstrap.find(&host.paths)?,
            mkfs: Tool::MkfsExt4.find(&host.paths)?,
        })
    }
}

/// Where mmdebstrap writes the tree, beneath the staging directory; packed into
/// [`ROOTFS`] and removed.
const TREE: &str = "tree";

/// Files that make one machine of a tree: keys generated while packages were installed.
/// Left in an image, every VM of it would share them (and any could pose as another).
const MACHINE_KEYS: &[&str] =
    &["etc/ssl/private/ssl-cert-snakeoil.key", "etc/ssl/certs/ssl-cert-snakeoil.pem"];

/// Builds `request` with `tools`; `progress` gets each line mmdebstrap prints.
pub fn build(
    paths: &Paths,
    request: &BuildRequest,
    tools: &BuildTools,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ImageRecord> {
    if !nix::unistd::geteuid().is_root() {
        return Err(UserError::needs_root("only root builds images (they are shared by every user's VMs)")
            .hint(format!("run `sudo mvm image build {}`", request.name))
            .into());
    }
    check_debian_word("suite", &request.suite)?;
    for package in &request.include {
        check_debian_word("package", package)?;
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
    let built = build_in(&staging, request, tools, progress).and_then(|record| {
        std::fs::rename(&staging, &dir)
            .with_context(|| format!("cannot move the image to {}", dir.display()))?;
        Ok(record)
    });
    if built.is_err() {
        let _ = remove_staging(&staging);
    }
    built.with_context(|| format!("cannot build image '{}'", request.name))
}

/// The build's steps in `staging`: the tree, made one machine of no one's, packed into an
/// ext4 disk image (so no program of it, setuid ones included, is ever a file on the
/// host, and the guest reads it as a block device with its own permissions), the tree
/// removed, the record written.
fn build_in(
    staging: &Path,
    request: &BuildRequest,
    tools: &BuildTools,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ImageRecord> {
    let started = Instant::now();
    let tree = staging.join(TREE);
    run_mmdebstrap(&tools.mmdebstrap, &mmdebstrap_args(request, &tree), progress)?;
    // mmdebstrap leaves no /etc/hosts, and a guest's programs expect localhost there.
    let hosts = tree.join("etc/hosts");
    if std::fs::symlink_metadata(&hosts).is_err() {
        std::fs::write(&hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")?;
    }
    let etc = crate::fs::Tree::open(&tree.join("etc"))?;
    for key in MACHINE_KEYS {
        etc.remove(Path::new(key.trim_start_matches("etc/")))?;
    }
    for entry in etc.entries(Path::new("ssh")).unwrap_or_default() {
        if entry.name.to_string_lossy().starts_with("ssh_host_") {
            etc.remove(&Path::new("ssh").join(&entry.name))?;
        }
    }
    progress("I: packing the tree into the image's disk...");
    pack(&tools.mkfs, &tree, &staging.join(ROOTFS))?;
    crate::fs::Tree::open(staging)?.remove(Path::new(TREE))?;
    let record = ImageRecord {
        name: request.name.clone(),
        suite: request.suite.clone(),
        include: request.include.clone(),
        built_at: crate::output::unix_now(),
        size_bytes: crate::state::system_disk::allocated_bytes_of(&staging.join(ROOTFS)).unwrap_or(0),
        build_seconds: started.elapsed().as_secs(),
    };
    std::fs::write(staging.join(RECORD), toml::to_string(&record)?)?;
    Ok(record)
}

/// Packs `tree` into a new ext4 image at `image` with `mkfs` (`-d`, which keeps owners,
/// modes, setuid bits, extended attributes and hard links), sized for the tree with room
/// to spare, with no journal (guests mount it read-only), readable by every user.
fn pack(mkfs: &Path, tree: &Path, image: &Path) -> anyhow::Result<()> {
    let (bytes, inodes) = tree_size(tree);
    let size = bytes + bytes / 4 + (64 << 20);
    let file = std::fs::File::create(image).with_context(|| format!("cannot create {}", image.display()))?;
    file.set_len(size.div_ceil(1 << 20) << 20)?;
    drop(file);
    let output = Command::new(mkfs)
        .args(["-q", "-F", "-L", "mvm-image", "-m", "0", "-O", "^has_journal"])
        .arg("-N")
        .arg((inodes + inodes / 4 + 1024).to_string())
        .args(["-E", "nodiscard", "-d"])
        .arg(tree)
        .arg(image)
        .output()
        .with_context(|| format!("cannot run {}", mkfs.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{} could not pack the image: {}",
            mkfs.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    std::fs::set_permissions(image, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
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

/// The bytes `dir`'s files take on disk and how many inodes it has, each counted once.
fn tree_size(dir: &Path) -> (u64, u64) {
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
    (total, seen.len() as u64)
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
        assert!(check_debian_word("package", "libstdc++6").is_ok());
        assert!(check_debian_word("package", "python3.11").is_ok());
        for bad in [
            "",
            "--hook-dir=/tmp",
            "a b",
            "a,b",
            "$(id)",
            "../x",
            "sudo=1.9.13p3-1",
            "curl:amd64",
            "~n.",
            "Curl",
        ] {
            assert!(check_debian_word("package", bad).is_err(), "{bad:?} passed");
        }
    }

    /// A failed mmdebstrap (a stand-in that fails as it does for an unknown package)
    /// leaves no image and no staging behind, and says why.
    #[test]
    fn a_failed_build_leaves_nothing_and_says_why() {
        let Some(dir) = root_with_mkfs("a_failed_build_leaves_nothing") else { return };
        let paths = Paths::under(dir.path());
        let tools = fake_tools(
            dir.path(),
            "echo 'I: working' >&2\nmkdir -p \"$last\"\necho 'E: Unable to locate package nosuch' >&2\nexit 1",
        );
        let mut lines = Vec::new();
        let error = build(&paths, &request(&["nosuch"]), &tools, &mut |line| lines.push(line.to_string()))
            .unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("Unable to locate package nosuch"), "{text}");
        assert_eq!(lines, ["I: working", "E: Unable to locate package nosuch"]);
        assert!(left_in_store(&paths).is_empty(), "left behind: {:?}", left_in_store(&paths));
        // Failing after mmdebstrap (here: the tree cannot be packed) leaves nothing either.
        let tools =
            BuildTools { mkfs: "/bin/false".into(), ..fake_tools(dir.path(), "mkdir -p \"$last/etc\"") };
        assert!(build(&paths, &request(&[]), &tools, &mut |_| {}).is_err());
        assert!(left_in_store(&paths).is_empty(), "left behind: {:?}", left_in_store(&paths));
    }

    /// A build killed half-way left its staging tree: the next build of the name removes
    /// it and succeeds. The image is a disk holding the tree, with no machine keys, and
    /// no file of it is on the host.
    #[test]
    fn an_interrupted_build_can_be_run_again() {
        let Some(dir) = root_with_mkfs("an_interrupted_build_can_be_run_again") else { return };
        let paths = Paths::under(dir.path());
        let staging = store_dir(&paths).join(".build-dev/tree/usr");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("half"), "").unwrap();
        let tools = fake_tools(
            dir.path(),
            "mkdir -p \"$last/usr/bin\" \"$last/etc/ssh\" && echo ok > \"$last/usr/bin/tool\" && \
             chmod 4755 \"$last/usr/bin/tool\" && echo key > \"$last/etc/ssh/ssh_host_ed25519_key\"",
        );
        let record = build(&paths, &request(&[]), &tools, &mut |_| {}).unwrap();
        assert_eq!(record.name.as_str(), "dev");
        let disk = super::super::rootfs(&paths, &record.name);
        let debugfs = |request: &str| {
            let out = Command::new("debugfs").args(["-R", request]).arg(&disk).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(debugfs("cat /usr/bin/tool"), "ok\n");
        assert!(debugfs("stat /usr/bin/tool").contains("Mode:  04755"), "{}", debugfs("stat /usr/bin/tool"));
        assert!(debugfs("cat /etc/hosts").contains("localhost"));
        assert!(!debugfs("ls /etc/ssh").contains("ssh_host_"), "a machine key stayed");
        assert!(!debugfs("ls /usr").contains("half"), "the interrupted build's files were kept");
        let image_dir = super::super::image_dir(&paths, &record.name);
        let files: Vec<String> = std::fs::read_dir(&image_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(std::fs::metadata(&disk).unwrap().mode() & 0o7777, 0o644);
        assert_eq!(super::super::load(&paths, &record.name).unwrap(), record);
        // Built once: a second build of the name is refused.
        let again = build(&paths, &request(&[]), &tools, &mut |_| {}).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
    }

    /// A temporary directory, when this test can run (root, with mkfs.ext4).
    fn root_with_mkfs(test: &str) -> Option<tempfile::TempDir> {
        let ready = nix::unistd::geteuid().is_root() && which::which("debugfs").is_ok();
        if !ready || crate::host::binaries::Tool::MkfsExt4.find(&Default::default()).is_err() {
            eprintln!("SKIP {test}: builds are root's and need mkfs.ext4 and debugfs");
            return None;
        }
        Some(tempfile::tempdir().unwrap())
    }

    /// The real mkfs.ext4 and a stand-in mmdebstrap running `script` (`$last`: the tree).
    fn fake_tools(dir: &Path, script: &str) -> BuildTools {
        let fake = dir.join("mmdebstrap");
        std::fs::write(&fake, format!("#!/bin/sh\nfor last; do :; done\n{script}\n")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        BuildTools {
            mmdebstrap: fake,
            mkfs: crate::host::binaries::Tool::MkfsExt4.find(&Default::default()).unwrap(),
        }
    }

    fn left_in_store(paths: &Paths) -> Vec<String> {
        std::fs::read_dir(store_dir(paths))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.ends_with(".lock"))
            .collect()
    }
}
