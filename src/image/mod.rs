//! Images: clean Debian root trees, built once (`build`, with mmdebstrap) into a shared
//! store under the state root (`.images/NAME/rootfs.img`, an ext4 disk image holding the
//! tree, with its record `image.toml`), and attached read-only to every VM made from them
//! (`mvm create --image NAME`), each of which writes only its own system layer above.
//!
//! Only root builds and removes images, and only a store that root alone can write is
//! trusted: the state root is shared with the group, so a member could otherwise make
//! `.images` first and hand root's VMs a tree of theirs.

pub mod build;
pub mod packages;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::error::UserError;
pub use crate::name::ImageName;
use crate::name::VmName;
use crate::state::Paths;

/// The store's directory beneath the state root.
pub const STORE: &str = ".images";
/// An image's root tree (an ext4 disk image), beneath its directory.
pub const ROOTFS: &str = "rootfs.img";
/// The serial of the disk an image's VM finds the image's tree on.
pub const DISK_SERIAL: &str = crate::contract::config::IMAGE_DISK_SERIAL;
/// An image's record, beneath its directory.
pub const RECORD: &str = "image.toml";
/// The Debian suite an image is built from unless told.
pub const DEFAULT_SUITE: &str = "bookworm";

/// What an image is, as its build recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub name: ImageName,
    pub suite: String,
    /// Packages asked for beyond Debian's `apt` variant.
    #[serde(default)]
    pub include: Vec<String>,
    /// When it was built, seconds since the Unix epoch.
    pub built_at: u64,
    /// The tree's size on disk.
    pub size_bytes: u64,
    /// How long the build took.
    pub build_seconds: u64,
}

/// The store of images under `paths`.
pub fn store_dir(paths: &Paths) -> PathBuf {
    paths.state_dir.join(STORE)
}

/// Image `name`'s directory.
pub fn image_dir(paths: &Paths, name: &ImageName) -> PathBuf {
    store_dir(paths).join(name.as_str())
}

/// Image `name`'s disk, which VMs attach read-only.
pub fn rootfs(paths: &Paths, name: &ImageName) -> PathBuf {
    image_dir(paths, name).join(ROOTFS)
}

/// The record of image `name`, from a store root alone can write.
pub fn load(paths: &Paths, name: &ImageName) -> anyhow::Result<ImageRecord> {
    let missing = || {
        UserError::not_found(format!("no image '{name}'")).hint(format!(
            "build it with `sudo mvm image build {name}`; `mvm image list` shows those there are"
        ))
    };
    let dir = image_dir(paths, name);
    for trusted in [store_dir(paths), dir.clone(), dir.join(ROOTFS)] {
        match crate::fs::roots_alone(&trusted) {
            Ok(true) => {}
            Ok(false) => {
                return Err(UserError::conflict(format!(
                    "{} is not root's alone, so no VM may use it",
                    trusted.display()
                ))
                .hint(
                    "images are built by root (`sudo mvm image build`); remove what someone else made there",
                )
                .into())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(missing().into()),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", trusted.display())),
        }
    }
    let text = crate::fs::read_record(&dir, RECORD)
        .with_context(|| format!("cannot read the record of image '{name}'"))?;
    let record: ImageRecord = toml::from_str(&String::from_utf8_lossy(&text))
        .with_context(|| format!("the record of image '{name}' is corrupt"))?;
    if &record.name != name {
        anyhow::bail!("the record of image '{name}' names '{}'", record.name);
    }
    Ok(record)
}

/// Every image in the store, by name; an unreadable one is left out.
pub fn list(paths: &Paths) -> anyhow::Result<Vec<ImageRecord>> {
    let entries = match std::fs::read_dir(store_dir(paths)) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).context("cannot read the image store"),
    };
    let mut images: Vec<ImageRecord> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<ImageName>().ok())
        .filter_map(|name| load(paths, &name).ok())
        .collect();
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(images)
}

