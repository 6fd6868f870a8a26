//! Reading the small files of the kernel's pseudo file systems (cgroup,
//! /proc), shared by [`crate::cgroup`] and [`crate::proc`].

use std::path::Path;

/// Reads a small kernel file. These report a size of 0, so
/// `fs::read_to_string` would stat the file and then read it in growing
/// steps from 32 bytes: a dozen syscalls where two reads into a page do.
pub fn read(p: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

/// A file holding one number.
pub fn read_u64(p: &Path) -> Option<u64> {
    read(p)?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` per line).
pub fn key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kernel_files_of_any_size() {
        let t = tempfile::tempdir().unwrap();
        let long: String = (0..3000).map(|i| format!("{i}\n")).collect();
        assert!(long.len() > 3 * 4096);
        std::fs::write(t.path().join("long"), &long).unwrap();
        std::fs::write(t.path().join("short"), "42\n").unwrap();
        assert_eq!(read(&t.path().join("long")).as_deref(), Some(long.as_str()));
        assert_eq!(read_u64(&t.path().join("short")), Some(42));
        assert_eq!(read(&t.path().join("missing")), None);
        // a real /proc file, whose size reads as 0
        let own = read(Path::new("/proc/self/stat")).unwrap();
        assert!(
            own.starts_with(&format!("{} (", std::process::id())),
            "{own}"
        );
        assert_eq!(key("a 1\nnr_throttled 3\n", "nr_throttled"), Some(3));
        assert_eq!(key("a 1\n", "b"), None);
    }
}
