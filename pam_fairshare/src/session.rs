//! What the module does at session open and close, in plain Rust.
//!
//! The FFI layer gathers the PAM items into a [`Login`], calls [`open`] or
//! [`close`], and turns the [`Outcome`] into a PAM return code, log lines and
//! (when refusing) a message for the user. Nothing here touches PAM, so all of
//! it is unit-tested against a fake daemon.

use fairshare_proto::placement::Placement;
use fairshare_proto::wire::{ErrorCode, Request, Response, SessionClose, SessionOpen};
use fairshare_proto::{Client, ClientError};
use std::path::Path;

use crate::config::{Config, Fail};

/// The PAM session, as the module sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Login {
    pub user: Option<String>,
    /// The process that opened the session (the PAM caller).
    pub pid: u32,
    pub service: Option<String>,
    pub tty: Option<String>,
    pub rhost: Option<String>,
    /// logind's session id, when pam_systemd ran first.
    pub session_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The session is known to fairshare (or fails open): PAM_SUCCESS.
    Success,
    /// Nothing for fairshare to do (root, system or unknown user): PAM_IGNORE.
    Ignore,
    /// Refuse the login (fail=closed only), telling the user this.
    Refuse(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub log: Vec<(Level, String)>,
    /// The login line fairshared sent, cleaned (shown only where
    /// [`fairshare_proto::login::show`] says so).
    pub login_line: Option<String>,
}

impl Outcome {
    fn new(verdict: Verdict, level: Level, msg: impl Into<String>) -> Outcome {
        Outcome {
            verdict,
            log: vec![(level, msg.into())],
            login_line: None,
        }
    }
}

/// Looks a user name up: `Ok(Some(uid))`, `Ok(None)` when there is no such user.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Result<Option<u32>, String>;

/// The system user database.
pub fn nss_lookup(name: &str) -> Result<Option<u32>, String> {
    nix::unistd::User::from_name(name)
        .map(|u| u.map(|u| u.uid.as_raw()))
        .map_err(|e| e.to_string())
}

/// Resolves the user, or says why this session is none of fairshare's business.
fn uid_of(cfg: &Config, login: &Login, lookup: Lookup<'_>) -> Result<(String, u32), Outcome> {
    let Some(user) = login.user.clone().filter(|u| !u.is_empty()) else {
        return Err(Outcome::new(
            Verdict::Ignore,
            Level::Warning,
            "no PAM user; nothing to do",
        ));
    };
    match lookup(&user) {
        Ok(Some(uid)) if uid == 0 || uid < cfg.skip_uid_below => Err(Outcome::new(
            Verdict::Ignore,
            Level::Debug,
            format!(
                "{user} (uid {uid}) is below skip_uid_below={}; not limited",
                cfg.skip_uid_below
            ),
        )),
        Ok(Some(uid)) => Ok((user, uid)),
        // Nothing fairshare could limit. Routine with fail=open; with
        // fail=closed the admin asked to hear of every login that goes
        // ahead without limits, so it is a warning.
        Ok(None) => Err(Outcome::new(
            Verdict::Ignore,
            match cfg.fail {
                Fail::Open => Level::Debug,
                Fail::Closed => Level::Warning,
            },
            format!(
                "{user} is not a user of this host (no such name in NSS); nothing to limit, the session goes ahead{}",
                match cfg.fail {
                    Fail::Open => "",
                    Fail::Closed => " (fail=closed does not refuse users the host does not know)",
                }
            ),
        )),
        Err(e) => Err(Outcome::new(
            Verdict::Ignore,
            Level::Warning,
            format!("cannot look up {user}: {e}; not limited"),
        )),
    }
}

/// Where this process is now (`/proc/self/cgroup`; a fake in tests).
pub type Whereabouts<'a> = &'a dyn Fn() -> Option<Placement>;

/// A success answer of fairshared, with its login line cleaned for a
/// terminal fairshare does not own.
fn success_with_line(s: fairshare_proto::wire::Success) -> Outcome {
    let mut o = Outcome::new(Verdict::Success, Level::Info, s.message);
    o.login_line = s
        .login_line
        .as_deref()
        .and_then(fairshare_proto::login::text);
    o
}

