//! Build helpers, run by the Makefile and script/test:
//!
//! ```text
//! cargo run -p xtask -- man DIR          # fairshared.8 fairshare-ctl.1 (and one page per subcommand) pam_fairshare.8 fairshare-policy.5
//! cargo run -p xtask -- completions DIR  # bash, zsh and fish completions
//! cargo run -p xtask -- check DIR        # both, then lint the pages and drive the completions in bash, zsh and fish
//! cargo run -p xtask -- msrv             # does any dependency need a newer Rust than rust-version?
//! ```
//!
//! Everything is generated from the code: the clap definitions of the two
//! programs, the module's argument table and the policy's field table, so the
//! pages cannot drift from what the programs do. `check` needs mandoc, man,
//! bash, zsh and fish (script/setup installs them).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod check;
mod completions;
mod man;
mod msrv;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, dir] if cmd == "man" => man::generate(Path::new(dir)),
        [cmd, dir] if cmd == "completions" => completions::generate(Path::new(dir)),
        [cmd, dir] if cmd == "check" => check::run(Path::new(dir)),
        [cmd] if cmd == "msrv" => msrv::check().map(|l| l.into_iter().map(PathBuf::from).collect()),
        _ => Err(
            "usage: xtask man DIR | xtask completions DIR | xtask check DIR | xtask msrv"
                .to_string(),
        ),
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

#[cfg(test)]
mod tests;
