//! `fairshare-ctl metrics --output FILE`: the exposition written for
//! node_exporter's textfile collector, safely, as root, into a directory that
//! may belong to another account.
//!
//! On Debian, `/var/lib/prometheus` belongs to the `prometheus` account, which
//! can therefore plant symlinks, hard links and files in it, or swap
//! `node-exporter/` for a symlink to `/etc`. Whoever controls those names must
//! not be able to make root write, truncate or replace anything else:
//!
//! * the directory is reached one component at a time from `/`
//!   ([`open_dir`]), never following a symlink that anyone but root could
//!   have put there (the directory holding it must be root's and writable by
//!   root only); every later step is relative to the directory's descriptor;
//! * the data goes into a new file with a random name, created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted name, symlink or not, is never
//!   opened; a new name is tried), owned by root with mode 0600 until
//!   written, then given its group and mode through the descriptor;
//! * `renameat` puts it in place: it replaces the *name*, whatever it was (a
//!   symlink, a hard link to another file, someone else's file), and never
//!   writes through it.
//!
//! [`host_wide`] keeps other users' usage out of the file unless the admin
//! asks for it (`--per-user`).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, UnlinkatFlags, fchown, fsync, unlinkat};

/// Symlinks followed on the way, at most (as the kernel's own limit).
const MAX_LINKS: usize = 40;
/// New names tried when a random name is taken.
const NAME_TRIES: usize = 16;

/// What went wrong, with the path it concerns; says what to do where it can.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub what: String,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for WriteError {}

fn err(path: &Path, what: impl Into<String>) -> WriteError {
    WriteError {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The file's group (root's when `None`) and mode; its owner is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAccess {
    pub gid: Option<Gid>,
    pub mode: u32,
}

/// May a symlink in the directory `dir` (as `fstat` sees it) be followed?
/// Only when nobody but root could have put it there.
fn trusted(dir: &nix::sys::stat::FileStat) -> bool {
    dir.st_uid == 0 && dir.st_mode & 0o022 == 0
}

fn open_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens the directory `path` (absolute) from `/`, one component at a time,
/// following a symlink only where root alone could have made it, creating
/// missing directories (root's, 0755) when `create` is set.
pub fn open_dir(path: &Path, create: bool) -> Result<OwnedFd, WriteError> {
    if !path.is_absolute() {
        return Err(err(path, "not an absolute path"));
    }
    let root = || {
        openat(nix::fcntl::AT_FDCWD, "/", open_flags(), Mode::empty())
            .map_err(|e| err(Path::new("/"), e.desc()))
    };
    let mut dir = root()?;
    // where we are, for messages
    let mut at = PathBuf::from("/");
    let mut todo: VecDeque<OsString> = components(path.as_os_str());
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        let here = at.join(&name);
        match openat(&dir, name.as_os_str(), open_flags(), Mode::empty()) {
            Ok(next) => {
                dir = next;
                at = normal(&here);
            }
            Err(Errno::ENOENT) if create => {
                match mkdirat(&dir, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => todo.push_front(name),
                    Err(e) => return Err(err(&here, format!("cannot create it: {}", why(e)))),
                }
            }
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                let st = fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| err(&here, e.desc()))?;
                if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFLNK {
                    return Err(err(&here, "not a directory"));
                }
                let parent = fstat(&dir).map_err(|e| err(&at, e.desc()))?;
                if !trusted(&parent) {
                    return Err(err(
                        &here,
                        format!(
                            "is a symlink in {}, which {}; refusing to follow it: \
                             name the real directory instead",
                            at.display(),
                            if parent.st_uid == 0 {
                                format!("others may write (mode {:o})", parent.st_mode & 0o7777)
                            } else {
                                format!("belongs to uid {}, not root", parent.st_uid)
                            }
                        ),
                    ));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(err(path, "too many levels of symbolic links"));
                }
                let target =
                    readlinkat(&dir, name.as_os_str()).map_err(|e| err(&here, e.desc()))?;
                if target.as_bytes().starts_with(b"/") {
                    dir = root()?;
                    at = PathBuf::from("/");
                }
                for c in components(&target).into_iter().rev() {
                    todo.push_front(c);
                }
            }
            Err(e) => return Err(err(&here, e.desc())),
        }
    }
    Ok(dir)
}

/// An error as people read it, with what to do when the file system is
/// read-only for this process (a sandboxed unit).
fn why(e: Errno) -> String {
    match e {
        Errno::EROFS => format!(
            "{} (for this process; under systemd the unit's ReadWritePaths= must include it, \
             and node_exporter's package creates /var/lib/prometheus)",
            e.desc()
        ),
        e => e.desc().to_string(),
    }
}

