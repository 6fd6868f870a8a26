//! The ledger on disk: one file, `state.bin`, replaced atomically.
//!
//! A save writes `state.bin.tmp`, flushes it to disk, renames it over
//! `state.bin` and flushes the directory, so a crash at any point leaves
//! either the old file or the new one, never a torn one. A file that cannot
//! be read is moved aside (never deleted) and the daemon starts from an empty
//! ledger, rebuilt from logind and the policy. The layout is in [`disk`].
//!
//! Before it, fairshared kept the ledger as JSON in `state.json`. Every save
//! of this version moves such a file away (`state.json.migrated-TIME`), so
//! one that is there was saved by an older version since (an upgrade, or a
//! downgrade and this upgrade again): it is the current state, and is read
//! instead of `state.bin` (which is read if the JSON file is unreadable).

mod disk;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;

use crate::ledger::Ledger;

/// The version of the JSON file older fairshared wrote.
const JSON_VERSION: u32 = 1;

#[derive(Deserialize)]
struct JsonOnDisk {
    version: u32,
    ledger: Ledger,
}

/// The state directory and its file.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
    /// The JSON file of older versions.
    json: PathBuf,
    /// One save at a time (a save given up on at shutdown may still be
    /// writing when the final one starts): they share the temporary file.
    saving: std::sync::Arc<std::sync::Mutex<()>>,
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
            path: dir.join("state.bin"),
            json: dir.join("state.json"),
            saving: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads an older fairshared's `state.json` if there is one (see the
    /// module's doc), else `state.bin`.
    pub fn load(&self) -> io::Result<Loaded> {
        let Some(bytes) = read(&self.json)? else {
            return self.load_bin();
        };
        let reason = match serde_json::from_slice::<JsonOnDisk>(&bytes) {
            Ok(d) if d.version == JSON_VERSION => {
                tracing::info!(
                    path = %self.json.display(),
                    "reading the state an earlier fairshared saved; the next save writes {} and moves it away",
                    self.path.display()
                );
                return Ok(Loaded::Ledger(d.ledger));
            }
            Ok(d) => format!(
                "unknown state version {} (this fairshared reads {JSON_VERSION})",
                d.version
            ),
            Err(e) if bytes.is_empty() => format!("empty file ({e})"),
            Err(e) => e.to_string(),
        };
        let aside = self.move_aside(&self.json, "state.json", reason)?;
        match self.load_bin()? {
            Loaded::Empty => Ok(aside),
            from_bin => {
                if let Loaded::Corrupt { reason, moved_to } = &aside {
                    tracing::error!(
                        moved_to = %moved_to.display(),
                        "an earlier version's state file is unreadable ({reason}); moved it aside as {}, reading {}",
                        moved_to.display(),
                        self.path.display()
                    );
                }
                Ok(from_bin)
            }
        }
    }

    fn load_bin(&self) -> io::Result<Loaded> {
        let Some(bytes) = read(&self.path)? else {
            return Ok(Loaded::Empty);
        };
        match disk::decode(&bytes) {
            Ok(l) => Ok(Loaded::Ledger(l)),
            Err(reason) => self.move_aside(&self.path, "state.bin", reason),
        }
    }

    fn move_aside(&self, path: &Path, name: &str, reason: String) -> io::Result<Loaded> {
        let moved_to = self.dir.join(format!("{name}.corrupt-{}", stamp()));
        fs::rename(path, &moved_to)?;
        Ok(Loaded::Corrupt { reason, moved_to })
    }

    /// Serialises a ledger for [`StateFile::save`] (done under the ledger
    /// lock; the write happens outside it).
    pub fn encode(ledger: &Ledger) -> io::Result<Vec<u8>> {
        disk::encode(ledger).map_err(|e| io::Error::other(format!("encoding the ledger: {e}")))
    }

    /// Replaces the state file atomically with `bytes`.
    pub fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let _one = self
            .saving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tmp = self.dir.join("state.bin.tmp");
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", tmp.display()))
        };
        // a new file: never one left behind, nor what a link there points to
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(ctx("removing", e)),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
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
        File::open(&self.dir).and_then(|d| d.sync_all())?;
        // An older version's file, now that this one holds what it held,
        // goes (kept under another name): left, the next start would read
        // it instead of this one.
        let kept = self.dir.join(format!("state.json.migrated-{}", stamp()));
        match fs::rename(&self.json, &kept) {
            Ok(()) => File::open(&self.dir).and_then(|d| d.sync_all()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => match fs::remove_file(&self.json) {
                Ok(()) => File::open(&self.dir).and_then(|d| d.sync_all()),
                Err(_) => Err(io::Error::new(
                    e.kind(),
                    format!(
                        "saved {}, but cannot move an earlier version's {} away ({e}); remove it, or the next start reads it instead",
                        self.path.display(),
                        self.json.display()
                    ),
                )),
            },
        }
    }
}

