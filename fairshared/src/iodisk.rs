//! The disks behind the policy's IO limits (issue 15): each target (`/home`,
//! `/dev/sdb`) resolved once to its whole disk through `/sys/dev/block`
//! ([`fairshare_policy::blockdev`]) and kept until the policy is reloaded,
//! so that a login does not look at the file systems again.
//!
//! The targets are root's (the policy's); a target that resolves to no disk
//! (tmpfs, network file systems) gets no limit, and `fairshared --check`
//! says so.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use fairshare_policy::blockdev::{Disk, resolve};
use fairshare_policy::{FairShare, IoDevices, IoTarget, io_devices};

static DISKS: Mutex<BTreeMap<IoTarget, Option<Disk>>> = Mutex::new(BTreeMap::new());

/// Disks the unit tests make up (a reload does not forget them).
#[cfg(test)]
static PRETEND: Mutex<BTreeMap<String, Disk>> = Mutex::new(BTreeMap::new());

/// In unit tests: `target` is on the disk `name` (`major:minor`).
#[cfg(test)]
pub fn pretend(target: &str, major: u32, minor: u32, name: &str) {
    PRETEND
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            target.to_string(),
            Disk {
                major,
                minor,
                name: name.to_string(),
            },
        );
}

/// The disk of `target`, looked up the first time it is asked for.
fn disk(target: &IoTarget) -> Option<Disk> {
    #[cfg(test)]
    if let Some(d) = PRETEND
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&target.to_string())
    {
        return Some(d.clone());
    }
    let mut m = DISKS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(d) = m.get(target) {
        return d.clone();
    }
    let d = match resolve(target, Path::new("/sys/dev/block")) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(target = %target, "IO limits for {target} are not applied: {e}");
            None
        }
    };
    m.insert(target.clone(), d.clone());
    d
}

/// Forgets the disks looked up (a reload looks again: a file system may
/// have been mounted meanwhile).
pub fn forget() {
    DISKS.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// The IO limits of `fair` per disk, as systemd takes them.
pub fn io_of(fair: &FairShare) -> IoDevices {
    if fair.io.is_empty() {
        return IoDevices::default();
    }
    io_devices(&fair.io, disk)
}
