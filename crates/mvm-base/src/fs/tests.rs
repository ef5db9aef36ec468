//! Planted symlinks, FIFOs and races against [`Tree`]: each test fails if the tree
//! follows a path out of itself.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::*;

/// A tree with a file inside and a decoy "host" directory outside it.
fn setup() -> (tempfile::TempDir, Tree) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tree/log")).unwrap();
    std::fs::write(dir.path().join("tree/log/app.log"), "guest line\n").unwrap();
    std::fs::create_dir_all(dir.path().join("host")).unwrap();
    std::fs::write(dir.path().join("host/secret"), "HOST SECRET").unwrap();
    std::fs::set_permissions(dir.path().join("host"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tree = Tree::open(&dir.path().join("tree")).unwrap();
    (dir, tree)
}

fn host_mode(dir: &tempfile::TempDir) -> u32 {
    std::fs::metadata(dir.path().join("host")).unwrap().permissions().mode() & 0o7777
}

#[test]
fn reads_regular_files_beneath() {
    let (_dir, tree) = setup();
    assert_eq!(tree.read(Path::new("log/app.log"), 100).unwrap(), b"guest line\n");
    let error = tree.read(Path::new("log/app.log"), 4).unwrap_err();
    assert!(error.to_string().contains("larger than 4 bytes"), "{error}");
}

#[test]
fn never_follows_a_planted_symlink() {
    let (dir, tree) = setup();
    let secret = dir.path().join("host/secret");
    symlink(&secret, dir.path().join("tree/log/link.log")).unwrap();
    symlink("../../host/secret", dir.path().join("tree/log/relative.log")).unwrap();
    symlink(dir.path().join("host"), dir.path().join("tree/hostdir")).unwrap();
    for planted in ["log/link.log", "log/relative.log", "hostdir/secret"] {
        assert!(tree.read(Path::new(planted), 100).is_err(), "{planted} was followed");
        assert!(tree.open_file(Path::new(planted)).is_err(), "{planted} was opened");
    }
    assert_eq!(Kind::of(&tree.metadata(Path::new("log/link.log")).unwrap().unwrap()), Kind::Symlink);
    assert!(tree.metadata(Path::new("hostdir/secret")).unwrap().is_none());
    assert_eq!(tree.read_link(Path::new("log/link.log")).unwrap(), secret);
    for escape in ["../host/secret", "/etc/passwd"] {
        assert!(tree.read(Path::new(escape), 100).is_err(), "{escape}");
    }
}

#[test]
fn a_fifo_or_device_is_refused_without_blocking() {
    let (dir, tree) = setup();
    nix::unistd::mkfifo(&dir.path().join("tree/log/fifo.log"), Mode::from_bits_truncate(0o644)).unwrap();
    let error = tree.read(Path::new("log/fifo.log"), 100).unwrap_err();
    assert!(error.to_string().contains("FIFO"), "{error}");
    assert_eq!(Kind::of(&tree.metadata(Path::new("log/fifo.log")).unwrap().unwrap()), Kind::Special);
}

#[test]
fn lists_entries_with_their_own_types() {
    let (dir, tree) = setup();
    symlink(dir.path().join("host"), dir.path().join("tree/log/b-link")).unwrap();
    let entries = tree.entries(Path::new("log")).unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["app.log", "b-link"]);
    assert_eq!(Kind::of(&entries[1].meta), Kind::Symlink);
    assert!(tree.entries(Path::new("log/b-link")).is_err(), "listed through a symlink");
}