/// Session open: tell fairshared, follow `fail=` when it cannot be reached.
///
/// A process outside every user's slice (no logind session: cron, any
/// stack without pam_systemd) is moved into the user's slice by fairshared
/// before it answers, and whatever this process starts once the session is
/// open starts there. Such a session is given `adopt_timeout_ms`, and never
/// goes ahead outside the slice while fairshared might still move the
/// process later (without the children it started meanwhile): when the
/// answer is late or a failure and the process is not in the slice by then,
/// the session is refused, whatever `fail=` says. Only when fairshared is
/// not running at all (nothing will move the process) does `fail=open` let
/// it go ahead outside the slice.
pub fn open(
    cfg: &Config,
    login: &Login,
    lookup: Lookup<'_>,
    whereabouts: Whereabouts<'_>,
) -> Outcome {
    let (user, uid) = match uid_of(cfg, login, lookup) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let outside = match whereabouts() {
        Some(Placement::Outside(path)) => Some(path),
        _ => None,
    };
    let req = Request::SessionOpen(SessionOpen {
        uid,
        pid: login.pid,
        user: Some(user.clone()),
        service: login.service.clone(),
        tty: login.tty.clone(),
        rhost: login.rhost.clone(),
        session_id: login.session_id.clone(),
    });
    let timeout = match outside {
        Some(_) => cfg.adopt_timeout,
        None => cfg.timeout,
    };
    let client = Client::new(&cfg.socket, timeout);
    let answer = client.call(&req);
    let never_sent = matches!(
        answer,
        Err(ClientError::NotRunning { .. } | ClientError::Connect { .. })
    );
    let problem = match answer {
        // limited: a process that was outside must be in the slice now
        Ok(Response::Success(s)) if s.allocation.is_some() && outside.is_some() => {
            if in_slice(whereabouts, uid) {
                return success_with_line(s);
            }
            format!(
                "fairshared answered ({}) but this process is still outside user-{uid}.slice",
                s.message
            )
        }
        Ok(Response::Success(s)) => return success_with_line(s),
        Ok(Response::Error(e)) if e.code == ErrorCode::Exempt => {
            return Outcome::new(Verdict::Ignore, Level::Debug, e.error);
        }
        // This process found the user, fairshared did not: their name
        // services differ (typically LDAP or NIS that fairshared's sandbox
        // cannot reach). Never routine: the user gets only the host-wide
        // default, whatever the policy says for them.
        Ok(Response::Error(e)) if e.code == ErrorCode::UnknownUser => {
            return Outcome::new(
                Verdict::Ignore,
                Level::Warning,
                format!(
                    "fairshared does not know {user} (uid {uid}) although this login does ({}); \
                     {user} gets only the host-wide default limits, not their own policy. \
                     fairshared looks users up in its own sandbox: if they come from LDAP or NIS \
                     (nsswitch.conf), see `journalctl -u fairshared` at its start",
                    e.error
                ),
            );
        }
        Ok(Response::Error(e)) => format!("fairshared refused the session of {user}: {}", e.error),
        Ok(other) => format!("fairshared sent an unexpected answer: {other:?}"),
        Err(e) => describe(&e),
    };
    if let Some(path) = outside {
        // fairshared may have moved it meanwhile, if late
        if in_slice(whereabouts, uid) {
            return Outcome::new(
                Verdict::Success,
                Level::Warning,
                format!(
                    "{problem}; this process was moved from {path} into user-{uid}.slice all the same: the session of {user} goes ahead there"
                ),
            );
        }
        if !(never_sent && cfg.fail == Fail::Open) {
            return Outcome {
                verdict: Verdict::Refuse(
                    "Session refused: this host could not place it under your resource limits (fairshare). Please try again in a minute or contact the administrator.".into(),
                ),
                log: vec![(
                    Level::Error,
                    format!(
                        "{problem}; refusing the session of {user}: its process is in {path}, outside user-{uid}.slice, and nothing of {user}'s may run outside it (fairshared may still move it later, without what it started meanwhile)"
                    ),
                )],
                login_line: None,
            };
        }
        return Outcome::new(
            Verdict::Success,
            Level::Warning,
            format!(
                "{problem}; the session of {user} runs in {path}, outside user-{uid}.slice, WITHOUT fairshare limits (fail=open)"
            ),
        );
    }
    match cfg.fail {
        Fail::Open => Outcome::new(
            Verdict::Success,
            Level::Warning,
            format!(
                "{problem}; {user} logs in with {} (fail=open)",
                what_systemd_gives(Path::new(UNIT_DIR), uid)
            ),
        ),
        Fail::Closed => Outcome {
            verdict: Verdict::Refuse(
                "Login refused: this host could not apply your resource limits (fairshare). Please try again in a minute or contact the administrator.".into(),
            ),
            log: vec![(Level::Error, format!("{problem}; refusing the login of {user} (fail=closed)"))],
            login_line: None,
        },
    }
}

