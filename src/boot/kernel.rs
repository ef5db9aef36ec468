//! Kernel discovery (DESIGN §4).
//!
//! Order: an explicit path (the VM's `--kernel`, else the host config's `paths.kernel`);
//! NixOS's `/run/booted-system/kernel`; the running kernel's `/boot/vmlinuz-$(uname -r)`;
//! the newest `/boot/vmlinuz-*`. The release is read from the bzImage header itself, so
//! any image names its own modules directory, `lib/modules/RELEASE` with a `modules.dep`.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::UserError;

/// A kernel image and the modules that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The image (bzImage or PVH ELF `vmlinux`).
    pub image: PathBuf,
    /// The kernel release, e.g. `6.1.0-28-amd64`, when it can be told.
    pub release: Option<String>,
    /// The directory holding `modules.dep`, when found.
    pub modules_dir: Option<PathBuf>,
}

/// Finds the kernel for a VM on the host whose file system is at `root` (`/` in production).
pub fn discover(root: &Path, explicit: Option<&Path>, running_release: &str) -> Result<Kernel, UserError> {
    let image = match explicit {
        Some(path) => {
            if !path.is_file() {
                return Err(UserError::missing_dependency(format!("kernel {} does not exist", path.display()))
                    .hint("pass an existing bzImage or vmlinux with --kernel, or drop the flag to use the host's"));
            }
            path.to_path_buf()
        }
        None => find_host_image(root, running_release).ok_or_else(|| {
            UserError::missing_dependency(format!(
                "no kernel image found (looked for {}, {} and {})",
                root.join("run/booted-system/kernel").display(),
                root.join(format!("boot/vmlinuz-{running_release}")).display(),
                root.join("boot/vmlinuz-*").display()
            ))
            .hint("install one (Debian: `apt-get install linux-image-amd64`) or set paths.kernel in /etc/mvm/config.toml")
        })?,
    };
    let release = bzimage_release(&image).or_else(|| release_from_file_name(&image));
    let modules_dir = release.as_deref().and_then(|release| find_modules_dir(root, release));
    Ok(Kernel { image, release, modules_dir })
}

fn find_host_image(root: &Path, running_release: &str) -> Option<PathBuf> {
    let nixos = root.join("run/booted-system/kernel");
    if nixos.is_file() {
        return Some(nixos);
    }
    let running = root.join(format!("boot/vmlinuz-{running_release}"));
    if !running_release.is_empty() && running.is_file() {
        return Some(running);
    }
    std::fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| release_from_file_name(path).is_some() && path.is_file())
        .max_by(|a, b| compare_versions(&a.to_string_lossy(), &b.to_string_lossy()))
}

fn release_from_file_name(image: &Path) -> Option<String> {
    let name = image.file_name()?.to_str()?;
    let release = name.strip_prefix("vmlinuz-").or_else(|| name.strip_prefix("vmlinux-"))?;
    (!release.is_empty()).then(|| release.to_string())
}

