//! `xtask check DIR`: generates the man pages and completions into DIR and
//! tries them as a person would, failing on the first kind of breakage that
//! reached users before:
//!
//! * every page passes `mandoc -T lint -W warning` and renders through
//!   `man --warnings` without a warning, and no rendered line ends in a
//!   word broken by hyphenation (a path split as `pol-` / `icy.d`);
//! * the completions are sourced into real bash, zsh and fish, and each
//!   must offer what a person typing TAB expects (`fairshare-ctl resize --`
//!   offers `--cpu`) and nothing that does not apply (`check --` offers no
//!   `--json`). bash is driven through its completion function with
//!   `COMP_WORDS`/`COMP_CWORD`, zsh through a pseudo-terminal (`zsh/zpty`)
//!   and a real TAB, fish through `complete -C`.
//!
//! It needs mandoc, man, bash, zsh and fish; script/setup installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{completions, man};

/// What TAB must offer after `line`, and what it must not.
struct Case {
    line: &'static str,
    want: &'static [&'static str],
    not: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        line: "fairshare-ctl resize --",
        want: &["--cpu", "--mem", "--tasks", "--for", "--json"],
        not: &[],
    },
    Case {
        line: "fairshare-ctl request --",
        want: &["--cpu", "--for"],
        not: &[],
    },
    Case {
        line: "fairshare-ctl set bob --",
        want: &["--default", "--force", "--cpu"],
        not: &[],
    },
    Case {
        line: "fairshare-ctl status --",
        want: &["--user", "--json", "--socket"],
        not: &["--cpu"],
    },
    Case {
        line: "fairshare-ctl ",
        want: &["status", "resize", "release", "set", "check"],
        not: &[],
    },
    Case {
        line: "fairshare-ctl check --",
        want: &["--help"],
        not: &["--json", "--socket", "--timeout"],
    },
    Case {
        line: "fairshared --",
        want: &["--check", "--policy", "--state-dir"],
        not: &[],
    },
];

pub fn run(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let _ = std::fs::remove_dir_all(dir);
    let pages = man::generate(&dir.join("man"))?;
    let comp = dir.join("completions");
    completions::generate(&comp)?;
    let mut passed = 0;
    let mut failed = Vec::new();
    let mut record = |what: String, result: Result<(), String>| match result {
        Ok(()) => {
            println!("ok: {what}");
            passed += 1;
        }
        Err(e) => {
            println!("FAILED: {what}: {e}");
            failed.push(what);
        }
    };
    for page in &pages {
        let name = page
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        record(format!("man page {name} lints clean"), lint(page));
        record(
            format!("man page {name} renders without warnings"),
            render(page),
        );
    }
    for case in CASES {
        let bin = case.line.split(' ').next().unwrap_or_default();
        let bash = comp.join("bash").join(bin);
        record(
            format!("bash: {:?} + TAB", case.line),
            expect(case, bash_complete(&bash, case.line)),
        );
        record(
            format!("zsh: {:?} + TAB", case.line),
            expect(case, zsh_complete(&comp.join("zsh"), case.line)),
        );
        let fish = comp.join("fish").join(format!("{bin}.fish"));
        record(
            format!("fish: {:?} + TAB", case.line),
            expect(case, fish_complete(&fish, case.line)),
        );
    }
    println!("xtask check: {passed} passed, {} failed", failed.len());
    match failed.is_empty() {
        true => Ok(Vec::new()),
        false => Err(format!(
            "{} check(s) failed: {}",
            failed.len(),
            failed.join("; ")
        )),
    }
}

/// Runs a program; its standard output, or why it failed.
fn output(cmd: &mut Command) -> Result<(String, String), String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        format!("cannot run {shown}: {e} (script/setup installs mandoc, man, zsh and fish)")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.success() {
        true => Ok((stdout, stderr)),
        false => Err(format!(
            "{shown} exited with {}: {stderr}{stdout}",
            out.status
        )),
    }
}

fn lint(page: &Path) -> Result<(), String> {
    let (out, err) = output(
        Command::new("mandoc")
            .args(["-T", "lint", "-W", "warning"])
            .arg(page),
    )?;
    match (out + &err).trim() {
        "" => Ok(()),
        msgs => Err(msgs.to_string()),
    }
}