#[test]
fn creates_and_writes_only_beneath() {
    let (dir, tree) = setup();
    symlink(dir.path().join("host"), dir.path().join("tree/tmp")).unwrap();
    assert!(tree.create_dir_all(Path::new("tmp"), 0o1777, None).is_err());
    assert!(tree.create_dir_all(Path::new("tmp/x"), 0o1777, None).is_err());
    assert_eq!(host_mode(&dir), 0o755, "the host directory's mode changed");
    let source = |bytes: &[u8]| {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file
    };
    assert!(tree.write_file(Path::new("tmp/secret"), &source(b"pwned"), 0o644, None).is_err());
    assert_eq!(std::fs::read(dir.path().join("host/secret")).unwrap(), b"HOST SECRET");

    tree.create_dir_all(Path::new("a/b"), 0o1777, None).unwrap();
    let mode = std::fs::metadata(dir.path().join("tree/a/b")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o1777);
    // A symlink at the file's own name is replaced, not written through.
    symlink(dir.path().join("host/secret"), dir.path().join("tree/a/b/f")).unwrap();
    tree.write_file(Path::new("a/b/f"), &source(b"new"), 0o640, None).unwrap();
    assert_eq!(std::fs::read(dir.path().join("tree/a/b/f")).unwrap(), b"new");
    assert_eq!(std::fs::read(dir.path().join("host/secret")).unwrap(), b"HOST SECRET");
    let meta = std::fs::symlink_metadata(dir.path().join("tree/a/b/f")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
}

/// A guest's huge sparse file is copied as holes, at once.
#[test]
fn a_sparse_file_is_copied_sparse() {
    let (dir, tree) = setup();
    let sparse = File::create(dir.path().join("sparse")).unwrap();
    sparse.set_len(1 << 40).unwrap();
    std::io::Write::write_all(&mut &sparse, b"head").unwrap();
    let started = std::time::Instant::now();
    tree.write_file(Path::new("copy"), &File::open(dir.path().join("sparse")).unwrap(), 0o644, None).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "the holes were copied as zeros");
    let copy = std::fs::metadata(dir.path().join("tree/copy")).unwrap();
    assert_eq!(copy.len(), 1 << 40);
    use std::os::unix::fs::MetadataExt;
    assert!(copy.blocks() < 1024, "{} blocks", copy.blocks());
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut File::open(dir.path().join("tree/copy")).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"head");
}

#[test]
fn removes_a_symlink_not_what_it_points_at() {
    let (dir, tree) = setup();
    symlink(dir.path().join("host"), dir.path().join("tree/log/dir-link")).unwrap();
    tree.remove(Path::new("log")).unwrap();
    assert!(!dir.path().join("tree/log").exists());
    assert_eq!(std::fs::read(dir.path().join("host/secret")).unwrap(), b"HOST SECRET");
    tree.remove(Path::new("log")).unwrap();
}

/// A guest can nest directories past PATH_MAX and past the open-file limit; removing
/// them still works, one level open at a time.
#[test]
fn removes_a_tree_deeper_than_any_path() {
    let (dir, tree) = setup();
    let root = dir.path().join("tree/deep");
    std::fs::create_dir(&root).unwrap();
    let mut current = File::open(&root).unwrap();
    for _ in 0..3000 {
        nix::sys::stat::mkdirat(current.as_fd(), "d", Mode::from_bits_truncate(0o755)).unwrap();
        std::fs::write(format!("/proc/self/fd/{}/f", current.as_raw_fd()), "x").unwrap();
        let next = openat(current.as_fd(), "d", OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        current = File::from(next);
    }
    drop(current);
    tree.remove(Path::new("deep")).unwrap();
    assert!(!root.exists());
}

#[test]
fn the_fallback_walk_refuses_symlinks_too() {
    let (dir, tree) = setup();
    symlink(dir.path().join("host"), dir.path().join("tree/hostdir")).unwrap();
    let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    assert!(walk_beneath(tree.fd.as_fd(), Path::new("log/app.log"), flags, Mode::empty()).is_ok());
    assert!(walk_beneath(tree.fd.as_fd(), Path::new("hostdir/secret"), flags, Mode::empty()).is_err());
}

#[test]
fn tails_are_capped() {
    let (dir, _tree) = setup();
    let path = dir.path().join("big.log");
    std::fs::write(&path, "x".repeat(1000) + "end").unwrap();
    let tail = read_tail(&mut File::open(&path).unwrap(), 10).unwrap();
    assert_eq!(tail, b"xxxxxxxend");
}

/// A guest swapping a directory for a symlink while mvm reads beneath it: mvm reads the
/// guest's file or fails, and never reads the host's.
#[test]
fn a_racing_swap_never_leaks_the_host_file() {
    let (dir, tree) = setup();
    std::fs::write(dir.path().join("tree/log/secret"), "guest").unwrap();
    let root = dir.path().join("tree");
    let host = dir.path().join("host");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::rename(root.join("log"), root.join("real"));
                let _ = symlink(&host, root.join("log"));
                let _ = std::fs::remove_file(root.join("log"));
                let _ = std::fs::rename(root.join("real"), root.join("log"));
            }
        })
    };
    for _ in 0..2000 {
        if let Ok(bytes) = tree.read(Path::new("log/secret"), 100) {
            assert_eq!(bytes, b"guest");
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
}