/// Whether this process is in `user-UID.slice` now.
fn in_slice(whereabouts: Whereabouts<'_>, uid: u32) -> bool {
    whereabouts().is_some_and(|p| p.in_slice_of(uid))
}

/// Session close: tell fairshared; never stands in the way of a logout.
pub fn close(cfg: &Config, login: &Login, lookup: Lookup<'_>) -> Outcome {
    let (user, uid) = match uid_of(cfg, login, lookup) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let req = Request::SessionClose(SessionClose {
        uid,
        pid: login.pid,
        session_id: login.session_id.clone(),
    });
    match Client::new(&cfg.socket, cfg.timeout).call(&req) {
        // a logout is no news (fairshared logs what it changed): `debug` only
        Ok(Response::Success(s)) => Outcome::new(Verdict::Success, Level::Debug, s.message),
        Ok(Response::Error(e)) => Outcome::new(
            Verdict::Success,
            Level::Warning,
            format!(
                "fairshared could not close the session of {user}: {}",
                e.error
            ),
        ),
        Ok(other) => Outcome::new(
            Verdict::Success,
            Level::Warning,
            format!("fairshared sent an unexpected answer: {other:?}"),
        ),
        Err(e) => Outcome::new(
            Verdict::Success,
            Level::Warning,
            format!(
                "{}; the session of {user} will be counted down when fairshared notices it ended",
                describe(&e)
            ),
        ),
    }
}

/// Where fairshared writes its drop-ins for user slices.
const UNIT_DIR: &str = "/etc/systemd/system";
/// Their name, and their first line.
const DROPIN: &str = "40-fairshare.conf";
const HEADER: &str = "# Written by fairshared";

/// What a login gets from systemd alone when fairshared cannot be asked:
/// the user's own drop-in (their default, or exempt), else the policy
/// default for every user slice, else nothing of fairshare's.
fn what_systemd_gives(unit_dir: &Path, uid: u32) -> String {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .filter(|t| t.starts_with(HEADER) && t.len() < 64 * 1024)
    };
    let settings = |t: &str| {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with('[') && l.contains('='))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let own = unit_dir.join(format!("user-{uid}.slice.d")).join(DROPIN);
    if let Some(t) = read(&own) {
        let s = settings(&t);
        return match s.is_empty() {
            true => format!(
                "systemd's own defaults, no fairshare limit (exempt, {})",
                own.display()
            ),
            false => format!(
                "their own default from systemd's drop-in ({s}; {})",
                own.display()
            ),
        };
    }
    let global = unit_dir.join("user-.slice.d").join(DROPIN);
    match read(&global) {
        Some(t) => format!(
            "the policy default from systemd's drop-in ({}; {})",
            settings(&t),
            global.display()
        ),
        None => format!(
            "WITHOUT fairshare limits (no {} of fairshared's: run `fairshared --write-defaults`)",
            global.display()
        ),
    }
}

