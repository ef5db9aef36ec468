//! Debian packages for guests to install, with no network in the guest: real `.deb`
//! files fetched on the host (`apt-get download`, cached across runs) or built by the
//! test (`dpkg-deb`), in a flat repository the test writes (`Packages` from each
//! package's control fields), which the guest reads through a share as a `file:` source.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Where downloaded packages are kept between runs.
fn cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fetches Debian's package `name` on the host (once; `apt-get update` first when the
/// host's lists do not know it); returns the `.deb`.
pub fn download(name: &str) -> PathBuf {
    let dir = cache();
    let find = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.file_name().unwrap().to_string_lossy().starts_with(&format!("{name}_")))
    };
    if let Some(deb) = find() {
        return deb;
    }
    let fetch = || Command::new("apt-get").args(["download", "-q", name]).current_dir(&dir).output().unwrap();
    if !fetch().status.success() {
        let update = Command::new("apt-get").args(["update", "-qq"]).output().unwrap();
        assert!(update.status.success(), "apt-get update: {}", String::from_utf8_lossy(&update.stderr));
        let again = fetch();
        assert!(
            again.status.success(),
            "apt-get download {name}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
    }
    find().unwrap_or_else(|| panic!("apt-get download {name} left no .deb"))
}

/// Builds package `name` at `version` holding `files` (absolute path, content) in `dir`.
pub fn build(dir: &Path, name: &str, version: &str, files: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: mvm tests <mvm@localhost>\n\
             Description: a package the mvm tests build\n"
        ),
    )
    .unwrap();
    for (path, content) in files {
        let file = tree.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    let deb = dir.join(format!("{name}_{version}_all.deb"));
    let built =
        Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&deb).output();
    let built = built.unwrap();
    assert!(built.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&built.stderr));
    std::fs::remove_dir_all(&tree).unwrap();
    deb
}

/// A flat repository in `dir` holding `debs`: `deb [trusted=yes] file:DIR ./`.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn new(dir: &Path, debs: &[PathBuf]) -> Repo {
        std::fs::create_dir_all(dir).unwrap();
        let mut index = String::new();
        for deb in debs {
            let file_name = deb.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(deb).unwrap();
            std::fs::write(dir.join(&file_name), &bytes).unwrap();
            let control = Command::new("dpkg-deb").arg("--field").arg(deb).output().unwrap();
            assert!(control.status.success(), "dpkg-deb --field {}", deb.display());
            index.push_str(String::from_utf8_lossy(&control.stdout).trim_end());
            index.push_str(&format!(
                "\nFilename: ./{file_name}\nSize: {}\nSHA256: {:x}\n\n",
                bytes.len(),
                Sha256::digest(&bytes)
            ));
        }
        std::fs::write(dir.join("Packages"), index).unwrap();
        Repo { dir: dir.to_path_buf() }
    }

    /// A guest shell script that runs `apt-get ARGS` with this repository as its only
    /// source (the guest has no other network).
    pub fn apt_get(&self, args: &str) -> String {
        format!(
            "printf 'deb [trusted=yes] file:{} ./\\n' > /tmp/mvm-test.list && \
             apt-get -q -o Dir::Etc::SourceList=/tmp/mvm-test.list -o Dir::Etc::SourceParts=/nonexistent \
             -o Acquire::Languages=none {args}",
            self.dir.display()
        )
    }

    /// A guest shell script that installs `packages` from this repository.
    pub fn install(&self, packages: &str) -> String {
        format!(
            "{} && {}",
            self.apt_get("update"),
            self.apt_get(&format!("install -y --no-install-recommends {packages}"))
        )
    }
}
