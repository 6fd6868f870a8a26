//! The ledger on disk: one JSON file, replaced atomically.
//!
//! A save writes `state.json.tmp`, flushes it to disk, renames it over
//! `state.json` and flushes the directory, so a crash at any point leaves
//! either the old file or the new one, never a torn one. A file that cannot
//! be read is moved aside (never deleted) and the daemon starts from an empty
//! ledger, rebuilt from logind and the policy.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::ledger::Ledger;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    ledger: Ledger,
}

/// The state directory and its file.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
}

/// What was found on disk at start.
#[derive(Debug)]
pub enum Loaded {
    /// No state yet (first start).
    Empty,
    Ledger(Ledger),
    /// The file was unreadable; it was moved to `moved_to`.
    Corrupt {
        reason: String,
        moved_to: PathBuf,
    },
}

/// An exclusive `flock` on the file at `path` (created, mode 0600, in a
/// directory created with mode 0700 if missing), held until the value is
/// dropped or the process ends. `Ok(None)`: another process holds it. Only
/// root can open the file, so no user can hold it to keep fairshared out.
pub fn lock_file(path: &Path) -> io::Result<Option<Flock<File>>> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io::Error::other(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

impl StateFile {
    /// Uses `dir`, creating it (mode 0700) if needed.
    pub fn open(dir: &Path) -> io::Result<StateFile> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create state directory {}: {e}", dir.display()),
                )
            })?;
        Ok(StateFile {
            dir: dir.to_path_buf(),
            path: dir.join("state.json"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> io::Result<Loaded> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Empty),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", self.path.display()),
                ));
            }
        };
        let reason = match serde_json::from_slice::<OnDisk>(&bytes) {
            Ok(d) if d.version == VERSION => return Ok(Loaded::Ledger(d.ledger)),
            Ok(d) => format!(
                "unknown state version {} (this fairshared writes {VERSION})",
                d.version
            ),
            Err(e) if bytes.is_empty() => format!("empty file ({e})"),
            Err(e) => e.to_string(),
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let moved_to = self.dir.join(format!("state.json.corrupt-{stamp}"));
        fs::rename(&self.path, &moved_to)?;
        Ok(Loaded::Corrupt { reason, moved_to })
    }

    /// Serialises a ledger for [`StateFile::save`] (done under the ledger
    /// lock; the write happens outside it).
    pub fn encode(ledger: &Ledger) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            version: u32,
            ledger: &'a Ledger,
        }
        let mut out = serde_json::to_vec(&Borrowed {
            version: VERSION,
            ledger,
        })
        .unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Replaces the state file atomically with `bytes`.
    pub fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join("state.json.tmp");
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", tmp.display()))
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ctx("creating", e))?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = written {
            // Leave the old state file alone; drop the partial one.
            let _ = fs::remove_file(&tmp);
            return Err(ctx("writing", e));
        }
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| {
            io::Error::new(e.kind(), format!("replacing {}: {e}", self.path.display()))
        })?;
        File::open(&self.dir).and_then(|d| d.sync_all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_has_one_holder_at_a_time() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("run/lock");
        let held = lock_file(&path).unwrap();
        assert!(held.is_some());
        assert!(lock_file(&path).unwrap().is_none(), "held elsewhere");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&t.path().join("run")), 0o700);
        drop(held);
        assert!(lock_file(&path).unwrap().is_some(), "free again");
    }

    #[test]
    fn save_and_load_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let s = StateFile::open(&t.path().join("sub")).unwrap();
        assert!(matches!(s.load().unwrap(), Loaded::Empty));
        let l = Ledger::new();
        s.save(&StateFile::encode(&l)).unwrap();
        assert!(matches!(s.load().unwrap(), Loaded::Ledger(x) if x == l));
        assert!(!t.path().join("sub/state.json.tmp").exists());
    }

    #[test]
    fn corrupt_files_are_moved_aside_not_deleted() {
        let t = tempfile::tempdir().unwrap();
        let s = StateFile::open(t.path()).unwrap();
        for junk in [
            &b"{\"version\":1,\"ledg"[..],
            b"",
            b"{\"version\":99,\"ledger\":{\"users\":{}}}",
            // a limit of zero: never written by fairshared (issue 11.3)
            br#"{"version":1,"ledger":{"users":{"1001":{"name":"a","limits":{"cpu":2,"mem":"0B","tasks":4096}}}}}"#,
            br#"{"version":1,"ledger":{"users":{"1001":{"name":"a","limits":{"cpu":2,"mem":"8G","tasks":4096},"grant":{"cpu":2,"mem":"8G","tasks":0,"by":1001,"at":1}}}}}"#,
        ] {
            fs::write(s.path(), junk).unwrap();
            match s.load().unwrap() {
                Loaded::Corrupt { moved_to, reason } => {
                    assert_eq!(fs::read(&moved_to).unwrap(), junk, "{reason}");
                    fs::remove_file(moved_to).unwrap();
                }
                other => panic!("expected corrupt, got {other:?}"),
            }
            assert!(matches!(s.load().unwrap(), Loaded::Empty));
        }
    }
}
