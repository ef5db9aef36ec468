//! The initramfs: mvm itself as `/init`, the shared libraries it runs with, and the
//! kernel modules the guest needs to reach its shares, network and agent.
//!
//! The base image depends only on the mvm binary, the kernel release and the module set,
//! so it is built once and cached under a key of those. Each boot appends a small second
//! archive (the kernel unpacks concatenated archives in order) with that VM's guest
//! config, so per-VM data never invalidates the cache.

use std::collections::BTreeSet;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::atomic::write_atomic;
use crate::boot::cpio::CpioWriter;
use crate::boot::kernel::Kernel;
use crate::boot::modules::{self, Module};
use crate::contract::MODULE_LIST;
use crate::error::UserError;

/// The files of the running mvm binary that the guest needs: the binary, its program
/// interpreter (at the path the binary names) and the shared libraries it has loaded.
#[derive(Debug, Clone)]
pub struct SelfImage {
    pub exe: PathBuf,
    pub interpreter: Option<(String, PathBuf)>,
    pub libraries: Vec<PathBuf>,
}

impl SelfImage {
    /// Reads them from `/proc/self`.
    pub fn current() -> anyhow::Result<SelfImage> {
        let exe = std::fs::read_link("/proc/self/exe").context("cannot find the mvm binary")?;
        let maps = std::fs::read_to_string("/proc/self/maps").context("cannot read /proc/self/maps")?;
        let libraries: BTreeSet<PathBuf> = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .filter(|path| path.starts_with('/') && path.contains(".so"))
            .map(PathBuf::from)
            .filter(|path| *path != exe && path.is_file())
            .collect();
        let interpreter = program_interpreter(&exe)?.map(|name| {
            let file = std::fs::canonicalize(&name).unwrap_or_else(|_| PathBuf::from(&name));
            (name, file)
        });
        Ok(SelfImage { exe, interpreter, libraries: libraries.into_iter().collect() })
    }
}

/// The `PT_INTERP` path of an ELF64 executable, `None` for a static one.
pub fn program_interpreter(exe: &Path) -> anyhow::Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    let mut file = File::open(exe).with_context(|| format!("cannot open {}", exe.display()))?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header)?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 {
        bail!("{} is not a 64-bit ELF file", exe.display());
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(&header, 0x20), u16_at(&header, 0x36), u16_at(&header, 0x38));
    for index in 0..u64::from(phnum) {
        let mut entry = vec![0u8; usize::from(phentsize)];
        file.seek(SeekFrom::Start(phoff + index * u64::from(phentsize)))?;
        file.read_exact(&mut entry)?;
        if u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")) == PT_INTERP {
            let (offset, size) = (u64_at(&entry, 8), u64_at(&entry, 32));
            let mut name = vec![0u8; size as usize];
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut name)?;
            let name = String::from_utf8_lossy(&name).trim_end_matches('\0').to_string();
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Everything the base image is made of.
#[derive(Debug, Clone)]
pub struct BaseSpec {
    pub image: SelfImage,
    pub release: String,
    pub modules_dir: PathBuf,
    pub modules: Vec<Module>,
    /// The file-event module ([`crate::boot::notify`]), when it is built and trusted.
    pub notify_module: Option<PathBuf>,
}

impl BaseSpec {
    /// The spec for booting `kernel` with the running mvm (and `notify_module`).
    pub fn for_kernel(kernel: &Kernel, notify_module: Option<PathBuf>) -> anyhow::Result<BaseSpec> {
        let (Some(release), Some(modules_dir)) = (&kernel.release, &kernel.modules_dir) else {
            return Err(UserError::missing_dependency(format!(
                "no kernel modules found for {}",
                kernel.image.display()
            ))
            .hint("install the kernel's modules (Debian: linux-image-amd64), or pass --kernel with its modules in /lib/modules")
            .into());
        };
        Ok(BaseSpec {
            image: SelfImage::current()?,
            release: release.clone(),
            modules_dir: modules_dir.clone(),
            modules: modules::closure(modules_dir, modules::GUEST_MODULES)?,
            notify_module,
        })
    }

    /// A key that changes whenever any input of the image does.
    pub fn cache_key(&self) -> anyhow::Result<String> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        self.release.hash(&mut hasher);
        let mut files: Vec<PathBuf> = vec![self.image.exe.clone()];
        files.extend(self.image.libraries.iter().cloned());
        files.extend(self.modules.iter().map(|m| self.modules_dir.join(&m.path)));
        files.extend(self.notify_module.iter().cloned());
        for file in files {
            let meta = std::fs::metadata(&file).with_context(|| format!("cannot stat {}", file.display()))?;
            (file, meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino()).hash(&mut hasher);
        }
        Ok(format!("{:016x}", hasher.finish()))
    }
}

/// Writes the base image for `spec` to `out`.
pub fn write_base(spec: &BaseSpec, out: impl Write) -> anyhow::Result<()> {
    let mut cpio = CpioWriter::new(out);
    let mut dirs = BTreeSet::new();
    for dir in ["dev", "proc", "sys", "run", "tmp", "newroot", "mvm", "etc"] {
        dirs.insert(PathBuf::from(dir));
    }
    let mut files: Vec<(PathBuf, PathBuf, u32)> =
        vec![(PathBuf::from("init"), spec.image.exe.clone(), 0o755)];
    for library in &spec.image.libraries {
        files.push((relative(library), library.clone(), 0o755));
    }
    if let Some((name, file)) = &spec.image.interpreter {
        files.push((relative(Path::new(name)), file.clone(), 0o755));
    }
    let modules_root = PathBuf::from("lib/modules").join(&spec.release);
    let mut module_list = String::new();
    for module in &spec.modules {
        let inside = modules_root.join(&module.path);
        module_list.push_str(&format!("/{}\n", inside.display()));
        files.push((inside, spec.modules_dir.join(&module.path), 0o644));
    }
    if let Some(module) = &spec.notify_module {
        files.push((PathBuf::from(crate::contract::NOTIFY_MODULE), module.clone(), 0o644));
    }
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    for (inside, _, _) in &files {
        dirs.extend(inside.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf));
    }
    for dir in &dirs {
        cpio.dir(&dir.to_string_lossy(), 0o755)?;
    }
    for (inside, source, mode) in &files {
        let data = std::fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
        cpio.file(&inside.to_string_lossy(), *mode, &data)?;
    }
    cpio.file(MODULE_LIST, 0o644, module_list.as_bytes())?;
    cpio.finish()?.flush()?;
    Ok(())
}

