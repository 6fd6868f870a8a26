//! The man pages: fairshared(8) and fairshare-ctl(1) (with a page per
//! subcommand) from their clap definitions, plus the sections clap knows
//! nothing of (reloading, leases, files, exit status, examples, see also);
//! pam_fairshare(8) from the module's argument table; fairshare-policy(5)
//! from the policy's field table.
//!
//! Every page turns hyphenation off (`.nh`) and is set ragged-right
//! (`.ad l`): a path or an option must never be broken across lines.

use std::path::{Path, PathBuf};

use roff::{Roff, bold, italic, roman};

use crate::write;

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn generate(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = vec![write(dir, "fairshared.8", fairshared_page()?.as_bytes())?];
    let mut ctl = fairshare_ctl::cli::command();
    ctl.build();
    // clap's own `help` subcommand gets no page, so the page does not name it
    let top = fairshare_ctl::cli::command().disable_help_subcommand(true);
    files.push(write(dir, "fairshare-ctl.1", ctl_page(&top)?.as_bytes())?);
    for sc in ctl.get_subcommands() {
        if sc.is_hide_set() || sc.get_name() == "help" {
            continue;
        }
        let name = format!("fairshare-ctl-{}", sc.get_name());
        files.push(write(
            dir,
            &format!("{name}.1"),
            subcommand_page(sc, &name)?.as_bytes(),
        )?);
    }
    files.push(write(dir, "pam_fairshare.8", tidy(&pam_page()).as_bytes())?);
    files.push(write(
        dir,
        "fairshare-policy.5",
        tidy(&policy_page()).as_bytes(),
    )?);
    Ok(files)
}

/// No spaces at the ends of lines (clap_mangen leaves some), and no `.PP`
/// right after a heading, where it means nothing (mandoc warns).
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_heading = false;
    for line in text.lines().map(str::trim_end) {
        if after_heading && line == ".PP" {
            continue;
        }
        after_heading = line.starts_with(".SH ") || line.starts_with(".SS ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The page's date: `SOURCE_DATE_EPOCH` when set (reproducible builds, as
/// Debian's tools set it), else today, as YYYY-MM-DD.
fn date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn manual(section: &str) -> &'static str {
    match section {
        "1" => "User Commands",
        "5" => "File Formats",
        _ => "System Manager's Manual",
    }
}

/// `.TH` and what every page starts with.
fn head(r: &mut Roff, title: &str, section: &str) {
    let source = format!("fairshare {VERSION}");
    let date = date();
    r.control(
        "TH",
        [
            title,
            section,
            date.as_str(),
            source.as_str(),
            manual(section),
        ],
    );
    r.control("nh", []);
    r.control("ad", ["l"]);
}

fn section(r: &mut Roff, name: &str) {
    r.control("SH", [name]);
}

fn para(r: &mut Roff, text: &str) {
    r.control("PP", []);
    r.text([roman(text)]);
}

fn item(r: &mut Roff, term: &str, text: &str) {
    r.control("TP", []);
    r.text([bold(term)]);
    r.text([roman(text)]);
}

/// Lines shown as they are (commands, file names), indented.
fn example(r: &mut Roff, lines: &[&str]) {
    r.control("PP", []);
    r.control("RS", ["4"]);
    r.control("nf", []);
    for l in lines {
        r.text([roman(*l)]);
    }
    r.control("fi", []);
    r.control("RE", []);
}

/// A page from a clap command: its name, synopsis, description, options and
/// subcommands as clap_mangen writes them (without the `EXTRA` section it
/// makes of `after_help`, which is written for a terminal), then `extra`.
fn clap_page(
    cmd: clap::Command,
    title: &str,
    section: &str,
    extra: impl FnOnce(&mut Roff),
) -> Result<String, String> {
    let cmd = cmd.after_help(None::<&str>).after_long_help(None::<&str>);
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    let mut top = Roff::new();
    head(&mut top, title, section);
    top.to_writer(&mut out).map_err(|e| e.to_string())?;
    let body = |f: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| -> Result<String, String> {
        let mut b = Vec::new();
        f(&mut b).map_err(|e| e.to_string())?;
        Ok(without_preamble(&String::from_utf8_lossy(&b)))
    };
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(&body(&|b| man.render_name_section(b))?);
    text.push_str(&body(&|b| man.render_synopsis_section(b))?);
    text.push_str(&body(&|b| man.render_description_section(b))?);
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        text.push_str(&body(&|b| man.render_options_section(b))?);
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        text.push_str(&body(&|b| man.render_subcommands_section(b))?);
    }
    let mut rest = Roff::new();
    extra(&mut rest);
    text.push_str(&without_preamble(&rest.render()));
    Ok(tidy(&text))
}

