//! Build helpers, run by the Makefile:
//!
//! ```text
//! cargo run -p xtask -- man DIR          # fairshared.8 fairshare-ctl.1 pam_fairshare.8 fairshare-policy.5
//! cargo run -p xtask -- completions DIR  # bash, zsh and fish completions
//! cargo run -p xtask -- msrv             # does any dependency need a newer Rust than rust-version?
//! ```
//!
//! Everything is generated from the code: the clap definitions of the two
//! programs, the module's argument table and the policy's field table, so the
//! pages cannot drift from what the programs do.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

mod msrv;
use roff::{Roff, bold, italic, roman};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, dir] if cmd == "man" => man(Path::new(dir)),
        [cmd, dir] if cmd == "completions" => completions(Path::new(dir)),
        [cmd] if cmd == "msrv" => msrv::check().map(|l| l.into_iter().map(PathBuf::from).collect()),
        _ => Err("usage: xtask man DIR | xtask completions DIR | xtask msrv".to_string()),
    };
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{}", l.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &Path, name: &str, text: &[u8]) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

fn man(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    clap_mangen::Man::new(fairshared::cli::command())
        .section("8")
        .render(&mut out)
        .map_err(|e| e.to_string())?;
    let mut files = vec![write(dir, "fairshared.8", &out)?];
    // fairshare-ctl.1 and a page per subcommand (fairshare-ctl-resize.1, ...)
    clap_mangen::generate_to(fairshare_ctl::cli::command(), dir).map_err(|e| e.to_string())?;
    let mut ctl: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fairshare-ctl") && n.ends_with(".1"))
        })
        .collect();
    ctl.sort();
    files.extend(ctl);
    files.push(write(dir, "pam_fairshare.8", pam_page().as_bytes())?);
    files.push(write(dir, "fairshare-policy.5", policy_page().as_bytes())?);
    Ok(files)
}

fn completions(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for (mut cmd, name) in [
        (fairshare_ctl::cli::command(), "fairshare-ctl"),
        (fairshared::cli::command(), "fairshared"),
    ] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut out);
            let file = match shell {
                Shell::Zsh => format!("_{name}"),
                Shell::Fish => format!("{name}.fish"),
                _ => name.to_string(),
            };
            files.push(write(&dir.join(shell.to_string()), &file, &out)?);
        }
    }
    Ok(files)
}

fn page(title: &str, section: &str, about: &str) -> Roff {
    let mut r = Roff::new();
    r.control("TH", [title, section, "", "fairshare", "fairshare"]);
    r.control("SH", ["NAME"]);
    r.text([roman(about)]);
    r
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

fn pam_page() -> String {
    let mut r = page(
        "PAM_FAIRSHARE",
        "8",
        "pam_fairshare - give every login its fair CPU, memory and task limits",
    );
    r.control("SH", ["SYNOPSIS"]);
    r.text([
        bold("session required pam_fairshare.so"),
        roman(" ["),
        italic("arguments"),
        roman("]"),
    ]);
    r.control("SH", ["DESCRIPTION"]);
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
    r.control("SH", ["OPTIONS"]);
    for (arg, text) in pam_fairshare::config::ARGUMENTS {
        item(&mut r, arg, text);
    }
    para(
        &mut r,
        "Unknown or malformed arguments are logged and ignored.",
    );
    r.control("SH", ["RETURN VALUES"]);
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
    r.control("SH", ["EXAMPLES"]);
    r.control("nf", []);
    r.text([roman(
        "session optional pam_systemd.so\nsession required pam_fairshare.so timeout_ms=500",
    )]);
    r.control("fi", []);
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "fairshared(8), fairshare-ctl(1), fairshare-policy(5), pam(8), pam_systemd(8)",
    )]);
    r.render()
}

fn policy_page() -> String {
    let mut r = page(
        "FAIRSHARE-POLICY",
        "5",
        "fairshare-policy - who gets which CPU, memory and task limits on this host",
    );
    r.control("SH", ["SYNOPSIS"]);
    r.text([roman("/etc/fairshare/policy.d/*.yaml")]);
    r.control("SH", ["DESCRIPTION"]);
    para(
        &mut r,
        "The policy of fairshared(8) is YAML: one file, or every *.yaml and *.yml file of a directory merged in file-name order, like systemd drop-ins. A later file overrides single fields of an earlier one; exempt lists add up. Unknown keys, zero, negative, NaN and overflowing values and unknown units are errors; every error names the file, line and field, and all are reported at once. Check a policy with fairshared --check and apply it with systemctl reload fairshared; a bad one is refused and the old one stays in force.",
    );
    r.control("SH", ["KEYS"]);
    for (key, text) in fairshare_policy::FIELDS {
        item(&mut r, key, text);
    }
    r.control("SH", ["EXAMPLE"]);
    r.control("nf", []);
    r.text([roman(
        "defaults: {cpu: 2, mem: 8G, mem_high: 90%}\nmax:      {cpu: 8, mem: 32G, tasks: 8192}\nexempt:   {groups: [admins]}\ngroups:\n  students:\n    defaults: {cpu: 1, mem: 4G}\n    max: {cpu: 2, mem: 8G}\nleases:   {max_duration: 8h}",
    )]);
    r.control("fi", []);
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "fairshared(8), fairshare-ctl(1), pam_fairshare(8), systemd.resource-control(5)",
    )]);
    r.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_are_generated() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man(dir.path()).unwrap();
        assert!(pages.len() >= 10, "{pages:?}");
        let ctl = std::fs::read_to_string(dir.path().join("fairshare-ctl.1")).unwrap();
        assert!(ctl.contains("fairshare\\-ctl\\-resize(1)"), "{ctl}");
        let resize = std::fs::read_to_string(dir.path().join("fairshare-ctl-resize.1")).unwrap();
        assert!(
            resize.contains("\\-\\-for") && resize.contains("\\-\\-mem"),
            "{resize}"
        );
        let daemon = std::fs::read_to_string(dir.path().join("fairshared.8")).unwrap();
        assert!(daemon.contains("\\-\\-check"), "{daemon}");
        let pam = std::fs::read_to_string(dir.path().join("pam_fairshare.8")).unwrap();
        assert!(
            pam.contains("fail=open|closed") && pam.contains("skip_uid_below"),
            "{pam}"
        );
        let pol = std::fs::read_to_string(dir.path().join("fairshare-policy.5")).unwrap();
        assert!(pol.contains("leases.max_duration") && pol.contains("capacity.overcommit"));
        let comp = completions(dir.path()).unwrap();
        assert_eq!(comp.len(), 6);
        let bash = std::fs::read_to_string(dir.path().join("bash/fairshare-ctl")).unwrap();
        assert!(bash.contains("resize"));
    }
}
