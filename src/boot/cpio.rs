//! A writer for the `newc` cpio format the kernel unpacks as its initramfs.
//!
//! Each entry is a 110-byte ASCII header (magic `070701` and thirteen 8-digit hex fields),
//! the NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes; a
//! `TRAILER!!!` entry ends the archive. Entries carry mtime 0 and owner root, and inode
//! numbers count up, so the same input gives the same bytes.

use std::io::{self, Write};

/// Builds an archive into any writer.
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer that appends to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter { out, next_inode: 1, written: 0 }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.entry(name, 0o040000 | (mode & 0o7777), 2, &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, 0o100000 | (mode & 0o7777), 1, data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, 0o120777, 1, target.as_bytes())
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_inode = 0;
        self.entry("TRAILER!!!", 0, 1, &[])?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let size =
            u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name} is over 4 GiB")))?;
        let inode = self.next_inode;
        self.next_inode += 1;
        let header = format!(
            "070701{inode:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{check:08x}",
            0,
            0,
            0,
            0,
            uid = 0,
            gid = 0,
            mtime = 0,
            namesize = name.len() + 1,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - self.written % 4) % 4;
        self.write(&[0u8; 3][..padding as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exact_newc_bytes() {
        let mut cpio = CpioWriter::new(Vec::new());
        cpio.file("/init", 0o755, b"hi").unwrap();
        let bytes = cpio.finish().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let expected_header = "07070100000001000081ed0000000000000000000000010000000000000002000000000000000000000000000000000000000500000000";
        assert!(text.starts_with(expected_header), "{text}");
        // 110-byte header + "init\0" = 115, padded to 116; data 2 padded to 4.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..120], b"hi\0\0");
        assert_eq!(&bytes[120..126], b"070701");
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        let build = || {
            let mut cpio = CpioWriter::new(Vec::new());
            cpio.dir("etc", 0o755).unwrap();
            cpio.symlink("bin", "usr/bin").unwrap();
            cpio.file("etc/hostname", 0o644, b"web\n").unwrap();
            cpio.finish().unwrap()
        };
        assert_eq!(build(), build());
    }
}