/// Session close from a process that is no longer root. systemd's `(sd-pam)`
/// helper drops to the user before it closes a `systemd-user` session (the
/// user manager's), and fairshared answers `session_close` to root only, so
/// nothing is asked: fairshared watches every session's process and counts
/// the session down when it ends.
pub fn close_unprivileged(login: &Login) -> Outcome {
    Outcome::new(
        Verdict::Ignore,
        Level::Debug,
        format!(
            "not root at session close (service {}, pid {}): fairshared counts the session down when its process ends",
            login.service.as_deref().unwrap_or("unknown"),
            login.pid
        ),
    )
}

fn describe(e: &ClientError) -> String {
    match e {
        ClientError::NotRunning { path, .. } => format!(
            "fairshared is not running ({} does not answer)",
            path.display()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn users(name: &str) -> Result<Option<u32>, String> {
        Ok(match name {
            "root" => Some(0),
            "daemon" => Some(1),
            "alice" => Some(1001),
            _ => None,
        })
    }

    /// In logind's session 7 of alice, as after pam_systemd.
    fn logind() -> Option<Placement> {
        Some(Placement::Session {
            uid: 1001,
            id: "7".into(),
        })
    }

    fn outside() -> Placement {
        Placement::Outside("/system.slice/cron.service".into())
    }

    fn moved() -> Placement {
        Placement::UserSlice { uid: 1001 }
    }

    /// Outside every user's slice until the `n`-th look, then `after`.
    fn until(n: usize, after: Placement) -> impl Fn() -> Option<Placement> {
        let looks = std::cell::Cell::new(0);
        move || {
            looks.set(looks.get() + 1);
            Some(match looks.get() < n {
                true => outside(),
                false => after.clone(),
            })
        }
    }

    fn login(user: &str) -> Login {
        Login {
            user: Some(user.into()),
            pid: 4242,
            service: Some("sshd".into()),
            tty: Some("ssh".into()),
            rhost: Some("127.0.0.1".into()),
            session_id: Some("7".into()),
        }
    }

    fn cfg(dir: &Path, fail: Fail) -> Config {
        Config {
            socket: dir.join("fs.sock"),
            timeout: Duration::from_millis(300),
            fail,
            ..Config::default()
        }
    }

    /// A daemon that answers each connection with the next canned reply
    /// (after an optional delay) and returns the requests it saw.
    fn daemon(
        sock: &Path,
        replies: Vec<(Duration, &'static [u8])>,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let l = UnixListener::bind(sock).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (delay, reply) in replies {
                let (s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                seen.push(line);
                std::thread::sleep(delay);
                let _ = (&s).write_all(reply);
            }
            seen
        })
    }

    #[test]
    fn the_login_line_comes_with_the_answer_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Fail::Open);
        let d = daemon(
            &c.socket,
            vec![(
                Duration::ZERO,
                b"{\"type\":\"success\",\"message\":\"alice: 2 CPUs\",\"login_line\":\"fairshare: 2 CPUs\\u001b[2J on this host\\n\"}\n",
            )],
        );
        let o = open(&c, &login("alice"), &users, &logind);
        d.join().unwrap();
        assert_eq!(o.verdict, Verdict::Success);
        assert_eq!(
            o.login_line.as_deref(),
            Some("fairshare: 2 CPUs?[2J on this host")
        );
    }

    #[test]
    fn root_system_and_unknown_users_pass_straight_through() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Fail::Closed); // no daemon at all
        for u in ["root", "daemon", "nobody-here"] {
            assert_eq!(
                open(&c, &login(u), &users, &logind).verdict,
                Verdict::Ignore,
                "{u}"
            );
            assert_eq!(close(&c, &login(u), &users).verdict, Verdict::Ignore, "{u}");
        }
        let no_user = Login::default();
        assert_eq!(open(&c, &no_user, &users, &logind).verdict, Verdict::Ignore);
    }

    #[test]
    fn an_unknown_user_is_a_warning_when_fail_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let level = |fail| {
            open(
                &cfg(dir.path(), fail),
                &login("nobody-here"),
                &users,
                &logind,
            )
            .log[0]
                .0
        };
        assert_eq!(level(Fail::Closed), Level::Warning);
        assert_eq!(level(Fail::Open), Level::Debug);
    }

    #[test]
    fn a_user_fairshared_does_not_know_is_a_warning_that_says_why() {
        let dir = tempfile::tempdir().unwrap();
        for fail in [Fail::Open, Fail::Closed] {
            let c = cfg(dir.path(), fail);
            let _ = std::fs::remove_file(&c.socket);
            let d = daemon(
                &c.socket,
                vec![(
                    Duration::ZERO,
                    b"{\"type\":\"error\",\"error\":\"no user with uid 1001\",\"code\":\"unknown_user\"}\n",
                )],
            );
            let o = open(&c, &login("alice"), &users, &logind);
            d.join().unwrap();
            assert_eq!(o.verdict, Verdict::Ignore, "{fail:?}");
            assert_eq!(o.log.len(), 1);
            let (level, msg) = &o.log[0];
            assert_eq!(*level, Level::Warning, "{fail:?}: {msg}");
            assert!(
                msg.contains("alice (uid 1001)") && msg.contains("LDAP or NIS"),
                "{msg}"
            );
        }
    }

    #[test]
    fn open_sends_everything_and_reports_the_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Fail::Open);
        let d = daemon(
            &c.socket,
            vec![(
                Duration::ZERO,
                b"{\"type\":\"success\",\"message\":\"alice: 2 CPUs\"}\n",
            )],
        );
        let o = open(&c, &login("alice"), &users, &logind);
        assert_eq!(o.verdict, Verdict::Success);
        assert_eq!(o.log, vec![(Level::Info, "alice: 2 CPUs".to_string())]);
        assert_eq!(o.login_line, None);
        let seen = d.join().unwrap();
        let v: serde_json::Value = serde_json::from_str(&seen[0]).unwrap();
        assert_eq!(v["type"], "session_open");
        assert_eq!(v["uid"], 1001);
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["service"], "sshd");
        assert_eq!(v["rhost"], "127.0.0.1");
        assert_eq!(v["session_id"], "7");
    }

    #[test]
    fn fail_open_says_what_systemds_drop_ins_give_the_login() {
        let d = tempfile::tempdir().unwrap();
        let u = d.path();
        assert!(what_systemd_gives(u, 1001).starts_with("WITHOUT fairshare limits"));
        let put = |rel: &str, text: &str| {
            let p = u.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put(
            "user-.slice.d/40-fairshare.conf",
            "# Written by fairshared (the policy default).\n[Slice]\nCPUQuota=200%\nTasksMax=500\n",
        );
        let g = what_systemd_gives(u, 1001);
        assert!(
            g.starts_with("the policy default from systemd's drop-in (CPUQuota=200% TasksMax=500;"),
            "{g}"
        );
        put(
            "user-1003.slice.d/40-fairshare.conf",
            "# Written by fairshared (stu: group students).\n[Slice]\nCPUQuota=100%\n",
        );
        let own = what_systemd_gives(u, 1003);
        assert!(
            own.starts_with("their own default from systemd's drop-in (CPUQuota=100%;"),
            "{own}"
        );
        put(
            "user-1004.slice.d/40-fairshare.conf",
            "# Written by fairshared (ann: exempt).\n# No fairshare limit.\n",
        );
        assert!(
            what_systemd_gives(u, 1004).starts_with("systemd's own defaults, no fairshare limit")
        );
        // an admin's file of the same name is not fairshare's word
        put(
            "user-1005.slice.d/40-fairshare.conf",
            "[Slice]\nCPUQuota=900%\n",
        );
        assert!(what_systemd_gives(u, 1005).starts_with("the policy default"));
    }

    #[test]
    fn no_daemon_fails_open_or_closed_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let o = open(
            &cfg(dir.path(), Fail::Open),
            &login("alice"),
            &users,
            &logind,
        );
        assert_eq!(o.verdict, Verdict::Success);
        assert!(
            o.log[0].1.contains("not running") && o.log[0].1.contains("WITHOUT"),
            "{:?}",
            o.log
        );
        let o = open(
            &cfg(dir.path(), Fail::Closed),
            &login("alice"),
            &users,
            &logind,
        );
        assert!(matches!(o.verdict, Verdict::Refuse(ref m) if m.contains("Login refused")));
        assert_eq!(o.log[0].0, Level::Error);
        assert!(start.elapsed() < Duration::from_millis(200));
        // a logout is never refused
        assert_eq!(
            close(&cfg(dir.path(), Fail::Closed), &login("alice"), &users).verdict,
            Verdict::Success
        );
    }

    #[test]
    fn a_slow_daemon_is_cut_off_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Fail::Open);
        let d = daemon(
            &c.socket,
            vec![(
                Duration::from_secs(2),
                b"{\"type\":\"success\",\"message\":\"late\"}\n",
            )],
        );
        let start = Instant::now();
        let o = open(&c, &login("alice"), &users, &logind);
        let took = start.elapsed();
        assert_eq!(o.verdict, Verdict::Success);
        assert!(
            o.log[0].1.contains("did not answer within 300 ms"),
            "{:?}",
            o.log
        );
        assert!(took < Duration::from_millis(1000), "{took:?}");
        d.join().unwrap();
    }

    #[test]
    fn garbage_half_answers_and_errors_follow_the_fail_setting() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Fail::Closed);
        let d = daemon(
            &c.socket,
            vec![
                (Duration::ZERO, b"\x00\xffgarbage\n"),
                (Duration::ZERO, b"{\"type\":\"succ"),
                (Duration::ZERO, b"{\"type\":\"error\",\"error\":\"systemd is sad\",\"code\":\"systemd\"}\n"),
                (Duration::ZERO, b"{\"type\":\"error\",\"error\":\"root is never limited\",\"code\":\"exempt\"}\n"),
            ],
        );
        for _ in 0..3 {
            let o = open(&c, &login("alice"), &users, &logind);
            assert!(matches!(o.verdict, Verdict::Refuse(_)), "{o:?}");
        }
        assert_eq!(
            open(&c, &login("alice"), &users, &logind).verdict,
            Verdict::Ignore
        );
        d.join().unwrap();
    }

    #[test]
    fn close_sends_pid_and_session() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Fail::Open);
        let d = daemon(
            &c.socket,
            vec![(
                Duration::ZERO,
                b"{\"type\":\"success\",\"message\":\"closed\"}\n",
            )],
        );
        assert_eq!(close(&c, &login("alice"), &users).verdict, Verdict::Success);
        let v: serde_json::Value = serde_json::from_str(&d.join().unwrap()[0]).unwrap();
        assert_eq!(v["type"], "session_close");
        assert_eq!(
            (v["uid"].as_u64(), v["pid"].as_u64()),
            (Some(1001), Some(4242))
        );
        assert_eq!(v["session_id"], "7");
    }

    const LIMITED: &[u8] = b"{\"type\":\"success\",\"message\":\"alice: 2 CPUs; pid 4242 moved\",\"allocation\":{\"cpu\":2,\"mem\":\"8G\",\"tasks\":4096}}\n";

    fn stray_cfg(dir: &Path, fail: Fail) -> Config {
        Config {
            adopt_timeout: Duration::from_millis(1000),
            ..cfg(dir, fail)
        }
    }

    #[test]
    fn a_process_outside_every_slice_waits_longer_and_goes_ahead_once_moved() {
        let dir = tempfile::tempdir().unwrap();
        let c = stray_cfg(dir.path(), Fail::Open);
        // answered after 600 ms: beyond timeout_ms, within adopt_timeout_ms
        let d = daemon(&c.socket, vec![(Duration::from_millis(600), LIMITED)]);
        let o = open(&c, &login("alice"), &users, &until(2, moved()));
        assert_eq!(o.verdict, Verdict::Success, "{o:?}");
        assert_eq!(o.log[0].0, Level::Info);
        let sent: serde_json::Value = serde_json::from_str(&d.join().unwrap()[0]).unwrap();
        assert_eq!(sent["pid"], 4242);
        // a logind session keeps timeout_ms
        std::fs::remove_file(&c.socket).unwrap();
        let d = daemon(&c.socket, vec![(Duration::from_millis(600), LIMITED)]);
        let o = open(&c, &login("alice"), &users, &logind);
        assert!(o.log[0].1.contains("did not answer within 300 ms"), "{o:?}");
        d.join().unwrap();
    }

    #[test]
    fn a_process_outside_every_slice_never_goes_ahead_outside_while_it_may_still_be_moved() {
        let dir = tempfile::tempdir().unwrap();
        for fail in [Fail::Open, Fail::Closed] {
            let c = stray_cfg(dir.path(), fail);
            let _ = std::fs::remove_file(&c.socket);
            // late: refused, even with fail=open
            let d = daemon(&c.socket, vec![(Duration::from_millis(1500), LIMITED)]);
            let o = open(&c, &login("alice"), &users, &|| Some(outside()));
            assert!(matches!(o.verdict, Verdict::Refuse(_)), "{fail:?}: {o:?}");
            assert_eq!(o.log[0].0, Level::Error);
            assert!(
                o.log[0].1.contains("did not answer within 1000 ms")
                    && o.log[0].1.contains("outside user-1001.slice"),
                "{o:?}"
            );
            d.join().unwrap();
            // late, but moved meanwhile: goes ahead, in the slice
            let _ = std::fs::remove_file(&c.socket);
            let d = daemon(&c.socket, vec![(Duration::from_millis(1500), LIMITED)]);
            let o = open(&c, &login("alice"), &users, &until(2, moved()));
            assert_eq!(o.verdict, Verdict::Success, "{fail:?}: {o:?}");
            assert!(
                o.log[0].1.contains("moved from /system.slice/cron.service"),
                "{o:?}"
            );
            d.join().unwrap();
            // an error, and still outside: refused
            let _ = std::fs::remove_file(&c.socket);
            let d = daemon(
                &c.socket,
                vec![
                    (
                        Duration::ZERO,
                        b"{\"type\":\"error\",\"error\":\"systemd is sad\",\"code\":\"systemd\"}\n",
                    ),
                    // "limited", yet not moved: refused too
                    (Duration::ZERO, LIMITED),
                ],
            );
            for _ in 0..2 {
                let o = open(&c, &login("alice"), &users, &|| Some(outside()));
                assert!(matches!(o.verdict, Verdict::Refuse(_)), "{fail:?}: {o:?}");
            }
            d.join().unwrap();
        }
    }

    #[test]
    fn outside_every_slice_with_no_daemon_follows_fail_and_exempt_users_pass() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(
            &stray_cfg(dir.path(), Fail::Open),
            &login("alice"),
            &users,
            &|| Some(outside()),
        );
        assert_eq!(o.verdict, Verdict::Success);
        assert!(
            o.log[0].1.contains("not running") && o.log[0].1.contains("WITHOUT"),
            "{o:?}"
        );
        let o = open(
            &stray_cfg(dir.path(), Fail::Closed),
            &login("alice"),
            &users,
            &|| Some(outside()),
        );
        assert!(matches!(o.verdict, Verdict::Refuse(_)), "{o:?}");
        // an exempt user's process stays where it is
        let c = stray_cfg(dir.path(), Fail::Closed);
        let d = daemon(
            &c.socket,
            vec![(
                Duration::ZERO,
                b"{\"type\":\"success\",\"message\":\"alice is not limited (exempt)\"}\n",
            )],
        );
        let o = open(&c, &login("alice"), &users, &|| Some(outside()));
        assert_eq!(o.verdict, Verdict::Success, "{o:?}");
        d.join().unwrap();
    }

    #[test]
    fn close_without_root_asks_nothing_and_says_who_counts_it_down() {
        let mut l = login("alice");
        l.service = Some("systemd-user".into());
        let o = close_unprivileged(&l);
        assert_eq!(o.verdict, Verdict::Ignore);
        assert_eq!(o.log.len(), 1);
        assert_eq!(o.log[0].0, Level::Debug, "a logout is no news: {:?}", o.log);
        assert!(
            o.log[0].1.contains("systemd-user") && o.log[0].1.contains("4242"),
            "{:?}",
            o.log
        );
    }
}