/// The roff crate starts every rendering with the definition of `\*(Aq`
/// (an upright apostrophe); the page needs it once, at the top.
fn without_preamble(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with(".ie \\n(.g .ds Aq") && !l.starts_with(".el .ds Aq"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn fairshared_page() -> Result<String, String> {
    clap_page(fairshared::cli::command(), "FAIRSHARED", "8", |r| {
        section(r, "THE POLICY DEFAULT FROM SYSTEMD");
        para(
            r,
            "fairshared writes the policy default as a drop-in that systemd itself applies to every user slice as it starts: /etc/systemd/system/user-.slice.d/40-fairshare.conf (CPUQuota=, MemoryMax=, MemoryHigh= when the policy sets a soft limit, TasksMax=). A user whose default differs (a group or user override) gets their own /etc/systemd/system/user-UID.slice.d/40-fairshare.conf with every value; root, nobody (65534), system accounts and exempt users get a comment-only file of that name, which masks the default so that systemd's own defaults apply (its TasksMax=33%, no CPU or memory limit). So a login is limited even while fairshared is stopped, crashed or not installed any more, and after a reboot before fairshared starts. Each file starts with # Written by fairshared; a file of that name that does not is an admin's, and is left alone.",
        );
        para(
            r,
            "The files are written at start, after every reload that loads, and for a user fairshared resolves for the first time (after answering their login); by fairshared --write-defaults (the package and make install) without a daemon. A login whose slice started from the right file makes no call to systemd: fairshared counts the session. Resizes, leases and root's sets are runtime values on top (SetUnitProperties, /run/systemd/system.control); the last logout sets back only the values that differ from the user's default, and removes their runtime files, so that what the files say is what is in force. fairshared never writes an explicit infinity: lifting a user's limits gives back systemd's own defaults.",
        );
        para(
            r,
            "A user whose own default fairshared has never seen (a member of an LDAP group the policy names, logging in for the first time while fairshared is down) gets the plain default until fairshared is back. fairshared --check shows which drop-ins of others (a hand-written user-.slice.d/50-limits.conf, a persistent systemctl set-property) change what fairshare sets, and whether the default in force matches the policy. fairshared --remove-defaults (the package's removal and make uninstall) removes every file of fairshared's and the runtime values it set, then runs systemctl daemon-reload.",
        );
        section(r, "RELOADING THE POLICY");
        para(
            r,
            "fairshared reads its policy again, from the path it was started with, on systemctl reload fairshared (which runs fairshared --reload and waits for the answer), on fairshare-ctl reload, and on SIGHUP. A policy with errors is refused: the old one stays in force and so do the drop-ins; systemctl reload and fairshare-ctl reload exit non-zero with every error, which systemctl status shows too. Check a changed policy first with fairshared --check or fairshare-ctl check.",
        );
        para(
            r,
            "A policy that loads is put in force at once: its drop-ins are written, every running slice whose values change is set (one call per user, the changed values only, no daemon-reload), every user logind knows is looked at again (a user no longer exempt is counted and limited, a user now exempt gets systemd's own defaults back), and resizes above a lowered maximum are cut down to it. The answer and the journal name the users whose limits changed. User and group lookups are made afresh at a reload.",
        );
        para(
            r,
            "Every policy that loads is kept as /var/lib/fairshare/policy.last-good/. A policy with errors at start makes fairshared serve with that one, saying so in the journal, in systemctl status, in fairshare-ctl list and status (root) and in fairshared --check, so that the socket never fails and logins are answered; after fixing the file, one systemctl reload (or restart) puts it in force. Only when no policy ever loaded on the host does fairshared exit with status 78, which the shipped unit tells systemd not to restart on.",
        );
        para(
            r,
            "Right after a start, fairshare-ctl list waits (at most 5 s) until fairshared has counted the sessions opened while it was away, and says so if it is still catching up.",
        );
        section(r, "LEASES");
        para(
            r,
            "A resize can be given a lifetime (fairshare-ctl resize --for 4h; duration in the request). When it runs out, the user's slice goes back to the policy default (or root's setting) and fairshare-ctl status says so. With leases.max_duration in the policy, a user's own resize that puts any field above their default is a lease: it ends at most max_duration after the allocation first went above the default, whatever the user sends meanwhile. A resize without --for gets the rest of that time; resizing again during a lease, even of another field, keeps its end (a lease is not renewed by asking again), and a --for past its end or longer than max_duration is refused, saying how long is left. A new lease starts only from the default: after fairshare-ctl release (which hands the capacity back to the pool, so the next resize is checked against what is free then) or the lease's end. max_duration thus caps the continuous time above the default. A reload that sets or shortens it gives resizes already above the default an end within it.",
        );
        para(
            r,
            "Root's fairshare-ctl set is not capped by max_duration; with --for it ends then, without it lasts until fairshare-ctl set USER --default. While it is in force it binds the user: for the fields root named, the user's own resizes may go below root's value but not above it, and their release and last logout go back to root's value, not the policy default. When it ends, the user's own resizes of those fields end too.",
        );
        para(
            r,
            "No resize or set gives less than 0.1 CPU, 64M memory or 32 tasks, or the user's policy default where that is less; the refusal names the minimum. A state file with a limit of zero is treated as unreadable (see FILES).",
        );
        para(
            r,
            "Expiry times are saved in the state file, so a lease runs out on time across restarts of fairshared; one that ran out while it was stopped ends when it starts. Any resize, leased or not, also ends with fairshare-ctl release and with the user's last logout.",
        );
        notices_section(r);
        section(r, "FILES");
        item(
            r,
            "/etc/fairshare/policy.d/*.yaml",
            "The policy, merged in file-name order; see fairshare-policy(5).",
        );
        item(
            r,
            "/run/fairshare.sock",
            "The socket (fairshared.socket; mode 0666). Identity comes from the kernel (SO_PEERCRED), never from the request.",
        );
        item(
            r,
            "/var/lib/fairshare/state.bin",
            "Allocations, sessions and leases (mode 0600; binary: fairshare-ctl list and status show the allocations and sessions in it). A resize is saved before it is answered, a login right after. Each save writes state.bin.tmp, flushes it and renames it over state.bin, so a crash leaves the old file or the new one. A state.json, saved by an earlier version (an upgrade, or a downgrade and this upgrade again), is read instead of state.bin (state.bin if it cannot be read); each save moves it away as state.json.migrated-TIME. At start fairshared answers from the saved ledger at once and, in the background, checks every running slice against the drop-ins and the ledger (setting what differs, e.g. resizes after a reboot), restarts lease timers and checks sessions against logind. A file that cannot be read (or whose checksum does not match) is moved aside as state.bin.corrupt-TIME (state.json.corrupt-TIME; TIME in seconds since 1970) and the ledger is rebuilt from logind and the policy: root's sets, resizes and leases in it are lost (a backup copy of state.bin put back with fairshared stopped restores them). When the state cannot be saved (disk full, read-only), a change is still applied and the answer says it was not saved.",
        );
        item(
            r,
            "/run/fairshared/lock",
            "Held (flock) by the running fairshared: a second one started on the same host refuses to run, since each manages every user slice. Mode 0600, in the unit's RuntimeDirectory.",
        );
        item(
            r,
            "/var/lib/fairshare/policy.last-good/",
            "A copy of the last policy that loaded, what fairshared runs on when the policy on disk has errors at start.",
        );
        item(
            r,
            "/etc/systemd/system/user-.slice.d/40-fairshare.conf",
            "The policy default, applied by systemd to every user slice as it starts (see THE POLICY DEFAULT FROM SYSTEMD).",
        );
        item(
            r,
            "/etc/systemd/system/user-UID.slice.d/40-fairshare.conf",
            "One user's own default, or a comment-only file for a user fairshare does not limit.",
        );
        item(
            r,
            "/run/systemd/system.control/user-UID.slice.d/",
            "Resizes, leases and root's sets in force, as systemd runtime drop-ins written through SetUnitProperties. They stay when fairshared stops or restarts, and go at reboot.",
        );
        item(
            r,
            "/var/lib/fairshare/notices.json",
            "Each user's recent events (the last 32, for a week) and their notices choice (mode 0600), written like state.bin a few seconds after a change and at stop. One that cannot be read is moved aside as notices.json.corrupt-TIME.",
        );
        item(
            r,
            "/dev/kmsg",
            "The kernel log, read only for the pid and name of processes an OOM killed; without it (a container), notices say \"a process was killed\".",
        );
        section(r, "EXIT STATUS");
        item(
            r,
            "0",
            "Stopped by SIGTERM or SIGINT (the limits stay in force); --check found the policy valid; --write-defaults, --remove-defaults or --reload did what they were asked.",
        );
        item(
            r,
            "78",
            "The policy has errors (with --check or --write-defaults, which then changes no file; at start only when no policy ever loaded here); each is printed with its file, line and field.",
        );
        item(
            r,
            "1",
            "Any other reason it could not run: not root, the socket in use, no D-Bus system bus, the state directory unusable; with --reload, the daemon refused the policy (its errors on stderr) or could not be asked.",
        );
        section(r, "ENVIRONMENT");
        item(
            r,
            "RUST_LOG",
            "Log filter, e.g. debug or fairshared=trace (default info). Under systemd fairshared logs to the journal, with structured fields such as UID, USER, OLD, NEW, BY and REASON.",
        );
        section(r, "EXAMPLES");
        example(
            r,
            &[
                "fairshared",
                "fairshared policy.yaml /tmp/fairshare.sock",
                "fairshared --check /etc/fairshare/policy.d",
                "systemctl reload fairshared",
                "fairshared --write-defaults",
            ],
        );
        para(
            r,
            "The first uses /etc/fairshare/policy.d/ and /run/fairshare.sock (or the socket systemd passes); the second is the original quick start (it refuses to start while another fairshared runs on the host: one per host, since each manages every user slice); the third checks a policy (and the drop-ins of others) and exits; the fourth re-reads the policy of a running daemon and fails with its errors; the last writes the policy default drop-ins without a daemon.",
        );
        section(r, "SEE ALSO");
        r.text([roman(
            "fairshare-ctl(1), fairshare-policy(5), pam_fairshare(8), systemctl(1), journalctl(1), systemd.resource-control(5)",
        )]);
    })
}

fn ctl_page(cmd: &clap::Command) -> Result<String, String> {
    clap_page(cmd.clone(), "FAIRSHARE-CTL", "1", |r| {
        section(r, "LEASES");
        para(
            r,
            "fairshare-ctl resize --for DURATION (30m, 4h, 2d) makes a resize last that long; then the slice goes back to the policy default and fairshare-ctl status says so. The policy may cap how long you hold more than your default in one go (leases.max_duration): a resize without --for gets the rest of that time, resizing again during the lease keeps its end (it is not renewed by asking again), and a --for past its end is refused. fairshare-ctl release ends it; a resize after that starts a new lease. Any resize also ends at your last logout. See fairshared(8).",
        );
        section(r, "ROOT'S SETTING");
        para(
            r,
            "sudo fairshare-ctl set USER sets the fields it names for USER, beyond their maximum if need be, and binds them: while it is in force, USER's own resizes of those fields may go lower but not higher, and their release and last logout go back to root's value, not the policy default. set USER --for DURATION ends it then; set USER --default ends it at once. fairshare-ctl status shows it (root's set) and its end. Only the fields a resize names are checked against the maximum, so a user whose cpu root set above their maximum can still resize their memory.",
        );
        section(r, "LIMITS");
        para(
            r,
            "No resize or set gives less than 0.1 CPU, 64M memory or 32 tasks, or the user's policy default where that is less: below that a login cannot start a shell. The refusal names the minimum.",
        );
        notices_section(r);
        section(r, "EXIT STATUS");
        item(r, "0", "Done.");
        item(
            r,
            "1",
            "Refused by fairshared; the reason is on standard error, in one line.",
        );
        item(r, "2", "Bad usage.");
        item(
            r,
            "3",
            "fairshared is unreachable or did not answer in time. Root is given the systemctl command to start or check it, a user is told to ask their admin; with --json the error is printed on standard output as JSON ({\"type\":\"error\",\"code\":\"unreachable\",...}).",
        );
        item(
            r,
            "78",
            "check: the policy has errors, each printed with its file, line and field.",
        );
        section(r, "ENVIRONMENT");
        item(
            r,
            "FAIRSHARE_SOCKET",
            "The socket to use when --socket is not given (default /run/fairshare.sock).",
        );
        section(r, "EXAMPLES");
        example(
            r,
            &[
                "fairshare-ctl status",
                "fairshare-ctl resize --cpu 4 --mem 16G",
                "fairshare-ctl resize --cpu 8 --for 4h",
                "fairshare-ctl release",
                "fairshare-ctl events --since 1d",
                "fairshare-ctl notices off",
                "sudo fairshare-ctl list",
                "sudo fairshare-ctl status alice",
                "sudo fairshare-ctl set alice --cpu 8 --mem 32G",
                "sudo fairshare-ctl set alice --cpu 0.5 --for 2h",
                "sudo fairshare-ctl set alice --default",
                "fairshare-ctl check /etc/fairshare/policy.d",
            ],
        );
        section(r, "SEE ALSO");
        r.text([roman(
            "fairshared(8), fairshare-policy(5), pam_fairshare(8), and a page per subcommand: fairshare-ctl-status(1), fairshare-ctl-resize(1), fairshare-ctl-check(1), ...",
        )]);
    })
}

fn subcommand_page(sc: &clap::Command, name: &str) -> Result<String, String> {
    let title = name.to_uppercase();
    let is_check = sc.get_name() == "check";
    clap_page(sc.clone(), &title, "1", |r| {
        if is_check {
            section(r, "EXIT STATUS");
            item(
                r,
                "0",
                "The policy is valid (warnings may have been printed).",
            );
            item(
                r,
                "78",
                "The policy has errors, each printed with its file, line and field.",
            );
        }
        section(r, "SEE ALSO");
        r.text([roman(
            "fairshare-ctl(1), fairshared(8), fairshare-policy(5)",
        )]);
    })
}

fn page(title: &str, section_no: &str, about: &str) -> Roff {
    let mut r = Roff::new();
    head(&mut r, title, section_no);
    section(&mut r, "NAME");
    r.text([roman(about)]);
    r
}

fn pam_page() -> String {
    let mut r = page(
        "PAM_FAIRSHARE",
        "8",
        "pam_fairshare - give every login its fair CPU, memory and task limits",
    );
    section(&mut r, "SYNOPSIS");
    r.text([
        bold("session required pam_fairshare.so"),
        roman(" ["),
        italic("arguments"),
        roman("]"),
    ]);
    section(&mut r, "DESCRIPTION");
    para(
        &mut r,
        "At session open, pam_fairshare tells fairshared(8) that the user opened a session (uid, the session process, service, tty, remote host and, when pam_systemd ran before it, logind's session id); fairshared counts it and makes sure the user's slice, user-UID.slice, has the user's allocation: a slice that started with the right values from systemd's drop-ins (see fairshared(8)) needs no change, so such a login costs one round trip and no call to systemd. At session close it says the session ended; the last one puts back the values that differ from the user's default. The other PAM entry points do nothing (PAM_IGNORE).",
    );
    para(
        &mut r,
        "It makes one blocking round trip with a single deadline, starts no threads and keeps no state. Root, system accounts and users unknown to the host pass straight through. Messages go to syslog (the journal) as pam_fairshare(SERVICE:session).",
    );
    para(
        &mut r,
        "Put the line after pam_systemd. On Debian and Ubuntu, pam-auth-update --enable fairshare does it, in the interactive and non-interactive session stacks; a session without pam_systemd (cron's, for instance) is moved into the user's slice by fairshared.",
    );
    section(&mut r, "OPTIONS");
    for (arg, text) in pam_fairshare::config::ARGUMENTS {
        item(&mut r, arg, text);
    }
    para(
        &mut r,
        "Unknown or malformed arguments are logged and ignored.",
    );
    section(&mut r, "THE LOGIN LINE");
    para(
        &mut r,
        "fairshared answers each session open with a line for an interactive login, which the module passes to the login program as PAM_TEXT_INFO (no extra round trip):",
    );
    r.control("nf", []);
    r.text([roman(
        "fairshare: 2 CPUs, 8G memory, 4096 tasks on this host (you may resize up to 8 CPUs, 32G: fairshare-ctl resize)",
    )]);
    r.control("fi", []);
    para(
        &mut r,
        "sshd opens the session before it knows what follows and shows such text only where it shows the message of the day: an interactive shell, not ssh host cmd, scp, sftp or rsync, and not for users with ~/.hushlogin. login(1) passes PAM_SILENT for ~/.hushlogin, and nothing is sent then. Only the services named by login_line= (sshd and login by default) show it: su would print it even for su -c cmd, into the command's output. The policy's notices.login_line: false turns it off for the host.",
    );
    section(&mut r, "RETURN VALUES");
    item(
        &mut r,
        "PAM_SUCCESS",
        "the session is known to fairshare, or fairshared was unreachable with fail=open",
    );
    item(
        &mut r,
        "PAM_IGNORE",
        "nothing to do: root, a system account or a user unknown to the host",
    );
    item(
        &mut r,
        "PAM_SESSION_ERR",
        "fail=closed and the limits could not be applied",
    );
    section(&mut r, "EXAMPLES");
    r.control("nf", []);
    r.text([roman(
        "session optional pam_systemd.so\nsession required pam_fairshare.so timeout_ms=500",
    )]);
    r.control("fi", []);
    section(&mut r, "SEE ALSO");
    r.text([roman(
        "fairshared(8), fairshare-ctl(1), fairshare-policy(5), pam(8), pam_systemd(8)",
    )]);
    r.render()
}

/// The NOTICES section of fairshared(8) and fairshare-ctl(1).
fn notices_section(r: &mut Roff) {
    section(r, "NOTICES");
    para(
        r,
        "When the kernel kills a process because the user's slice reached its memory limit, or the CPU limit holds the user's processes back for most of a minute (or reclaim above the soft limit stalls them), fairshared records an event and writes a notice to the terminals of the user's logind sessions (ssh -t logins), once per burst, naming the limit and the resize that would lift it:",
    );
    r.control("nf", []);
    r.text([roman(
        "fairshare: process 4242 (make) was killed: your processes reached their memory limit of 8G.\n  You may raise it up to 32G: fairshare-ctl resize --mem 16G\n  (fairshare-ctl events lists what happened; fairshare-ctl notices off stops these messages)",
    )]);
    r.control("fi", []);
    para(
        r,
        "fairshare-ctl events lists a user's events (root: --user NAME), fairshare-ctl status the last five; fairshare-ctl notices off|on|default sets whether the user's terminals get notices (saved; the policy's notices.terminal is the default). Terminals with mesg n never get one. Process names are shown escaped (an escape character as backslash-x1b): whoever runs a process chooses its name. Each event is also a journal entry with the fields FAIRSHARE_EVENT (oom_kill, cpu_throttled, memory_stall), UID, USER, LIMIT, COUNT, PIDS, NAMES, SHARE_PCT, NOTIFIED and TERMINALS (journalctl FAIRSHARE_EVENT=oom_kill), and is counted in the metrics (fairshare_events_total, fairshare_notices_total).",
    );
}

fn policy_page() -> String {
    let mut r = page(
        "FAIRSHARE-POLICY",
        "5",
        "fairshare-policy - who gets which CPU, memory, task and IO limits and shares on this host",
    );
    section(&mut r, "SYNOPSIS");
    r.text([roman("/etc/fairshare/policy.d/*.yaml")]);
    section(&mut r, "DESCRIPTION");
    para(
        &mut r,
        "The policy of fairshared(8) is YAML: one file, or every *.yaml and *.yml file of a directory merged in file-name order, like systemd drop-ins. A later file overrides single fields of an earlier one; exempt lists add up. Unknown keys, zero, negative, NaN and overflowing values and unknown units are errors; every error names the file, line and field, and all are reported at once. Check a policy with fairshared --check, or fairshare-ctl check without root, and apply it with fairshare-ctl reload or systemctl reload fairshared; a bad one is refused and the old one stays in force (see RELOADING THE POLICY in fairshared(8)). Both checks also warn when groups set the same field to different values, and say which group gives each user in several groups which field.",
    );
    section(&mut r, "KEYS");
    for (key, text) in fairshare_policy::FIELDS {
        item(&mut r, key, text);
    }
    section(&mut r, "EXAMPLE");
    r.control("nf", []);
    r.text([roman(
        "defaults: {cpu: 2, mem: 8G, mem_high: 90%}\nmax:      {cpu: 8, mem: 32G, tasks: 8192}\nexempt:   {groups: [admins]}\ngroups:\n  students:\n    defaults: {cpu: 1, mem: 4G}\n    max: {cpu: 2, mem: 8G}\nleases:   {max_duration: 8h}",
    )]);
    r.control("fi", []);
    para(
        &mut r,
        "Fair share under contention: weights, a memory guarantee, swap and IO limits, named tiers, and bursting into idle CPU. Five tiers (critical, high, normal, low, scavenger) ship as an example policy in the fairshare sources, docs/examples/tiers.yaml. fairshared --check and fairshare-ctl check read, validate and summarise these keys, and warn about those the host's cgroup layout cannot enforce. In this version fairshared applies weight, io_weight, swap and the io limits (per disk: IOReadBandwidthMax, IOWriteBandwidthMax, IOReadIOPSMax, IOWriteIOPSMax) to user slices (systemd drop-ins and running slices, like the ceilings), and mem_low to the running slices of logged-in users only (see below); io limits are not resized. An io target is a device (/dev/sdb) or a path whose disk fairshare finds; a path must be one only root can change (no symbolic link on the way, every part owned by root, no directory on the way writable by others unless sticky), since systemd looks it up again each time it applies the limit; another gets no limit and --check says why. While the policy gives any mem_low, user.slice gets MemoryLow = capacity.mem_low (on cgroup v2 a user's guarantee counts only as far as its parents' does). Users resize weight, io_weight, mem_low and swap within max (fairshare-ctl resize --weight, --io-weight, --mem-low, --swap); a larger mem_low is refused when the guarantees handed out would exceed capacity.mem_low; --swap max lifts the swap limit where max sets none. At every login, logout, resize and reload the guarantees of the users with sessions (and those root set) are kept within capacity.mem_low by its when_full (scale, first_come): the slices whose guarantee changes get MemoryLow (lowered at once, raised 30 s later), and fairshare-ctl status says when a guarantee is cut down. A guarantee is held from a user's first login to their last logout (or while set explicitly): processes left behind keep the limits, not the guarantee. It is never in a drop-in (systemd would give it to every slice that starts, uncounted), so no login gets one while fairshared is down.",
    );
    para(
        &mut r,
        "Bursting (bursting.enabled, off by default): while the host has idle CPU, the CPU quota of users allowed to burst (defaults.burst, true unless a group or user sets false) is lifted to their max.cpu (up_to: max) or every CPU (up_to: host); users who all want more share the idle CPUs by their weights. fairshared samples the host's CPU time (the root cgroup's cpu.stat, on cgroup v1 cpuacct.usage; in a container the container's) and each logged-in user's slice every interval (1s; 1s to 60s), only while bursting is on and someone is logged in. The host is busy when its load without the part of each burst above its user's allocation is at or above busy_threshold (90%) of its CPUs for busy_for (3s): quotas return to allocations; idle below idle_threshold (70%) for idle_for (10s): lifted again. With contention: allocation (default share), two or more users wanting more than their allocation (using more than it, all of a quota held at it, or with tasks waiting for a CPU half the time, from their slice's cpu.pressure) also make the host busy. Only CPUQuota is lifted, as a runtime value; memory, tasks and every other limit stay the allocation's, and capacity, leases and root's settings count the allocation. Any change to the user (resize, lease end, last logout, reload) puts the allocation's quota back; a restarted fairshared starts from the allocations and watches the host for idle_for first. fairshare-ctl status says when a user is bursting. A host without the root's CPU time never bursts.",
    );
    r.control("nf", []);
    r.text([roman(
        "defaults:\n  cpu: 1\n  mem: 1G\n  weight: 100\n  mem_low: 256M\n  io:\n    /home: {read_bw: 50M, write_bw: 50M, write_iops: 1000}\ntiers:\n  interactive:\n    defaults: {cpu: 2, mem: 4G, weight: 200, mem_low: 2G}\n    max: {cpu: 8, mem: 16G}\n  batch:\n    defaults: {cpu: 0.5, weight: 50, mem_low: 0, swap: 0}\ngroups:\n  staff: {tier: interactive}\n  students: {tier: batch, max: {cpu: 2}}\ncapacity:\n  mem_low: {total: 50%, when_full: scale}\nbursting:\n  enabled: true\n  up_to: max\n  busy_threshold: 90%\n  idle_threshold: 70%\n  busy_for: 3s\n  idle_for: 10s\n  interval: 1s\n  contention: share",
    )]);
    r.control("fi", []);
    section(&mut r, "SEE ALSO");
    r.text([roman(
        "fairshared(8), fairshare-ctl(1), pam_fairshare(8), systemd.resource-control(5)",
    )]);
    r.render()
}