fn relative(path: &Path) -> PathBuf {
    path.strip_prefix("/").unwrap_or(path).to_path_buf()
}

/// The cached base image for `spec` under `cache_dir`, built first if missing.
pub fn cached_base(cache_dir: &Path, spec: &BaseSpec) -> anyhow::Result<PathBuf> {
    let path = cache_dir.join(format!("initramfs-{}-{}.cpio", spec.release, spec.cache_key()?));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).with_context(|| format!("cannot create {}", cache_dir.display()))?;
    let mut bytes = Vec::with_capacity(32 << 20);
    write_base(spec, &mut bytes)?;
    write_atomic(&path, &bytes)?;
    remove_other_images(cache_dir, &path);
    Ok(path)
}

/// Old images of the same release are dead weight once a new one exists.
fn remove_other_images(cache_dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path != keep && name.starts_with("initramfs-") && name.ends_with(".cpio") {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes the boot image for one VM: the base followed by an archive of `extra` files.
pub fn write_boot_image(base: &Path, extra: &[(&str, &[u8])], out: &Path) -> anyhow::Result<()> {
    std::fs::copy(base, out)
        .with_context(|| format!("cannot copy {} to {}", base.display(), out.display()))?;
    // It carries the VM's environment (`[env]`): root's alone.
    std::fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let file = std::fs::OpenOptions::new().append(true).open(out)?;
    let mut cpio = CpioWriter::new(BufWriter::new(file));
    for (name, data) in extra {
        cpio.file(name, 0o644, data)?;
    }
    cpio.finish()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_and_libraries_of_this_binary() {
        let image = SelfImage::current().unwrap();
        let (name, file) = image.interpreter.clone().expect("test binaries are dynamic");
        assert!(name.contains("ld-linux"), "{name}");
        assert!(file.is_file());
        assert!(image.libraries.iter().any(|lib| lib.to_string_lossy().contains("libc.so")), "{image:?}");
    }

    fn fake_spec(dir: &Path) -> BaseSpec {
        let modules_dir = dir.join("modules");
        std::fs::create_dir_all(modules_dir.join("kernel/fs")).unwrap();
        std::fs::write(modules_dir.join("kernel/fs/fuse.ko"), b"fuse module").unwrap();
        BaseSpec {
            image: SelfImage::current().unwrap(),
            release: "6.1.0-test".into(),
            modules_dir,
            modules: vec![Module { name: "fuse".into(), path: "kernel/fs/fuse.ko".into() }],
            notify_module: None,
        }
    }

    #[test]
    fn base_image_is_reproducible_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let spec = fake_spec(dir.path());
        let (mut one, mut two) = (Vec::new(), Vec::new());
        write_base(&spec, &mut one).unwrap();
        write_base(&spec, &mut two).unwrap();
        assert_eq!(one, two);
        let text = String::from_utf8_lossy(&one);
        for name in ["init\0", "lib/modules/6.1.0-test/kernel/fs/fuse.ko\0", "mvm/modules\0", "TRAILER!!!"] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(text.contains("/lib/modules/6.1.0-test/kernel/fs/fuse.ko\n"));
        let cache = dir.path().join("cache");
        let path = cached_base(&cache, &spec).unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(cached_base(&cache, &spec).unwrap(), path);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), modified, "not rebuilt");
        std::fs::write(spec.modules_dir.join("kernel/fs/fuse.ko"), b"a new build").unwrap();
        let rebuilt = cached_base(&cache, &spec).unwrap();
        assert_ne!(rebuilt, path, "a changed module changes the key");
        assert!(!path.exists(), "the stale image is removed");
    }

    /// The file-event module rides along when there is one, and changes the key.
    #[test]
    fn the_file_event_module_is_carried_when_built() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = fake_spec(dir.path());
        let without = spec.cache_key().unwrap();
        let module = dir.path().join("mvm_notify-0.ko");
        std::fs::write(&module, b"notify module").unwrap();
        spec.notify_module = Some(module);
        assert_ne!(spec.cache_key().unwrap(), without);
        let mut image = Vec::new();
        write_base(&spec, &mut image).unwrap();
        let text = String::from_utf8_lossy(&image);
        assert!(text.contains("mvm/mvm_notify.ko\0") && text.contains("notify module"));
        // (Built from pieces: the test binary, carried as /init, holds its own literals.)
        let listed = format!("/{}\n", crate::contract::NOTIFY_MODULE);
        assert!(!text.contains(&listed), "not in the list of modules that must load");
    }

    #[test]
    fn boot_image_appends_the_per_vm_archive() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.cpio");
        let mut cpio = CpioWriter::new(Vec::new());
        cpio.file("init", 0o755, b"x").unwrap();
        std::fs::write(&base, cpio.finish().unwrap()).unwrap();
        let out = dir.path().join("boot.cpio");
        write_boot_image(&base, &[(crate::contract::GUEST_CONFIG, b"{}")], &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("TRAILER!!!").count(), 2);
        assert!(text.contains("mvm/guest.json"));
    }
}