/// The names of a path, in order (`.` dropped, `..` kept: it is resolved by
/// the kernel from the directory reached so far, as in any path lookup).
fn components(p: &OsStr) -> VecDeque<OsString> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// `a/b/..` as `a` (for messages only).
fn normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// A name nobody can guess in advance, for the file being written.
fn temp_name(target: &OsStr, attempt: usize) -> OsString {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_usize(attempt);
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    // a leading dot and no `.prom` ending: node_exporter never reads it
    let mut n = OsString::from(".");
    n.push(target);
    n.push(format!(".{:016x}.tmp", h.finish()));
    n
}

/// Writes `contents` to the file `path` (absolute) as described in the
/// module's documentation: the old file, whatever it was, is replaced at once
/// and nothing is ever written through a name someone else controls.
pub fn write(path: &Path, contents: &[u8], access: FileAccess) -> Result<(), WriteError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(err(path, "not a file path"));
    };
    let dir = open_dir(parent, true)?;
    let mut created = None;
    for attempt in 0..NAME_TRIES {
        let tmp = temp_name(name, attempt);
        match openat(
            &dir,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => {
                created = Some((tmp, fd));
                break;
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => {
                return Err(err(
                    parent,
                    format!("cannot create a file in it: {}", why(e)),
                ));
            }
        }
    }
    let Some((tmp, fd)) = created else {
        return Err(err(
            parent,
            format!(
                "{NAME_TRIES} new random names were all taken; is someone filling this directory?"
            ),
        ));
    };
    let fill = || -> Result<(), String> {
        if access.gid.is_some() {
            fchown(fd.as_fd(), None, access.gid).map_err(|e| format!("chown: {}", e.desc()))?;
        }
        let mut f = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
        f.write_all(contents).map_err(|e| e.to_string())?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(access.mode))
            .map_err(|e| format!("chmod: {}", e.desc()))?;
        fsync(fd.as_fd()).map_err(|e| format!("fsync: {}", e.desc()))?;
        renameat(&dir, tmp.as_os_str(), &dir, name).map_err(|e| e.desc().to_string())
    };
    fill().map_err(|e| {
        let _ = unlinkat(&dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        err(path, e)
    })
}

