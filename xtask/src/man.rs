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
        section(r, "RELOADING THE POLICY");
        para(
            r,
            "fairshared reads its policy again, from the path it was started with, on SIGHUP (which systemctl reload fairshared sends) and when root runs fairshare-ctl reload. A policy with errors is refused and the old one stays in force: fairshare-ctl reload prints every error and exits 1; after SIGHUP, and so after systemctl reload, which itself reports success, the errors are only in the journal (journalctl -u fairshared). Check a changed policy first with fairshared --check or fairshare-ctl check.",
        );
        para(
            r,
            "A policy that loads is applied at once to every user fairshared tracks (users with a session or an allocation): a user without a resize gets the new default, a resize above a lowered maximum is cut down to it, and a user who became exempt has their limits lifted. fairshare-ctl reload answers how many users' limits changed.",
        );
        para(
            r,
            "A policy with errors at start stops fairshared with exit status 78, which the shipped fairshared.service tells systemd not to restart on: fix the policy, then systemctl restart fairshared.",
        );
        section(r, "LEASES");
        para(
            r,
            "A resize can be given a lifetime (fairshare-ctl resize --for 4h; duration in the request). When it runs out, the user's slice goes back to the policy default and fairshare-ctl status says so. With leases.max_duration in the policy, a user's own resize above their default lasts at most that long: one without --for gets that duration, a longer --for is refused. Root's fairshare-ctl set is not capped, and without --for lasts until it is released. A new resize replaces the lease of the one before it.",
        );
        para(
            r,
            "Expiry times are saved in the state file, so a lease runs out on time across restarts of fairshared; one that ran out while it was stopped ends when it starts. Any resize, leased or not, also ends with fairshare-ctl release and with the user's last logout.",
        );
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
            "/var/lib/fairshare/state.json",
            "Allocations, sessions and leases (mode 0600). A resize is saved before it is answered, a login right after. Each save writes state.json.tmp, flushes it and renames it over state.json, so a crash leaves the old file or the new one. At start fairshared answers from the saved ledger at once and, in the background, applies every user's limits again, restarts lease timers and checks sessions against logind. A file that cannot be read is moved aside as state.json.corrupt-TIME and the ledger is rebuilt from logind and the policy. When the state cannot be saved (disk full, read-only), a change is still applied and the answer says it was not saved.",
        );
        item(
            r,
            "/run/systemd/system.control/user-UID.slice.d/",
            "The limits in force, as systemd runtime drop-ins written through SetUnitProperties. They stay when fairshared stops or restarts, and go at reboot.",
        );
        section(r, "EXIT STATUS");
        item(
            r,
            "0",
            "Stopped by SIGTERM or SIGINT (the limits stay in force), or --check found the policy valid.",
        );
        item(
            r,
            "78",
            "The policy has errors (at start, or with --check); each is printed with its file, line and field.",
        );
        item(
            r,
            "1",
            "Any other reason it could not run: not root, the socket in use, no D-Bus system bus, the state directory unusable.",
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
            ],
        );
        para(
            r,
            "The first uses /etc/fairshare/policy.d/ and /run/fairshare.sock (or the socket systemd passes); the second is the original quick start; the third checks a policy and exits; the last re-reads the policy of a running daemon.",
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
            "fairshare-ctl resize --for DURATION (30m, 4h, 2d) makes a resize last that long; then the slice goes back to the policy default and fairshare-ctl status says so. The policy may cap how long a resize above the default lasts (leases.max_duration): a resize without --for then gets that duration, and a longer --for is refused. Any resize also ends with fairshare-ctl release and at the user's last logout. See fairshared(8).",
        );
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
            "fairshared is unreachable or did not answer in time.",
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
                "sudo fairshare-ctl list",
                "sudo fairshare-ctl set alice --cpu 8 --mem 32G",
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
        "At session open, pam_fairshare tells fairshared(8) that the user opened a session (uid, the session process, service, tty, remote host and, when pam_systemd ran before it, logind's session id); fairshared then applies the user's allocation to their slice, user-UID.slice. At session close it says the session ended; the last one releases the allocation. The other PAM entry points do nothing (PAM_IGNORE).",
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
        "Fair share under contention: weights, a memory guarantee, swap and IO limits, named tiers, and bursting into idle CPU. Five tiers (critical, high, normal, low, scavenger) ship as an example policy in the fairshare sources, docs/examples/tiers.yaml. In this version fairshared --check and fairshare-ctl check read, validate and summarise these keys, and warn about those the host's cgroup layout cannot enforce; fairshared does not apply them to user slices yet.",
    );
    r.control("nf", []);
    r.text([roman(
        "defaults:\n  cpu: 1\n  mem: 1G\n  weight: 100\n  mem_low: 256M\n  io:\n    /home: {read_bw: 50M, write_bw: 50M, write_iops: 1000}\ntiers:\n  interactive:\n    defaults: {cpu: 2, mem: 4G, weight: 200, mem_low: 2G}\n    max: {cpu: 8, mem: 16G}\n  batch:\n    defaults: {cpu: 0.5, weight: 50, mem_low: 0, swap: 0}\ngroups:\n  staff: {tier: interactive}\n  students: {tier: batch, max: {cpu: 2}}\ncapacity:\n  mem_low: {total: 50%, when_full: scale}\nbursting: {enabled: true, up_to: max}",
    )]);
    r.control("fi", []);
    section(&mut r, "SEE ALSO");
    r.text([roman(
        "fairshared(8), fairshare-ctl(1), pam_fairshare(8), systemd.resource-control(5)",
    )]);
    r.render()
}
