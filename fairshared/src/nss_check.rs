//! At start: can fairshared see the users sshd sees?
//!
//! fairshared.service is sandboxed without network (`PrivateNetwork=yes`,
//! `IPAddressDeny=any`, `RestrictAddressFamilies=AF_UNIX`). Name-service
//! modules that reach their servers themselves (`ldap` of libnss-ldap, `nis`,
//! `hesiod`, …) fail in there, so their users are unknown to fairshared while
//! every login program knows them: such users get only the host-wide default.
//! The shipped generator (`fairshare-nss-generator`, run by systemd at boot
//! and at every `daemon-reload`) lifts those three settings when
//! `/etc/nsswitch.conf` names such a module; this check says so loudly when
//! the daemon still runs without the network it needs (nsswitch.conf changed
//! without a daemon-reload, the generator masked or not installed).
//!
//! Modules that ask a local daemon over a Unix socket (`sss`, `winbind`,
//! `systemd`) or read local files are fine in the sandbox. The list matches
//! the generator's (etc/systemd/fairshare-nss-generator): keep them together.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

/// NSS sources that need no network of their own.
pub const LOCAL_SOURCES: &[&str] = &[
    "files",
    "systemd",
    "sss",
    "winbind",
    "db",
    "cache",
    "extrausers",
    "altfiles",
    "usrfiles",
    "mymachines",
    "compat",
];

/// The databases fairshared looks users and their groups up in.
const DATABASES: &[&str] = &["passwd", "group", "initgroups"];

/// `passwd: ldap`-style entries of `nsswitch` (its text) that need the
/// network. `compat` counts when the passwd or group file (`compat_files`)
/// has `+`/`-` lines, which it answers from NIS.
pub fn network_sources(nsswitch: &str, compat_files: &[&str]) -> Vec<String> {
    let compat_uses_nis = compat_files
        .iter()
        .any(|f| f.lines().any(|l| l.starts_with('+') || l.starts_with('-')));
    let mut found = Vec::new();
    for line in nsswitch.lines() {
        let line = line.split('#').next().unwrap_or("");
        let Some((db, sources)) = line.split_once(':') else {
            continue;
        };
        let db = db.trim();
        if !DATABASES.contains(&db) {
            continue;
        }
        // drop the [NOTFOUND=return] actions
        let mut words = String::new();
        let mut depth = 0usize;
        for c in sources.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ if depth == 0 => words.push(c),
                _ => {}
            }
        }
        for source in words.split_whitespace() {
            let network = match source {
                "compat" => compat_uses_nis,
                s => !LOCAL_SOURCES.contains(&s),
            };
            if network {
                found.push(format!("{db}: {source}"));
            }
        }
    }
    found
}

/// What keeps this process off the network, if anything.
pub fn network_blocked() -> Option<&'static str> {
    let sock = match UdpSocket::bind("127.0.0.1:0") {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            return Some("it may not open network sockets (RestrictAddressFamilies=AF_UNIX)");
        }
        // no loopback: a network namespace whose lo is down
        Err(_) => return Some("it has no usable network (PrivateNetwork=yes)"),
    };
    // IPAddressDeny=any refuses even loopback traffic
    let sent = sock.local_addr().and_then(|me| {
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        sock.send_to(b"nss-check", me)?;
        let mut buf = [0u8; 16];
        sock.recv_from(&mut buf)
    });
    if sent.is_err() {
        return Some("its IP traffic is dropped (IPAddressDeny=any)");
    }
    if !has_non_loopback_interface(&std::fs::read_to_string("/proc/self/net/dev").ok()?) {
        return Some("it runs in a network namespace of its own (PrivateNetwork=yes)");
    }
    None
}

/// Does `/proc/self/net/dev` (its text) list an interface other than `lo`?
fn has_non_loopback_interface(net_dev: &str) -> bool {
    net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .any(|name| name != "lo")
}

/// Logs an error when users may come from the network while this process
/// cannot reach it. Costs a file read when nsswitch.conf names no such module.
pub fn warn_if_network_nss_unreachable() {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let nsswitch = read("/etc/nsswitch.conf");
    let sources = network_sources(&nsswitch, &[&read("/etc/passwd"), &read("/etc/group")]);
    if sources.is_empty() {
        return;
    }
    if let Some(why) = network_blocked() {
        tracing::error!(
            NSS_SOURCES = sources.join(", "),
            "/etc/nsswitch.conf names name services that need the network ({}), but fairshared \
             runs without it: {why}. Users only those services know are unknown to fairshared and \
             get only the host-wide default limits at login. The shipped generator lifts the \
             sandbox's network settings when nsswitch.conf names such services: run \
             `systemctl daemon-reload && systemctl restart fairshared` (and check that \
             /etc/systemd/system/fairshared.service.d/50-network-nss.conf does not mask it); \
             with sssd or nscd in front of them instead, nothing is needed",
            sources.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sources_need_nothing_network_ones_are_named() {
        let debian = "# /etc/nsswitch.conf\npasswd:         files systemd\ngroup:          files systemd\nshadow:         files\nhosts:          files dns\n";
        assert!(network_sources(debian, &[]).is_empty());
        let sssd = "passwd: files sss\ngroup: files [SUCCESS=merge] sss\n";
        assert!(network_sources(sssd, &[]).is_empty());
        let ldap = "passwd: files ldap\ngroup:  files [NOTFOUND=return] nis # old\nhosts: files dns ldap\nnetgroup: nis\n";
        assert_eq!(network_sources(ldap, &[]), ["passwd: ldap", "group: nis"]);
        assert!(network_sources("#passwd: ldap\n", &[]).is_empty());
        assert_eq!(
            network_sources("initgroups: files oslogin\n", &[]),
            ["initgroups: oslogin"]
        );
    }

    #[test]
    fn compat_needs_the_network_only_with_nis_entries() {
        let nss = "passwd: compat\n";
        assert!(network_sources(nss, &["root:x:0:0::/root:/bin/sh\n"]).is_empty());
        assert_eq!(
            network_sources(nss, &["root:x:0:0::/root:/bin/sh\n+::::::\n"]),
            ["passwd: compat"]
        );
    }

    #[test]
    fn the_generator_knows_the_same_local_sources() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../etc/systemd/fairshare-nss-generator"
        );
        let script = std::fs::read_to_string(path).unwrap();
        let line = script
            .lines()
            .find_map(|l| l.strip_prefix("local_sources=\""))
            .unwrap();
        let mut theirs: Vec<&str> = line.trim_end_matches('"').split_whitespace().collect();
        let mut ours = LOCAL_SOURCES.to_vec();
        theirs.sort_unstable();
        ours.sort_unstable();
        assert_eq!(theirs, ours, "keep {path} and LOCAL_SOURCES together");
    }

    #[test]
    fn interfaces_other_than_loopback_are_seen() {
        let private = "Inter-|   Receive\n face |bytes\n    lo: 0 0 0\n";
        assert!(!has_non_loopback_interface(private));
        let host = format!("{private}  eth0: 1 2 3\n");
        assert!(has_non_loopback_interface(&host));
    }
}
