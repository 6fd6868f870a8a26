//! Who a uid is: name and groups, from NSS (files, LDAP, sssd, …).
//!
//! These calls may block (a directory server can be slow), so the daemon runs
//! them on the blocking pool.

use std::ffi::CString;

use fairshare_policy::Identity;
use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

/// NSS could not answer (as opposed to: there is no such user).
#[derive(Debug, thiserror::Error)]
#[error("looking up {what}: {source}")]
pub struct LookupError {
    /// `uid 1001`, `user alice`
    pub what: String,
    pub source: nix::Error,
}

fn by_uid_entry(uid: u32) -> Result<Option<User>, LookupError> {
    User::from_uid(Uid::from_raw(uid)).map_err(|source| LookupError {
        what: format!("uid {uid}"),
        source,
    })
}

/// Looks a user up by uid. `Ok(None)` when the uid has no passwd entry.
pub fn by_uid(uid: u32) -> Result<Option<Identity>, LookupError> {
    Ok(by_uid_entry(uid)?.map(identity))
}

/// Looks a user up by uid without their groups (`groups` empty): for
/// policies without group rules. Saves the group list, which with nss-systemd
/// is a varlink call into PID 1.
pub fn by_uid_without_groups(uid: u32) -> Result<Option<Identity>, LookupError> {
    Ok(by_uid_entry(uid)?.map(|u| Identity {
        uid: u.uid.as_raw(),
        name: u.name,
        groups: Vec::new(),
    }))
}

/// Looks a user up by login name.
pub fn by_name(name: &str) -> Result<Option<Identity>, LookupError> {
    let user = User::from_name(name).map_err(|source| LookupError {
        what: format!("user {name}"),
        source,
    })?;
    Ok(user.map(identity))
}

/// Whether a group of this name exists.
pub fn group_exists(name: &str) -> bool {
    matches!(Group::from_name(name), Ok(Some(_)))
}

/// A group's members: its member list (NSS), and the local accounts
/// (`/etc/passwd`) whose primary group it is.
pub fn group_members(name: &str) -> Vec<String> {
    let Ok(Some(g)) = Group::from_name(name) else {
        return Vec::new();
    };
    let mut out = g.mem.clone();
    let gid = g.gid.as_raw();
    out.extend(
        local_accounts()
            .into_iter()
            .filter(|a| a.2 == gid)
            .map(|a| a.0),
    );
    out.sort();
    out.dedup();
    out
}

/// The uids of the local accounts below `below`.
pub fn local_uids_below(below: u32) -> Vec<u32> {
    local_accounts()
        .into_iter()
        .filter(|a| a.1 < below)
        .map(|a| a.1)
        .collect()
}

/// `(name, uid, gid)` of every account in `/etc/passwd`.
fn local_accounts() -> Vec<(String, u32, u32)> {
    let Ok(text) = std::fs::read_to_string("/etc/passwd") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_string();
            let _pw = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((name, uid, gid))
        })
        .collect()
}

fn identity(user: User) -> Identity {
    let mut gids = CString::new(user.name.as_bytes())
        .ok()
        .and_then(|n| getgrouplist(&n, user.gid).ok())
        .unwrap_or_default();
    if !gids.contains(&user.gid) {
        gids.push(user.gid);
    }
    let groups = gids
        .into_iter()
        .filter_map(|g: Gid| Group::from_gid(g).ok().flatten().map(|g| g.name))
        .collect();
    Identity {
        uid: user.uid.as_raw(),
        name: user.name,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_its_group() {
        let root = by_uid(0).unwrap().unwrap();
        assert_eq!(root.name, "root");
        assert!(root.groups.iter().any(|g| g == "root"), "{:?}", root.groups);
        assert_eq!(by_name("root").unwrap().unwrap().uid, 0);
        let bare = by_uid_without_groups(0).unwrap().unwrap();
        assert_eq!((bare.uid, bare.name.as_str()), (0, "root"));
        assert!(bare.groups.is_empty());
    }

    #[test]
    fn unknown_users_are_none() {
        assert_eq!(by_uid(3_999_999_999).unwrap(), None);
        assert_eq!(by_name("no-such-user-fairshare").unwrap(), None);
        assert!(!group_exists("no-such-group-fairshare"));
        assert!(group_exists("root"));
    }
}