/// The release a bzImage names in its setup header (boot protocol 2.00+).
pub fn bzimage_release(image: &Path) -> Option<String> {
    let mut file = File::open(image).ok()?;
    let mut header = [0u8; 0x210];
    file.read_exact(&mut header).ok()?;
    if &header[0x202..0x206] != b"HdrS" {
        return None;
    }
    let offset = u16::from_le_bytes([header[0x20e], header[0x20f]]);
    if offset == 0 {
        return None;
    }
    file.seek(SeekFrom::Start(u64::from(offset) + 0x200)).ok()?;
    let mut text = [0u8; 128];
    let n = file.read(&mut text).ok()?;
    let text = &text[..n];
    let end = text.iter().position(|&b| b == 0 || b == b' ').unwrap_or(n);
    let release = std::str::from_utf8(&text[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_string())
}

fn find_modules_dir(root: &Path, release: &str) -> Option<PathBuf> {
    [
        format!("run/booted-system/kernel-modules/lib/modules/{release}"),
        format!("lib/modules/{release}"),
        format!("usr/lib/modules/{release}"),
    ]
    .into_iter()
    .map(|dir| root.join(dir))
    .find(|dir| dir.join("modules.dep").is_file())
}

/// Compares version-like strings with digit runs taken as numbers (`6.10` > `6.9`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (digits(a), digits(b));
                let (da, db) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
                let order = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if order != Ordering::Equal {
                    return order;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let start = digits.iter().position(|&d| d != b'0').unwrap_or(digits.len());
    &digits[start..]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a minimal bzImage whose header names `release`.
    pub(crate) fn fake_bzimage(path: &Path, release: &str) {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let text = format!("{release} (builder@host) #1 SMP\0");
        image[0x300..0x300 + text.len()].copy_from_slice(text.as_bytes());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, image).unwrap();
    }

    fn add_modules(root: &Path, release: &str) {
        let dir = root.join("lib/modules").join(release);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modules.dep"), "").unwrap();
    }

    #[test]
    fn prefers_the_running_kernel_then_the_newest() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        fake_bzimage(&root.join("boot/vmlinuz-6.1.0-9-amd64"), "6.1.0-9-amd64");
        fake_bzimage(&root.join("boot/vmlinuz-6.1.0-10-amd64"), "6.1.0-10-amd64");
        std::fs::write(root.join("boot/config-6.1.0-99-amd64"), "").unwrap();
        add_modules(root, "6.1.0-10-amd64");
        let newest = discover(root, None, "5.0-other").unwrap();
        assert_eq!(newest.image, root.join("boot/vmlinuz-6.1.0-10-amd64"));
        assert_eq!(newest.release.as_deref(), Some("6.1.0-10-amd64"));
        assert_eq!(newest.modules_dir, Some(root.join("lib/modules/6.1.0-10-amd64")));
        let running = discover(root, None, "6.1.0-9-amd64").unwrap();
        assert_eq!(running.image, root.join("boot/vmlinuz-6.1.0-9-amd64"));
        assert_eq!(running.modules_dir, None);
    }

    #[test]
    fn nixos_kernel_comes_first_and_explicit_wins() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        fake_bzimage(&root.join("boot/vmlinuz-6.1.0-9-amd64"), "6.1.0-9-amd64");
        fake_bzimage(&root.join("run/booted-system/kernel"), "6.6.30");
        let dir = root.join("run/booted-system/kernel-modules/lib/modules/6.6.30");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modules.dep"), "").unwrap();
        let nixos = discover(root, None, "6.6.30").unwrap();
        assert_eq!(nixos.image, root.join("run/booted-system/kernel"));
        assert_eq!(nixos.modules_dir, Some(dir));
        let custom = root.join("custom/bzImage");
        fake_bzimage(&custom, "6.9.1-custom");
        assert_eq!(discover(root, Some(&custom), "").unwrap().release.as_deref(), Some("6.9.1-custom"));
    }

    #[test]
    fn missing_kernels_are_a_missing_dependency() {
        let root = tempfile::tempdir().unwrap();
        let error = discover(root.path(), None, "6.1").unwrap_err();
        assert_eq!(error.kind(), crate::error::ExitCode::MissingDependency);
        assert!(error.hint_text().unwrap().contains("linux-image-amd64"));
        let error = discover(root.path(), Some(Path::new("/no/such/bzImage")), "6.1").unwrap_err();
        assert!(error.to_string().contains("/no/such/bzImage"));
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("vmlinuz-6.10.0", "vmlinuz-6.9.0"), Ordering::Greater);
        assert_eq!(compare_versions("6.1.0-10", "6.1.0-9"), Ordering::Greater);
        assert_eq!(compare_versions("6.1.0-010", "6.1.0-10"), Ordering::Equal);
        assert_eq!(compare_versions("6.1", "6.1.0"), Ordering::Less);
    }
}
