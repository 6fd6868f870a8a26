//! `xtask msrv`: is the declared `rust-version` (the MSRV) at least what every
//! crate built for this host declares it needs?
//!
//! Only one toolchain is installed where CI runs, so the MSRV cannot be proved
//! by building with it. Two checks stand in: clippy's `incompatible_msrv`
//! lint (on by default; it reads `rust-version`) finds standard-library APIs
//! newer than the MSRV in our code, and this one finds dependencies whose
//! own `rust-version` is newer. Language features newer than the MSRV are
//! caught by neither: only a build with that toolchain finds those.

use std::process::Command;

/// `1.89` or `1.89.0` as comparable numbers.
fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    let major = it.next()??;
    let minor = it.next().unwrap_or(Some(0))?;
    let patch = it.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

/// The packages of `cargo metadata` (its JSON) that need a newer Rust than
/// the workspace members declare, as `name version needs X`, and the MSRV.
pub fn too_new(metadata: &serde_json::Value) -> Result<(String, Vec<String>), String> {
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .ok_or("cargo metadata: no workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages = metadata["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    let version = |p: &serde_json::Value| p["rust_version"].as_str().and_then(parse);
    let mut declared = None;
    for p in packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(&id)))
    {
        let name = p["name"].as_str().unwrap_or("?");
        let v = version(p).ok_or(format!(
            "{name} declares no rust-version; inherit the workspace's (rust-version.workspace = true)"
        ))?;
        match declared {
            None => declared = Some(v),
            Some(d) if d != v => {
                return Err(format!(
                    "{name} declares rust-version {}.{}, others {}.{}: inherit the workspace's",
                    v.0, v.1, d.0, d.1
                ));
            }
            _ => {}
        }
    }
    let msrv = declared.ok_or("no workspace members")?;
    let mut newer: Vec<((u32, u32, u32), String)> = packages
        .iter()
        .filter_map(|p| {
            let v = version(p)?;
            (v > msrv).then(|| {
                (
                    v,
                    format!(
                        "{} {} needs Rust {}",
                        p["name"].as_str().unwrap_or("?"),
                        p["version"].as_str().unwrap_or("?"),
                        p["rust_version"].as_str().unwrap_or("?")
                    ),
                )
            })
        })
        .collect();
    newer.sort();
    Ok((
        format!("{}.{}", msrv.0, msrv.1),
        newer.into_iter().rev().map(|(_, s)| s).collect(),
    ))
}

/// Runs the check on this workspace, for this host's target.
pub fn check() -> Result<Vec<String>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or("rustc -vV names no host")?;
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", &host])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let (msrv, newer) = too_new(&meta)?;
    if newer.is_empty() {
        Ok(vec![format!(
            "rust-version {msrv}: no dependency needs a newer Rust"
        )])
    } else {
        Err(format!(
            "the workspace declares rust-version {msrv}, but:\n  {}\nraise rust-version in Cargo.toml ([workspace.package])",
            newer.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ours: &str, dep: &str) -> serde_json::Value {
        serde_json::json!({
            "workspace_members": ["a 0.1.0", "b 0.1.0"],
            "packages": [
                {"id": "a 0.1.0", "name": "a", "version": "0.1.0", "rust_version": ours},
                {"id": "b 0.1.0", "name": "b", "version": "0.1.0", "rust_version": ours},
                {"id": "z 6.0.0", "name": "z", "version": "6.0.0", "rust_version": dep},
                {"id": "old 1.0.0", "name": "old", "version": "1.0.0", "rust_version": null},
            ]
        })
    }

    #[test]
    fn a_dependency_needing_a_newer_rust_is_named() {
        let (msrv, newer) = too_new(&meta("1.85", "1.89")).unwrap();
        assert_eq!(msrv, "1.85");
        assert_eq!(newer, ["z 6.0.0 needs Rust 1.89"]);
        assert!(too_new(&meta("1.89", "1.89.0")).unwrap().1.is_empty());
        assert!(too_new(&meta("1.90", "1.89")).unwrap().1.is_empty());
    }

    #[test]
    fn members_must_agree_on_one_msrv() {
        let mut m = meta("1.89", "1.0");
        m["packages"][1]["rust_version"] = serde_json::Value::Null;
        assert!(
            too_new(&m)
                .unwrap_err()
                .contains("b declares no rust-version")
        );
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(parse("1.100").unwrap() > parse("1.89.0").unwrap());
        assert_eq!(parse("1.89"), Some((1, 89, 0)));
        assert_eq!(parse("x"), None);
    }
}
