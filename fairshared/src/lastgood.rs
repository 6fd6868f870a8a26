//! The last policy that loaded, kept beside the state (issue 17 item 2):
//! when the policy on disk is broken at start, fairshared serves with this
//! one (and says so loudly) rather than leaving logins without a daemon.
//!
//! It is a directory, `/var/lib/fairshare/policy.last-good/`, holding a copy
//! of every file of the policy, in merge order (`00-NAME.yaml`, …), replaced
//! as a whole after every start and reload with a good policy.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fairshare_policy::{Policy, PolicyErrors};

/// The directory under the state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("policy.last-good")
}

/// Keeps a copy of `policy`'s files (read again from where it was loaded)
/// under `state_dir`, replacing the last one.
pub fn save(state_dir: &Path, policy: &Policy) -> io::Result<()> {
    let target = dir(state_dir);
    // the same files kept already (a restart): nothing to write or sync
    if same_as_kept(&target, policy) {
        return Ok(());
    }
    let fresh = state_dir.join(".policy.last-good.new");
    let old = state_dir.join(".policy.last-good.old");
    let _ = fs::remove_dir_all(&fresh);
    fs::create_dir_all(&fresh)?;
    for (i, f) in policy.files().iter().enumerate() {
        let text = fs::read(f)?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(fresh.join(kept_name(i, f)))?;
        out.write_all(&text)?;
        out.sync_all()?;
    }
    fs::File::open(&fresh)?.sync_all()?;
    let _ = fs::remove_dir_all(&old);
    if target.exists() {
        fs::rename(&target, &old)?;
    }
    fs::rename(&fresh, &target)?;
    fs::File::open(state_dir)?.sync_all()?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// The last good policy, if one was kept.
pub fn load(state_dir: &Path) -> Option<Result<Policy, PolicyErrors>> {
    let d = dir(state_dir);
    d.is_dir().then(|| Policy::load(&d))
}

/// Whether `kept` holds exactly the policy's files, in order, as `save`
/// names them.
fn same_as_kept(kept: &Path, policy: &Policy) -> bool {
    let Ok(entries) = fs::read_dir(kept) else {
        return false;
    };
    let mut names: Vec<std::ffi::OsString> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort();
    let files = policy.files();
    names.len() == files.len()
        && files.iter().zip(&names).enumerate().all(|(i, (f, name))| {
            *name == *kept_name(i, f)
                && matches!((fs::read(f), fs::read(kept.join(name))), (Ok(a), Ok(b)) if a == b)
        })
}

/// The name the `i`th policy file `f` is kept under (`00-site.yaml`): its
/// order first, so the kept files load in the policy's order.
fn kept_name(i: usize, f: &Path) -> String {
    let base = f
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into());
    let base = base.strip_suffix(".yaml").unwrap_or(&base);
    format!("{i:02}-{base}.yaml")
}

/// When the last good policy was kept (for messages).
pub fn saved_at(state_dir: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(dir(state_dir)).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_policy_loads_as_the_original_did() {
        let src = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        fs::write(
            src.path().join("00-a.yaml"),
            "defaults: {cpu: 2, mem: 4G}\n",
        )
        .unwrap();
        fs::write(src.path().join("10-b.yaml"), "defaults: {cpu: 3}\n").unwrap();
        let p = Policy::load(src.path()).unwrap();
        save(state.path(), &p).unwrap();
        let back = load(state.path()).unwrap().unwrap();
        assert_eq!(back.plain_default(), p.plain_default());
        // replaced as a whole
        fs::remove_file(src.path().join("10-b.yaml")).unwrap();
        let p2 = Policy::load(src.path()).unwrap();
        save(state.path(), &p2).unwrap();
        assert_eq!(
            load(state.path()).unwrap().unwrap().plain_default(),
            p2.plain_default()
        );
        assert_eq!(fs::read_dir(dir(state.path())).unwrap().count(), 1);
    }

    #[test]
    fn a_restart_on_the_same_policy_writes_nothing() {
        use std::os::unix::fs::MetadataExt;
        let src = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        fs::write(
            src.path().join("00-a.yaml"),
            "defaults: {cpu: 2, mem: 4G}\n",
        )
        .unwrap();
        let p = Policy::load(src.path()).unwrap();
        save(state.path(), &p).unwrap();
        let ino = || fs::metadata(dir(state.path())).unwrap().ino();
        let first = ino();
        save(state.path(), &p).unwrap();
        assert_eq!(ino(), first, "the same files: kept as they are");
        // a changed file is kept anew
        fs::write(
            src.path().join("00-a.yaml"),
            "defaults: {cpu: 3, mem: 4G}\n",
        )
        .unwrap();
        let p = Policy::load(src.path()).unwrap();
        save(state.path(), &p).unwrap();
        assert_ne!(ino(), first);
        assert_eq!(
            fs::read_to_string(dir(state.path()).join("00-00-a.yaml")).unwrap(),
            "defaults: {cpu: 3, mem: 4G}\n"
        );
    }
}
