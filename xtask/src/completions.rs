//! Shell completions for both programs, from their clap definitions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

use crate::write;

pub fn generate(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for (mut cmd, name) in [
        (fairshare_ctl::cli::command(), "fairshare-ctl"),
        (fairshared::cli::command(), "fairshared"),
    ] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut out);
            if shell == Shell::Bash {
                let script = String::from_utf8(out).map_err(|e| e.to_string())?;
                out = fix_bash(&script, name)?.into_bytes();
            }
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

/// The bash script tracks the words typed so far in a state variable
/// (`cmd="fairshare__ctl__subcmd__resize"`) and then picks the subcommand's
/// options with `case "${cmd}"`. clap_complete 4.6 spells the two differently
/// when the binary name has a hyphen (clap-rs/clap#6421): the loop escapes the
/// bin name's `-` as `__`, the case arms as `__subcmd__`
/// (`fairshare__subcmd__ctl__subcmd__resize`), so no subcommand's options
/// ever completed. Spell the arms as the loop does, then check that every
/// state the loop can set has an arm and every arm a state.
pub(crate) fn fix_bash(script: &str, bin: &str) -> Result<String, String> {
    const SEP: &str = "__subcmd__";
    let fixed = match bin.contains('-') {
        true => script.replace(
            &format!("{}{SEP}", bin.replace('-', SEP)),
            &format!("{}{SEP}", bin.replace('-', "__")),
        ),
        false => script.to_string(),
    };
    let (set, arms) = bash_states(&fixed);
    if set != arms {
        return Err(format!(
            "the bash completion of {bin} is inconsistent: states set {set:?}, case arms {arms:?}"
        ));
    }
    Ok(fixed)
}

/// The states a bash completion script sets (`cmd="..."`) and the arms of its
/// `case "${cmd}"`.
pub(crate) fn bash_states(script: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let set = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cmd=\""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let arms = script
        .split("case \"${cmd}\" in")
        .nth(1)
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with("        ") && !l.starts_with("         "))
        .filter_map(|l| l.trim().strip_suffix(')'))
        .map(str::to_string)
        .collect();
    (set, arms)
}