/// The VMs whose root is image `name`, or whose packages' layer it is.
pub fn users(paths: &Paths, name: &ImageName) -> anyhow::Result<Vec<VmName>> {
    Ok(crate::state::store::list(paths)?
        .into_iter()
        .filter_map(|entry| entry.config.ok())
        .filter(|config| {
            let image = crate::config::vm::RootModel::Image(name.clone());
            config.root == image || packages::effective_root(paths, config).is_ok_and(|root| root == image)
        })
        .map(|config| config.name)
        .collect())
}

/// Removes image `name` (root only), refused while a VM is made from it.
pub fn remove(paths: &Paths, name: &ImageName) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(UserError::needs_root("only root removes images").hint("run it with sudo").into());
    }
    load(paths, name)?;
    let users = users(paths, name)?;
    if !users.is_empty() {
        let names: Vec<&str> = users.iter().map(VmName::as_str).collect();
        return Err(UserError::conflict(format!("image '{name}' is the root of VM(s) {}", names.join(", ")))
            .hint("remove those VMs first (`mvm rm NAME`)")
            .into());
    }
    let store = crate::fs::Tree::open(&store_dir(paths))?;
    store.remove(Path::new(name.as_str())).with_context(|| format!("cannot remove image '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> ImageRecord {
        ImageRecord {
            name: name.parse().unwrap(),
            suite: "bookworm".into(),
            include: vec!["curl".into()],
            built_at: 1,
            size_bytes: 2,
            build_seconds: 3,
        }
    }

    fn write(paths: &Paths, record: &ImageRecord) {
        let dir = image_dir(paths, &record.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(ROOTFS), "").unwrap();
        std::fs::write(dir.join(RECORD), toml::to_string(record).unwrap()).unwrap();
    }

    #[test]
    fn names_follow_the_vm_rules() {
        assert_eq!("dev-1".parse::<ImageName>().unwrap().as_str(), "dev-1");
        let error = "../x".parse::<ImageName>().unwrap_err();
        assert!(error.to_string().starts_with("invalid image name"), "{error}");
    }

    #[test]
    fn images_load_and_list_from_a_store_root_alone_writes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP images_load_and_list: the store must be root's");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let missing = load(&paths, &"dev".parse().unwrap()).unwrap_err();
        assert!(missing.to_string().contains("no image 'dev'"), "{missing}");
        write(&paths, &record("dev"));
        write(&paths, &record("base"));
        assert_eq!(load(&paths, &"dev".parse().unwrap()).unwrap(), record("dev"));
        let names: Vec<String> = list(&paths).unwrap().into_iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, ["base", "dev"]);
        // A record that names another image is refused.
        std::fs::write(
            image_dir(&paths, &"base".parse().unwrap()).join(RECORD),
            toml::to_string(&record("dev")).unwrap(),
        )
        .unwrap();
        assert!(load(&paths, &"base".parse().unwrap()).is_err());
    }

    #[test]
    fn a_store_or_image_someone_else_can_write_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_store_or_image_someone_else_can_write: needs root to chown");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        write(&paths, &record("dev"));
        let name: ImageName = "dev".parse().unwrap();
        // A member's tree planted as the store, or an image writable by the group.
        std::fs::set_permissions(image_dir(&paths, &name), std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(load(&paths, &name).unwrap_err().to_string().contains("not root's alone"));
        std::fs::set_permissions(image_dir(&paths, &name), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(store_dir(&paths), Some(1000), None).unwrap();
        assert!(load(&paths, &name).unwrap_err().to_string().contains("not root's alone"));
        std::os::unix::fs::chown(store_dir(&paths), Some(0), None).unwrap();
        assert!(load(&paths, &name).is_ok());
        // A symlinked image is no image.
        std::fs::rename(image_dir(&paths, &name), dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), image_dir(&paths, &name)).unwrap();
        assert!(load(&paths, &name).is_err());
    }
}