fn render(page: &Path) -> Result<(), String> {
    let (text, err) = output(
        Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env("LC_ALL", "C.UTF-8"),
    )?;
    if !err.trim().is_empty() {
        return Err(err);
    }
    // With hyphenation off, a line may end in a hyphen only where the text
    // has one (an option such as --for); a broken word ends in U+2010.
    if let Some(l) = text.lines().find(|l| l.trim_end().ends_with('\u{2010}')) {
        return Err(format!("a word is broken across lines: {l:?}"));
    }
    if text.lines().any(|l| l.trim() == "EXTRA") {
        return Err("a leftover EXTRA section".into());
    }
    Ok(())
}

/// Whether every wanted word is offered and no unwanted one.
fn expect(case: &Case, offered: Result<Vec<String>, String>) -> Result<(), String> {
    let offered = offered?;
    let missing: Vec<&str> = case
        .want
        .iter()
        .copied()
        .filter(|w| !offered.iter().any(|o| o == w))
        .collect();
    let extra: Vec<&str> = case
        .not
        .iter()
        .copied()
        .filter(|w| offered.iter().any(|o| o == w))
        .collect();
    match (missing.is_empty(), extra.is_empty()) {
        (true, true) => Ok(()),
        _ => Err(format!(
            "missing {missing:?}, offered but wrong {extra:?}; offered: {offered:?}"
        )),
    }
}

/// The words of a command line, with an empty last word after a space.
fn words(line: &str) -> Vec<&str> {
    line.split(' ').collect()
}

/// Sources the script into bash and calls the function it registered for
/// the command, as bash's programmable completion does.
fn bash_complete(script: &Path, line: &str) -> Result<Vec<String>, String> {
    const DRIVER: &str = r#"
source "$1"; shift
spec=$(complete -p "$1") || { echo "no completion registered for $1" >&2; exit 3; }
f=${spec##*-F }; f=${f%% *}
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
prev=""; [ "$COMP_CWORD" -gt 0 ] && prev=${COMP_WORDS[COMP_CWORD-1]}
"$f" "$1" "${COMP_WORDS[COMP_CWORD]}" "$prev"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let (out, _) = output(
        Command::new("bash")
            .args(["--noprofile", "--norc", "-c", DRIVER, "bash"])
            .arg(script)
            .args(words(line)),
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Types the line and a TAB into an interactive zsh on a pseudo-terminal,
/// with compinit and the generated function on its fpath. A wrapper of
/// `compadd` prints each match the completion adds (`HIT:WORD`), and a
/// `comppostfuncs` hook prints a marker when the completion is over, so the
/// driver waits for the completion itself, never for a guessed time.
fn zsh_complete(fpath: &Path, line: &str) -> Result<Vec<String>, String> {
    // `RE""ADY` and `END""MARK`: the echo of the typed commands must not
    // match the patterns waited for, only their output.
    const DRIVER: &str = r#"
zmodload zsh/zpty || exit 3
zpty z zsh -f -i || exit 3
zpty -w z "PS1='%% '; fpath=(${(q)1} \$fpath); autoload -Uz compinit; compinit -u -D; setopt nobeep"
zpty -w z 'compadd() { if (( ${@[(I)-[OAD]*]} )); then builtin compadd "$@"; return; fi; local -a h; builtin compadd -A h "$@"; print -rl -- "${(@)h/#/HIT:}"; builtin compadd "$@"; }'
zpty -w z 'comppostfuncs=(_fs_done); _fs_done() { print -r -- "END""MARK" }; print RE""ADY'
zpty -r z out '*READY*' || exit 4
zpty -w -n z "$2"$'\t'
zpty -r z out '*ENDMARK*' || exit 5
print -r -- "$out"
zpty -d z
"#;
    let (out, _) = output(
        Command::new("timeout")
            .args(["60", "zsh", "-f", "-c", DRIVER, "zsh"])
            .arg(fpath)
            .arg(line),
    )?;
    let plain = strip_escapes(&out);
    Ok(plain
        .split("HIT:")
        .skip(1)
        .filter_map(|h| h.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn fish_complete(script: &Path, line: &str) -> Result<Vec<String>, String> {
    let (out, _) = output(
        Command::new("fish")
            .args(["--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
            .arg(script)
            .arg(line),
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(str::to_string)
        .collect())
}

/// Terminal output without its escape sequences and carriage returns.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    // CSI: parameters, then one final letter (or ~)
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() || d == '~' {
                            break;
                        }
                    }
                }
                Some('(' | ')') => {
                    chars.next();
                }
                _ => {}
            },
            '\r' | '\u{8}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}
