//! A minimal libpam client (what pamtester does, but able to hold a session
//! open and to wait for a signal), and the `pam-session` child of the storm.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::{BufRead, Write};
use std::time::Instant;

use crate::{Result, fail};

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn = unsafe extern "C" fn(
    c_int,
    *mut *const PamMessage,
    *mut *mut PamResponse,
    *mut c_void,
) -> c_int;

#[repr(C)]
struct PamConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_start(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        pamh: *mut *mut c_void,
    ) -> c_int;
    fn pam_end(pamh: *mut c_void, status: c_int) -> c_int;
    fn pam_open_session(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_close_session(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_putenv(pamh: *mut c_void, name_value: *const c_char) -> c_int;
    fn pam_strerror(pamh: *mut c_void, errnum: c_int) -> *const c_char;
}

const PAM_SUCCESS: c_int = 0;
const PAM_BUF_ERR: c_int = 5;

/// Answers every message with an empty response (session modules only send
/// information or errors).
unsafe extern "C" fn conversation(
    n: c_int,
    _msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    _data: *mut c_void,
) -> c_int {
    let n = usize::try_from(n).unwrap_or(0).max(1);
    // SAFETY: libpam frees the array (and each non-null resp) with free().
    let p = unsafe { libc::calloc(n, std::mem::size_of::<PamResponse>()) };
    if p.is_null() {
        return PAM_BUF_ERR;
    }
    // SAFETY: resp is the out-pointer libpam passed us.
    unsafe { *resp = p.cast() };
    PAM_SUCCESS
}

/// A PAM transaction, ended when dropped.
pub struct Pam {
    h: *mut c_void,
    _conv: Box<PamConv>,
}

impl Pam {
    pub fn start(service: &str, user: &str) -> Result<Pam> {
        let svc = CString::new(service)?;
        let usr = CString::new(user)?;
        let conv = Box::new(PamConv {
            conv: Some(conversation),
            appdata_ptr: std::ptr::null_mut(),
        });
        let mut h = std::ptr::null_mut();
        // SAFETY: valid NUL-terminated strings, a conv struct that outlives
        // the handle, and an out-pointer for the handle.
        let rc = unsafe { pam_start(svc.as_ptr(), usr.as_ptr(), &*conv, &mut h) };
        if rc != PAM_SUCCESS || h.is_null() {
            return fail(format!("pam_start({service}, {user}) failed: {rc}"));
        }
        Ok(Pam { h, _conv: conv })
    }

    pub fn putenv(&self, name_value: &str) -> Result<()> {
        let kv = CString::new(name_value)?;
        // SAFETY: live handle, valid string (libpam copies it).
        let rc = unsafe { pam_putenv(self.h, kv.as_ptr()) };
        if rc != PAM_SUCCESS {
            return fail(format!("pam_putenv failed: {}", self.error(rc)));
        }
        Ok(())
    }

    pub fn open_session(&self) -> c_int {
        // SAFETY: live handle.
        unsafe { pam_open_session(self.h, 0) }
    }

    pub fn close_session(&self) -> c_int {
        // SAFETY: live handle.
        unsafe { pam_close_session(self.h, 0) }
    }

    pub fn error(&self, rc: c_int) -> String {
        // SAFETY: pam_strerror returns a static string (or NULL).
        let p = unsafe { pam_strerror(self.h, rc) };
        if p.is_null() {
            return format!("PAM error {rc}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Drop for Pam {
    fn drop(&mut self) {
        // SAFETY: the handle is live and ended exactly once.
        unsafe { pam_end(self.h, PAM_SUCCESS) };
    }
}

/// Threads of this process, from /proc/self/status.
pub fn threads() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time this process has used, in nanoseconds (scheduler accounting).
pub fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The storm's child: one PAM session, steered over stdin/stdout.
///
/// Prints `ready` once the transaction is started (modules loaded), opens the
/// session on `open`, prints `opened RC THREADS_BEFORE THREADS_AFTER NS`,
/// closes it on `close` and prints `closed RC NS CPU_NS`, CPU_NS being the CPU
/// time this process used from `open` to the end of pam_close_session (the
/// module's side of the session, without the process's start-up and exit).
pub fn session_child(service: &str, user: &str, session_id: Option<&str>) -> Result<()> {
    let pam = Pam::start(service, user)?;
    if let Some(id) = session_id {
        pam.putenv(&format!("XDG_SESSION_ID={id}"))?;
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let wait = |lines: &mut std::io::Lines<std::io::StdinLock<'_>>, word: &str| -> Result<()> {
        match lines.next() {
            Some(Ok(l)) if l.trim() == word => Ok(()),
            other => fail(format!("expected `{word}` on stdin, got {other:?}")),
        }
    };
    wait(&mut lines, "open")?;
    let cpu0 = cpu_ns();
    let before = threads();
    let t = Instant::now();
    let rc = pam.open_session();
    let ns = t.elapsed().as_nanos();
    let after = threads();
    writeln!(out, "opened {rc} {before} {after} {ns}")?;
    out.flush()?;
    wait(&mut lines, "close")?;
    let t = Instant::now();
    let rc = pam.close_session();
    let ns = t.elapsed().as_nanos();
    let cpu = cpu_ns().saturating_sub(cpu0);
    writeln!(out, "closed {rc} {ns} {cpu}")?;
    out.flush()?;
    // pam_end and the process exit only after the timed phase: tearing down
    // 200 processes is not the module's cost, and the direct floor has none.
    wait(&mut lines, "quit")?;
    drop(pam);
    Ok(())
}
