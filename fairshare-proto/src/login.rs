//! Whether a PAM session shows fairshare's login line, and its text as the
//! module passes it on (here, not in the module, so it is tested without
//! PAM; the module calls it with the PAM items).
//!
//! The line comes in fairshared's answer to `session_open` and goes out
//! through the PAM conversation as `PAM_TEXT_INFO`. What that means depends
//! on the login program, measured with OpenSSH 9.2 and shadow's login 4.13
//! (Debian 12):
//!
//! * sshd opens the PAM session before it knows whether a terminal or a
//!   command will follow: `PAM_TTY` is `ssh` for every session, interactive
//!   or not. It keeps conversation text and prints it only where it prints
//!   the message of the day: a shell without a command (`ssh host`, `ssh -t
//!   host`; also `ssh -T host` with no command), and not when
//!   `~/.hushlogin` exists. `ssh host cmd`, `ssh -t host cmd`, scp, sftp and
//!   rsync never show it. So for sshd the module sends the line and sshd
//!   decides.
//! * login(1) passes `PAM_SILENT` when `~/.hushlogin` exists, and shows
//!   conversation text on the terminal otherwise (`PAM_TTY` is the
//!   terminal).
//! * su, sudo, runuser, cron and systemd's user manager also run the
//!   session stack. su prints conversation text at once, even for `su -c
//!   cmd` (on stdout: it would end up in a redirected command's output);
//!   cron and the user manager have no terminal. None of them is a login
//!   to announce: by default only `sshd` and `login` show the line; the
//!   module argument `login_line=` names other services, or `off`.

use crate::sanitize;

/// The services that show the line unless the module is told otherwise.
pub const DEFAULT_SERVICES: &[&str] = &["sshd", "login"];
/// The longest login line passed on.
pub const MAX_LINE: usize = 240;

/// The module argument `login_line=off` or `login_line=SERVICE[,SERVICE...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    Off,
    Services(Vec<String>),
}

impl Default for Setting {
    fn default() -> Setting {
        Setting::Services(DEFAULT_SERVICES.iter().map(|s| s.to_string()).collect())
    }
}

impl Setting {
    /// Reads the value of `login_line=`.
    pub fn parse(value: &str) -> Result<Setting, String> {
        if value == "off" {
            return Ok(Setting::Off);
        }
        let services: Vec<String> = value.split(',').map(str::to_string).collect();
        let ok = |s: &String| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        };
        if services.iter().all(ok) {
            Ok(Setting::Services(services))
        } else {
            Err(format!(
                "login_line={value}: expected off, or PAM service names separated by commas (default: {})",
                DEFAULT_SERVICES.join(",")
            ))
        }
    }
}

/// The session as the module sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session<'a> {
    /// `PAM_SERVICE`.
    pub service: Option<&'a str>,
    /// `PAM_TTY`.
    pub tty: Option<&'a str>,
    /// `PAM_SILENT` was passed to `pam_open_session`.
    pub silent: bool,
}

/// Why the line is not shown (for the module's debug log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quiet {
    /// `PAM_SILENT` (login(1) with `~/.hushlogin`).
    Silent,
    /// `login_line=off`.
    Off,
    /// The service is not one that shows it.
    Service,
    /// No terminal (`PAM_TTY` empty, `cron`, an X display).
    NoTerminal,
}

/// Whether `session` shows the login line under `setting`.
pub fn show(session: &Session<'_>, setting: &Setting) -> Result<(), Quiet> {
    if session.silent {
        return Err(Quiet::Silent);
    }
    let Setting::Services(services) = setting else {
        return Err(Quiet::Off);
    };
    let service = session.service.unwrap_or_default();
    if !services.iter().any(|s| s == service) {
        return Err(Quiet::Service);
    }
    if !is_terminal(session.tty.unwrap_or_default()) {
        return Err(Quiet::NoTerminal);
    }
    Ok(())
}