/// Seconds since the epoch, for the names of files moved aside.
fn stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A file's bytes; `None` if there is no such file.
fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading {}: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_proto::units::{Cpus, Tasks};

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

    /// A ledger with every field of every part set (and a user with
    /// nothing optional), as JSON, the way the older file held it.
    const FULL: &str = r#"{"users":{
        "1001":{"name":"ann","sessions":[
            {"pid":41,"service":"sshd","tty":"pts/3","rhost":"10.0.0.9","session_id":"c7","opened_at":1700000000,"start_time":123456},
            {"pid":42,"opened_at":1700000100}],
          "grant":{"cpu":2.5,"mem":"6G","tasks":900,"weight":300,"io_weight":50,"mem_low":"1G","swap":"0B","by":1001,"at":1700000001,"expires_at":1700003600,"since":1699999000},
          "admin":{"mem":"7G","by":0,"at":1700000002,"expires_at":null},
          "limits":{"cpu":2.5,"mem":"6G","mem_high":"5G","tasks":900,"weight":300,"io_weight":50,"mem_low":"1G","swap":"0B"},
          "applied":{"cpu":2,"mem":"8G","tasks":4096},
          "notice":"your resize ended at 10:00",
          "granted_mem_low":"512M",
          "logged_in_at":1699998000},
        "4000000000":{"name":"bo","limits":{"cpu":0.1,"mem":"64M","tasks":32}}}}"#;

    #[test]
    fn every_field_survives_a_save_and_a_load() {
        let t = tempfile::tempdir().unwrap();
        let s = StateFile::open(&t.path().join("sub")).unwrap();
        assert!(matches!(s.load().unwrap(), Loaded::Empty));
        let full: Ledger = serde_json::from_str(FULL).unwrap();
        assert_eq!(full.len(), 2);
        for l in [Ledger::new(), full] {
            s.save(&StateFile::encode(&l).unwrap()).unwrap();
            match s.load().unwrap() {
                Loaded::Ledger(x) => assert_eq!(x, l),
                other => panic!("expected the ledger, got {other:?}"),
            }
        }
        assert!(t.path().join("sub/state.bin").exists());
        assert!(!t.path().join("sub/state.bin.tmp").exists());
    }

    #[test]
    fn an_older_state_json_is_read_and_replaced_by_the_first_save() {
        let t = tempfile::tempdir().unwrap();
        let s = StateFile::open(t.path()).unwrap();
        let json = t.path().join("state.json");
        fs::write(&json, format!(r#"{{"version":1,"ledger":{FULL}}}"#)).unwrap();
        let full: Ledger = serde_json::from_str(FULL).unwrap();
        let Loaded::Ledger(l) = s.load().unwrap() else {
            panic!("state.json not read")
        };
        assert_eq!(l, full);
        assert!(json.exists(), "kept until the new file is written");
        s.save(&StateFile::encode(&l).unwrap()).unwrap();
        assert!(!json.exists());
        let kept = |t: &tempfile::TempDir| {
            fs::read_dir(t.path())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().starts_with("state.json.migrated-")
                })
                .count()
        };
        assert_eq!(kept(&t), 1, "kept aside");
        assert!(matches!(s.load().unwrap(), Loaded::Ledger(x) if x == full));
        // A state.json there again was saved by an older version since (a
        // downgrade, then this upgrade again), whatever the clocks say: it
        // is the current state.
        let empty = r#"{"version":1,"ledger":{"users":{}}}"#;
        fs::write(&json, empty).unwrap();
        assert!(matches!(s.load().unwrap(), Loaded::Ledger(x) if x.is_empty()));
        // An unreadable one is set aside, and state.bin read.
        fs::write(&json, "{\"version\":1,\"ledg").unwrap();
        assert!(matches!(s.load().unwrap(), Loaded::Ledger(x) if x == full));
        assert!(!json.exists());
        // a second migration keeps the first's file
        fs::write(&json, empty).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        s.save(&StateFile::encode(&l).unwrap()).unwrap();
        assert_eq!(kept(&t), 2);
    }

    #[test]
    fn two_saves_at_once_leave_one_whole_file() {
        let t = tempfile::tempdir().unwrap();
        let s = StateFile::open(t.path()).unwrap();
        let full: Ledger = serde_json::from_str(FULL).unwrap();
        let bytes = StateFile::encode(&full).unwrap();
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..20 {
                        s.save(&bytes).unwrap();
                    }
                });
            }
        });
        assert!(matches!(s.load().unwrap(), Loaded::Ledger(x) if x == full));
    }

    #[test]
    fn a_save_never_writes_through_a_link_at_its_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        let s = StateFile::open(&t.path().join("state")).unwrap();
        let target = t.path().join("elsewhere");
        fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, t.path().join("state/state.bin.tmp")).unwrap();
        let l = Ledger::new();
        s.save(&StateFile::encode(&l).unwrap()).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(matches!(s.load().unwrap(), Loaded::Ledger(x) if x == l));
    }

    #[test]
    fn quantities_a_request_could_not_give_are_refused_on_load() {
        let t = tempfile::tempdir().unwrap();
        let s = StateFile::open(t.path()).unwrap();
        let full: Ledger = serde_json::from_str(FULL).unwrap();
        let ann = full.get(1001).unwrap().clone();
        let mut bad = Vec::new();
        for cpu in [1, Cpus::MAX.millis() + 1, u64::MAX] {
            let mut e = ann.clone();
            e.limits.cpu = Cpus::from_millis(cpu);
            bad.push((vec![(1001, Box::new(e))], "CPUs outside"));
        }
        let mut e = ann.clone();
        e.limits.tasks = Tasks(u64::MAX);
        bad.push((vec![(1001, Box::new(e))], "tasks above"));
        let mut e = ann.clone();
        if let Some(g) = e.grant.as_mut() {
            g.tasks = Some(Tasks(Tasks::MAX.get() + 1));
        }
        bad.push((vec![(1001, Box::new(e))], "tasks above"));
        // two entries for one uid: the first written is not dropped silently
        bad.push((
            vec![(1001, Box::new(ann.clone())), (1001, Box::new(ann.clone()))],
            "out of order",
        ));
        for (users, why) in bad {
            // `from_saved` keeps one entry per uid: write the list as is
            let bytes = disk::encode_entries(&users).unwrap();
            fs::write(s.path(), &bytes).unwrap();
            match s.load().unwrap() {
                Loaded::Corrupt { reason, moved_to } => {
                    assert!(reason.contains(why), "{reason}");
                    fs::remove_file(moved_to).unwrap();
                }
                other => panic!("expected corrupt ({why}), got {other:?}"),
            }
        }
    }

    #[test]
    fn corrupt_files_are_moved_aside_not_deleted() {
        let t = tempfile::tempdir().unwrap();
        let s = StateFile::open(t.path()).unwrap();
        let full: Ledger = serde_json::from_str(FULL).unwrap();
        let good = StateFile::encode(&full).unwrap();
        let mut bad_bin: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "no FSLEDGER header"),
            (good[..good.len() - 3].to_vec(), "checksum"),
            (
                br#"{"version":1,"ledger":{"users":{}}}"#.to_vec(),
                "no FSLEDGER header",
            ),
        ];
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        bad_bin.push((flipped, "checksum"));
        let mut newer = good.clone();
        newer[8] = 2;
        bad_bin.push((newer, "unknown state version 2"));
        // a limit of zero: never written by fairshared (issue 11.3), with a
        // right checksum
        let zero: Ledger = serde_json::from_str(
            r#"{"users":{"1001":{"name":"a","limits":{"cpu":2,"mem":"8G","tasks":4096}}}}"#,
        )
        .unwrap();
        let mut zero = StateFile::encode(&zero).unwrap();
        // tasks 4096 is the varint 80 20; make it 0
        let i = zero.windows(2).rposition(|w| w == [0x80, 0x20]).unwrap();
        zero.splice(i..i + 2, [0u8]);
        let crc = crc32fast::hash(&zero[16..]).to_le_bytes();
        zero[12..16].copy_from_slice(&crc);
        bad_bin.push((zero, "a limit of 0"));
        for (junk, why) in &bad_bin {
            fs::write(s.path(), junk).unwrap();
            match s.load().unwrap() {
                Loaded::Corrupt { moved_to, reason } => {
                    assert!(reason.contains(why), "{reason}");
                    assert_eq!(&fs::read(&moved_to).unwrap(), junk, "{reason}");
                    assert!(moved_to.to_string_lossy().contains("state.bin.corrupt-"));
                    fs::remove_file(moved_to).unwrap();
                }
                other => panic!("expected corrupt ({why}), got {other:?}"),
            }
            assert!(matches!(s.load().unwrap(), Loaded::Empty));
        }
        let json = t.path().join("state.json");
        for junk in [
            &b"{\"version\":1,\"ledg"[..],
            b"",
            b"{\"version\":99,\"ledger\":{\"users\":{}}}",
            br#"{"version":1,"ledger":{"users":{"1001":{"name":"a","limits":{"cpu":2,"mem":"0B","tasks":4096}}}}}"#,
            br#"{"version":1,"ledger":{"users":{"1001":{"name":"a","limits":{"cpu":2,"mem":"8G","tasks":4096},"grant":{"cpu":2,"mem":"8G","tasks":0,"by":1001,"at":1}}}}}"#,
        ] {
            fs::write(&json, junk).unwrap();
            match s.load().unwrap() {
                Loaded::Corrupt { moved_to, reason } => {
                    assert_eq!(fs::read(&moved_to).unwrap(), junk, "{reason}");
                    assert!(moved_to.to_string_lossy().contains("state.json.corrupt-"));
                    fs::remove_file(moved_to).unwrap();
                }
                other => panic!("expected corrupt, got {other:?}"),
            }
            assert!(matches!(s.load().unwrap(), Loaded::Empty));
        }
    }
}
