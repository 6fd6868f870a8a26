//! Where a process sits in systemd's tree, read from `/proc/PID/cgroup`:
//! in a logind session, elsewhere in a user's slice, or outside every user's
//! slice. The daemon uses it to decide whether a session process is its to
//! move and to confirm a session id; the PAM module to know whether its own
//! process will be moved.
//!
//! Only the first two levels below the root are trusted:
//! `/user.slice/user-UID.slice/session-ID.scope`. Only root (logind, systemd)
//! can make cgroups there; a user can name cgroups anything deeper down,
//! inside their own user manager's delegated subtree.

use std::path::Path;

/// Where a process is, as far as fairshare cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In logind's session `id` of user `uid` (`user-UID.slice/session-ID.scope`).
    Session { uid: u32, id: String },
    /// In `user-UID.slice`, outside any session: `user@UID.service`, or a
    /// scope fairshare adopted the process into.
    UserSlice { uid: u32 },
    /// Outside every user's slice (a system service such as cron, or the
    /// root cgroup): the path systemd tracks it under.
    Outside(String),
}

impl Placement {
    /// Whether the process is inside `user-UID.slice` (in a session or not).
    pub fn in_slice_of(&self, uid: u32) -> bool {
        match self {
            Placement::Session { uid: u, .. } | Placement::UserSlice { uid: u } => *u == uid,
            Placement::Outside(_) => false,
        }
    }

    /// Where a process is whose systemd-tracked cgroup is `path`.
    pub fn of_path(path: &str) -> Placement {
        let mut parts = path.split('/').filter(|c| !c.is_empty());
        if parts.next() == Some("user.slice")
            && let Some(uid) = parts.next().and_then(user_slice_uid)
        {
            return match parts.next().and_then(session_id) {
                Some(id) => Placement::Session {
                    uid,
                    id: id.to_string(),
                },
                None => Placement::UserSlice { uid },
            };
        }
        Placement::Outside(if path.is_empty() { "/" } else { path }.to_string())
    }

    /// Where the process whose `/proc/PID/cgroup` reads `proc_cgroup` is.
    /// `None` when no line names the hierarchy systemd tracks processes in.
    pub fn of_proc_cgroup(proc_cgroup: &str) -> Option<Placement> {
        tracked_path(proc_cgroup).map(Placement::of_path)
    }

    /// Where process `pid` is now; `None` when it is gone.
    pub fn of_pid(pid: u32) -> Option<Placement> {
        read_proc_cgroup(pid).and_then(|t| Placement::of_proc_cgroup(&t))
    }

    /// Where this process is.
    pub fn of_self() -> Option<Placement> {
        Placement::of_pid(std::process::id())
    }
}

/// The path systemd tracks a process under: the `name=systemd` line (v1 or
/// hybrid layout), else the unified `0::` line (pure v2).
pub fn tracked_path(proc_cgroup: &str) -> Option<&str> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        match ctrl {
            "name=systemd" => return Some(path),
            "" => unified = Some(path),
            _ => {}
        }
    }
    unified
}

/// `user-1001.slice` → 1001.
fn user_slice_uid(component: &str) -> Option<u32> {
    let n = component.strip_prefix("user-")?.strip_suffix(".slice")?;
    // digits only: `user-1001-x.slice` or `user-+1.slice` is no user slice
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// `session-c12.scope` → `c12`. logind's ids are letters and digits.
fn session_id(component: &str) -> Option<&str> {
    let id = component.strip_prefix("session-")?.strip_suffix(".scope")?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
}

fn read_proc_cgroup(pid: u32) -> Option<String> {
    std::fs::read_to_string(Path::new(&format!("/proc/{pid}/cgroup"))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(uid: u32, id: &str) -> Placement {
        Placement::Session { uid, id: id.into() }
    }

    #[test]
    fn layouts() {
        // pure v2
        let v2 = "0::/user.slice/user-1001.slice/session-3.scope\n";
        assert_eq!(Placement::of_proc_cgroup(v2), Some(session(1001, "3")));
        // hybrid: name=systemd wins over the unified line
        let hybrid = "12:pids:/user.slice/user-1001.slice/session-c7.scope\n\
                      1:name=systemd:/user.slice/user-1001.slice/session-c7.scope\n0::/\n";
        assert_eq!(Placement::of_proc_cgroup(hybrid), Some(session(1001, "c7")));
        let cron = "12:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n\
                    0::/system.slice/cron.service\n";
        assert_eq!(
            Placement::of_proc_cgroup(cron),
            Some(Placement::Outside("/system.slice/cron.service".into()))
        );
        assert_eq!(Placement::of_proc_cgroup("12:pids:/\n"), None);
        assert_eq!(
            Placement::of_proc_cgroup("0::/\n"),
            Some(Placement::Outside("/".into()))
        );
    }

    #[test]
    fn only_the_top_two_levels_count() {
        let user = |p: &str| Placement::of_path(p);
        assert_eq!(
            user("/user.slice/user-1001.slice/user@1001.service/app.slice/x.scope"),
            Placement::UserSlice { uid: 1001 }
        );
        assert_eq!(
            user("/user.slice/user-1001.slice/fairshare-session-1001-42.scope"),
            Placement::UserSlice { uid: 1001 }
        );
        assert_eq!(
            user("/user.slice/user-1001.slice"),
            Placement::UserSlice { uid: 1001 }
        );
        // cgroups a user made in their delegated subtree name no session
        assert_eq!(
            user("/user.slice/user-1001.slice/user@1001.service/session-9.scope"),
            Placement::UserSlice { uid: 1001 }
        );
        assert_eq!(
            user(
                "/user.slice/user-1001.slice/user@1001.service/user.slice/user-1002.slice/session-9.scope"
            ),
            Placement::UserSlice { uid: 1001 }
        );
        for outside in [
            "/system.slice/user.slice/user-1001.slice/session-1.scope",
            "/user.slice/user-10a1.slice/session-1.scope",
            "/user.slice/user-.slice/session-1.scope",
            "/user.slice/user-+1.slice",
            "/user.slice",
            "/init.scope",
        ] {
            assert!(
                matches!(user(outside), Placement::Outside(p) if p == outside),
                "{outside}"
            );
        }
        assert_eq!(
            user("/user.slice/user-1001.slice/session-.scope"),
            Placement::UserSlice { uid: 1001 }
        );
        assert_eq!(
            user("/user.slice/user-1001.slice/session-1;x.scope"),
            Placement::UserSlice { uid: 1001 }
        );
    }

    #[test]
    fn in_slice_of() {
        assert!(session(1001, "3").in_slice_of(1001));
        assert!(!session(1001, "3").in_slice_of(1002));
        assert!(Placement::UserSlice { uid: 7 }.in_slice_of(7));
        assert!(!Placement::Outside("/".into()).in_slice_of(0));
        // this test's own process is somewhere
        assert!(Placement::of_self().is_some());
        assert_eq!(Placement::of_pid(u32::MAX), None);
    }
}