/// The exposition without the series that carry a `uid` label (one user's
/// allocation, usage or sessions): what is left describes the host as a
/// whole. A family left without samples loses its `# HELP`/`# TYPE` lines.
pub fn host_wide(text: &str) -> String {
    struct Family<'a> {
        head: Vec<&'a str>,
        samples: Vec<&'a str>,
    }
    let mut families: Vec<Family<'_>> = Vec::new();
    let mut in_samples = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let head = line.starts_with('#');
        if families.is_empty() || head && in_samples {
            families.push(Family {
                head: Vec::new(),
                samples: Vec::new(),
            });
            in_samples = false;
        }
        let Some(f) = families.last_mut() else {
            continue;
        };
        if head {
            f.head.push(line);
        } else {
            in_samples = true;
            if !has_label(line, "uid") {
                f.samples.push(line);
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        for l in f.head.iter().chain(&f.samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Does the sample line `name{a="x",b="y"} value` carry the label `label`?
/// Reads the label values as the format escapes them (`\\`, `\"`, `\n`).
fn has_label(line: &str, label: &str) -> bool {
    let Some(open) = line.find('{') else {
        return false;
    };
    if line[..open].contains(' ') {
        return false;
    }
    let mut rest = &line[open + 1..];
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if rest.starts_with('}') || rest.is_empty() {
            return false;
        }
        let Some(eq) = rest.find('=') else {
            return false;
        };
        let name = rest[..eq].trim();
        let Some(after) = rest[eq + 1..].trim_start().strip_prefix('"') else {
            return false;
        };
        if name == label {
            return true;
        }
        // skip the quoted value
        let mut escaped = false;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return false;
        };
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    const EXPO: &str = "\
# HELP fairshare_allocation_cpus CPUs allocated to the user (CPU quota / 100%).
# TYPE fairshare_allocation_cpus gauge
fairshare_allocation_cpus{user=\"alice\",uid=\"1001\"} 2
fairshare_allocation_cpus{user=\"b\\\"o}b uid=\\\\\",uid=\"1002\"} 4
# HELP fairshare_capacity_cpus CPUs the host can hand out (after overcommit).
# TYPE fairshare_capacity_cpus gauge
fairshare_capacity_cpus 256
# HELP fairshare_requests_total Requests answered, by type.
# TYPE fairshare_requests_total counter
fairshare_requests_total{type=\"status\"} 3
fairshare_requests_total{type=\"uid\"} 1
";

    #[test]
    fn host_wide_drops_every_per_user_series_and_keeps_the_rest() {
        let out = host_wide(EXPO);
        assert!(!out.contains("alice") && !out.contains("1002"), "{out}");
        assert!(!out.contains("fairshare_allocation_cpus"), "{out}");
        assert!(
            out.contains("# TYPE fairshare_capacity_cpus gauge\nfairshare_capacity_cpus 256\n")
        );
        // a label *value* "uid" is not the label uid
        assert!(
            out.contains("fairshare_requests_total{type=\"uid\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("fairshare_requests_total{type=\"status\"} 3"),
            "{out}"
        );
        assert_eq!(host_wide(""), "");
    }

    #[test]
    fn labels_are_read_as_the_format_escapes_them() {
        assert!(has_label(r#"m{user="x",uid="1"} 1"#, "uid"));
        assert!(has_label(r#"m{ uid = "1" } 1"#, "uid"));
        assert!(!has_label(r#"m{user="uid=\"1\"",x="2"} 1"#, "uid"));
        assert!(!has_label(r#"m{user="a\\",x="uid"} 1"#, "uid"));
        assert!(!has_label("m 1", "uid"));
        assert!(!has_label(r#"m{user="unterminated} 1"#, "uid"));
    }

    fn access() -> FileAccess {
        FileAccess {
            gid: None,
            mode: 0o640,
        }
    }

    fn only_file(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_the_file_with_its_mode_and_leaves_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/fairshare.prom");
        write(&p, b"one\n", access()).unwrap();
        write(&p, b"two\n", access()).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(only_file(&d.path().join("sub")), ["fairshare.prom"]);
    }

    #[test]
    fn planted_symlinks_hard_links_and_files_are_replaced_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let p = out.join("fairshare.prom");
        // the name itself, and the fixed temporary name the old unit used
        symlink(&victim, &p).unwrap();
        symlink(&victim, out.join(".fairshare.prom.tmp")).unwrap();
        write(&p, b"metrics\n", access()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(
            !std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "metrics\n");
        // a hard link to the victim
        std::fs::remove_file(&p).unwrap();
        std::fs::hard_link(&victim, &p).unwrap();
        write(&p, b"metrics\n", access()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1);
        // a file someone else created, readable by all: replaced, with our mode
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "theirs").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&p, b"metrics\n", access()).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn a_taken_temporary_name_is_never_opened() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        // every name the writer could pick is a symlink: O_EXCL refuses each
        let dir = open_dir(d.path(), false).unwrap();
        let name = OsStr::new("x.prom");
        for attempt in 0..4 {
            let t = temp_name(name, attempt);
            let _ = symlink(&victim, d.path().join(&t));
            assert!(
                openat(
                    &dir,
                    t.as_os_str(),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                    Mode::from_bits_truncate(0o600)
                )
                .is_err()
            );
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        // and two names in a row differ
        assert_ne!(temp_name(name, 0), temp_name(name, 0));
    }

    #[test]
    fn a_directory_symlink_is_followed_only_when_root_alone_could_have_made_it() {
        // The test runs as root (CI) or not; the rule is about who owns and
        // may write the directory that holds the link.
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let untrusted = d.path().join("untrusted");
        std::fs::create_dir(&untrusted).unwrap();
        std::fs::set_permissions(&untrusted, std::fs::Permissions::from_mode(0o777)).unwrap();
        symlink(&real, untrusted.join("link")).unwrap();
        let e = write(&untrusted.join("link/f.prom"), b"x", access()).unwrap_err();
        assert!(e.to_string().contains("refusing to follow"), "{e}");
        assert!(only_file(&real).is_empty());

        let trusted_dir = d.path().join("trusted");
        std::fs::create_dir(&trusted_dir).unwrap();
        std::fs::set_permissions(&trusted_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("../real", trusted_dir.join("link")).unwrap();
        let r = write(&trusted_dir.join("link/f.prom"), b"x", access());
        if nix::unistd::geteuid().is_root() {
            r.unwrap();
            assert_eq!(only_file(&real), ["f.prom"]);
        } else {
            // not root: the directory is ours, not root's, so not trusted
            assert!(r.is_err());
        }
    }

    #[test]
    fn errors_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, "").unwrap();
        let e = write(&f.join("x.prom"), b"x", access()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(e.to_string().contains(&*f.to_string_lossy()), "{e}");
        assert!(write(Path::new("relative/x.prom"), b"x", access()).is_err());
    }
}
