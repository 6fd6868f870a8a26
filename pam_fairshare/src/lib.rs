//! `pam_fairshare.so`: the PAM session module of fairshare.
//!
//! At `open_session` it tells fairshared "uid U opened a session, leader pid P,
//! service S, tty T, rhost R, logind session X"; at `close_session` it says the
//! session ended. That is one blocking round trip with a deadline: no
//! threads, no async runtime, no global state. If fairshared cannot be
//! reached in time the login goes ahead (`fail=open`, the default) or is
//! refused with a message (`fail=closed`). Root, system accounts and users
//! unknown to the host pass straight through.
//!
//! This file is only the FFI edge: it reads the PAM items, calls the plain
//! Rust in [`session`] and [`config`], and turns the outcome into a return
//! code and syslog lines. Every entry point catches panics, so none can
//! unwind into the login program.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod session;

use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use pam::constants::{PAM_ERROR_MSG, PAM_SILENT, PAM_TEXT_INFO, PamFlag, PamResultCode};
use pam::conv::Conv;
use pam::items::{RHost, Service, Tty, User};
use pam::module::{PamHandle, PamHooks};

use config::Fail;
use fairshare_proto::placement::Placement;
use session::{Level, Login, Outcome, Verdict};

unsafe extern "C" {
    fn pam_getenv(pamh: *mut PamHandle, name: *const c_char) -> *const c_char;
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
}

/// Logs through `pam_syslog`, which prefixes `pam_fairshare(SERVICE:session)`.
fn log(pamh: &PamHandle, level: Level, msg: &str) {
    let priority = match level {
        Level::Debug => libc::LOG_DEBUG,
        Level::Info => libc::LOG_INFO,
        Level::Warning => libc::LOG_WARNING,
        Level::Error => libc::LOG_ERR,
    };
    let Ok(text) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: pamh is the live handle PAM passed in; the format is a constant
    // "%s" and the argument a valid NUL-terminated string.
    unsafe {
        pam_syslog(
            pamh,
            libc::LOG_AUTHPRIV | priority,
            c"%s".as_ptr(),
            text.as_ptr(),
        )
    };
}

fn env(pamh: &mut PamHandle, name: &CStr) -> Option<String> {
    // SAFETY: pamh is live; pam_getenv returns NULL or a string owned by PAM
    // that stays valid until the environment changes, and is copied at once.
    let p = unsafe { pam_getenv(pamh, name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().ok().map(str::to_string)
}

fn item<'a, T>(pamh: &'a PamHandle) -> Option<String>
where
    T: pam::items::Item<'a> + std::ops::Deref<Target = &'a CStr>,
{
    let v = pamh.get_item::<T>().ok()??;
    v.to_str().ok().map(str::to_string)
}

fn login(pamh: &mut PamHandle) -> Login {
    let user = item::<User>(pamh);
    Login {
        user,
        pid: std::process::id(),
        service: item::<Service>(pamh),
        tty: item::<Tty>(pamh),
        rhost: item::<RHost>(pamh),
        session_id: env(pamh, c"XDG_SESSION_ID"),
    }
}

fn args(raw: &[&CStr]) -> (config::Config, Vec<String>) {
    config::parse(raw.iter().filter_map(|a| a.to_str().ok()))
}

/// Passes fairshared's login line to the login program (`PAM_TEXT_INFO`)
/// when this session shows it (see `fairshare_proto::login`): sshd keeps it
/// from commands, scp, sftp and `~/.hushlogin` users itself; login(1) says
/// `PAM_SILENT` for `~/.hushlogin`.
fn login_line(pamh: &PamHandle, cfg: &config::Config, login: &Login, silent: bool, line: &str) {
    let session = fairshare_proto::login::Session {
        service: login.service.as_deref(),
        tty: login.tty.as_deref(),
        silent,
    };
    match fairshare_proto::login::show(&session, &cfg.login_line) {
        Ok(()) => {
            if let Ok(Some(conv)) = pamh.get_item::<Conv>()
                && let Err(e) = conv.send(PAM_TEXT_INFO, line)
                && cfg.debug
            {
                log(
                    pamh,
                    Level::Debug,
                    &format!("the login program did not take the login line: {e:?}"),
                );
            }
        }
        Err(quiet) if cfg.debug => log(
            pamh,
            Level::Debug,
            &format!("login line not shown: {quiet:?}"),
        ),
        Err(_) => {}
    }
}

/// Logs an outcome, tells the user if refused, and gives the PAM code.
fn finish(pamh: &PamHandle, debug: bool, outcome: Outcome) -> PamResultCode {
    for (level, msg) in &outcome.log {
        if *level != Level::Debug || debug {
            log(pamh, *level, msg);
        }
    }
    match outcome.verdict {
        Verdict::Success => PamResultCode::PAM_SUCCESS,
        Verdict::Ignore => PamResultCode::PAM_IGNORE,
        Verdict::Refuse(msg) => {
            if let Ok(Some(conv)) = pamh.get_item::<Conv>() {
                let _ = conv.send(PAM_ERROR_MSG, &msg);
            }
            PamResultCode::PAM_SESSION_ERR
        }
    }
}

/// Runs one hook body; a panic becomes the configured failure result.
fn guarded(
    pamh: &mut PamHandle,
    raw_args: &[&CStr],
    flags: PamFlag,
    hook: fn(&config::Config, &Login) -> Outcome,
) -> PamResultCode {
    let (cfg, warnings) = args(raw_args);
    for w in &warnings {
        log(pamh, Level::Warning, w);
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        let l = login(pamh);
        let outcome = hook(&cfg, &l);
        if let (Verdict::Success, Some(line)) = (&outcome.verdict, &outcome.login_line) {
            login_line(pamh, &cfg, &l, flags & PAM_SILENT != 0, line);
        }
        finish(pamh, cfg.debug, outcome)
    }));
    match result {
        Ok(code) => code,
        Err(_) => {
            log(
                pamh,
                Level::Error,
                "internal error (panic) in pam_fairshare",
            );
            match cfg.fail {
                Fail::Open => PamResultCode::PAM_SUCCESS,
                Fail::Closed => PamResultCode::PAM_SESSION_ERR,
            }
        }
    }
}

pub struct PamFairshare;

impl PamHooks for PamFairshare {
    fn sm_open_session(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        guarded(pamh, &args, flags, |c, l| {
            session::open(c, l, &session::nss_lookup, &Placement::of_self)
        })
    }

    fn sm_close_session(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        guarded(pamh, &args, flags, |c, l| {
            if nix::unistd::geteuid().is_root() {
                session::close(c, l, &session::nss_lookup)
            } else {
                session::close_unprivileged(l)
            }
        })
    }
    // auth, account, password and setcred keep the trait's default: PAM_IGNORE.
}

pam::pam_hooks!(PamFairshare);