/// `PAM_TTY` values that are a terminal: sshd's `ssh` (see the module's
/// doc), and terminal devices with or without `/dev/`.
fn is_terminal(tty: &str) -> bool {
    if tty == "ssh" {
        return true;
    }
    let name = tty.strip_prefix("/dev/").unwrap_or(tty);
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("pts/").is_some_and(number)
        || name.strip_prefix("ttyS").is_some_and(number)
        || name.strip_prefix("tty").is_some_and(number)
}

/// The line as the module passes it to the conversation: cleaned (the
/// daemon's text is trusted, but nothing unprintable goes to a terminal
/// from here either); `None` when there is nothing to show.
pub fn text(line: &str) -> Option<String> {
    let t = sanitize::line(line.trim(), MAX_LINE);
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<'a>(service: &'a str, tty: &'a str) -> Session<'a> {
        Session {
            service: Some(service),
            tty: Some(tty),
            silent: false,
        }
    }

    #[test]
    fn what_the_login_programs_set() {
        let d = Setting::default();
        // sshd: PAM_TTY=ssh for every session; sshd itself keeps the text
        // from commands, scp, sftp and ~/.hushlogin users
        assert_eq!(show(&s("sshd", "ssh"), &d), Ok(()));
        // login(1) on a terminal; with ~/.hushlogin it passes PAM_SILENT
        assert_eq!(show(&s("login", "/dev/pts/1"), &d), Ok(()));
        assert_eq!(show(&s("login", "tty1"), &d), Ok(()));
        let hushed = Session {
            silent: true,
            ..s("login", "/dev/pts/1")
        };
        assert_eq!(show(&hushed, &d), Err(Quiet::Silent));
        // su -, su -c, cron, the user manager, sudo
        assert_eq!(show(&s("su-l", "/dev/pts/1"), &d), Err(Quiet::Service));
        assert_eq!(show(&s("su", ""), &d), Err(Quiet::Service));
        assert_eq!(show(&s("cron", "cron"), &d), Err(Quiet::Service));
        assert_eq!(
            show(
                &Session {
                    service: Some("systemd-user"),
                    tty: None,
                    silent: false
                },
                &d
            ),
            Err(Quiet::Service)
        );
        assert_eq!(show(&s("sudo", "/dev/pts/0"), &d), Err(Quiet::Service));
        assert_eq!(show(&Session::default(), &d), Err(Quiet::Service));
    }

    #[test]
    fn the_module_argument() {
        assert_eq!(Setting::parse("off"), Ok(Setting::Off));
        assert_eq!(show(&s("sshd", "ssh"), &Setting::Off), Err(Quiet::Off));
        let more = Setting::parse("sshd,login,su-l").unwrap();
        assert_eq!(show(&s("su-l", "/dev/pts/1"), &more), Ok(()));
        // even a listed service needs a terminal
        assert_eq!(show(&s("su-l", ""), &more), Err(Quiet::NoTerminal));
        assert_eq!(show(&s("su-l", ":0"), &more), Err(Quiet::NoTerminal));
        assert_eq!(show(&s("su-l", "pts/x"), &more), Err(Quiet::NoTerminal));
        for bad in ["", "sshd,", "a b", "sshd;rm", "x\n"] {
            assert!(Setting::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            Setting::parse("")
                .unwrap_err()
                .contains("default: sshd,login"),
            "the error says what is accepted"
        );
    }

    #[test]
    fn the_text_is_cleaned() {
        assert_eq!(
            text("fairshare: 2 CPUs, 8G memory\n").as_deref(),
            Some("fairshare: 2 CPUs, 8G memory")
        );
        assert_eq!(text("a\x1b[2Jb").as_deref(), Some("a?[2Jb"));
        assert_eq!(text("  "), None);
        assert!(text(&"x".repeat(1000)).unwrap().len() <= MAX_LINE);
    }
}
