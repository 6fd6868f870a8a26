//! Operations, as shipped: the metrics file written into a directory another
//! account owns, and fairshared's sandbox on hosts whose users come from a
//! name service that needs the network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fairshare_e2e::*;

const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
const PROM: &str = "/var/lib/prometheus/node-exporter/fairshare.prom";
/// Root's files a planted symlink points at; they must never change.
const VICTIMS: [&str; 2] = [
    "/etc/fairshare-e2e-victim",
    // inside the only directory the unit's sandbox lets it write: there,
    // only the code protects it
    "/var/lib/prometheus/fairshare-e2e-victim",
];

/// `stat` of a file inside: `owner:group mode type`.
fn stat(h: &Container, path: &str) -> String {
    h.sh(&format!("stat -c '%U:%G %a %F' {path}"))
        .ok()
        .out()
        .to_string()
}

/// The Debian layout of node_exporter: /var/lib/prometheus belongs to the
/// `prometheus` account, node-exporter/ to root; the account has planted
/// symlinks to root's files under the file's name and under the fixed
/// temporary name fairshare-metrics.service used to write through.
fn plant(h: &Container) {
    h.sh("getent group prometheus >/dev/null || groupadd --system prometheus; \
          getent passwd prometheus >/dev/null || useradd --system -g prometheus -d /var/lib/prometheus -s /usr/sbin/nologin prometheus")
        .ok();
    h.sh(&format!(
        "rm -rf /var/lib/prometheus; install -d -o prometheus -g prometheus -m 755 /var/lib/prometheus; \
         install -d -o root -g root -m 755 {TEXTFILE_DIR}"
    ))
    .ok();
    for v in VICTIMS {
        h.sh(&format!(
            "printf 'root only\\n' > {v}; chmod 600 {v}; chown root:root {v}"
        ))
        .ok();
    }
    // node-exporter/ is root's in Debian's package; where it is the
    // account's (as here), the account plants links in it too
    h.sh(&format!(
        "chown prometheus:prometheus {TEXTFILE_DIR}; \
         runuser -u prometheus -- ln -s {} {PROM}; \
         runuser -u prometheus -- ln -s {} {TEXTFILE_DIR}/.fairshare.prom.tmp",
        VICTIMS[0], VICTIMS[1]
    ))
    .ok();
}

/// Files of the writer's own left in the directory (`.NAME.RANDOM.tmp`).
fn leftovers(h: &Container) -> Vec<String> {
    h.sh(&format!("ls -A {TEXTFILE_DIR}"))
        .ok()
        .stdout
        .lines()
        .filter(|n| {
            n.strip_prefix(".fairshare.prom.")
                .and_then(|r| r.strip_suffix(".tmp"))
                .is_some_and(|r| r.len() == 16)
        })
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn victims_untouched(h: &Container) {
    for v in VICTIMS {
        assert_eq!(h.read(v).as_deref(), Some("root only\n"), "{v} was written");
        assert_eq!(stat(h, v), "root:root 600 regular file", "{v}");
    }
}

#[test]
fn the_metrics_file_replaces_planted_symlinks_and_never_writes_through_them() {
    let h = Container::get();
    h.fresh_daemon(BASE_POLICY);
    let _undo = Undo(
        &h,
        format!(
            "rm -f {} /etc/default/fairshare-metrics /etc/fairshare.prom; rm -rf /var/lib/prometheus",
            VICTIMS.join(" ")
        ),
    );
    let (user, _) = TESTUSER;
    let _s = h.session(user);
    plant(&h);

    // the shipped unit, default settings: host-wide series only, for all to read
    h.sh("rm -f /etc/default/fairshare-metrics; systemctl daemon-reload")
        .ok();
    h.sh("systemctl start fairshare-metrics.service").ok();
    victims_untouched(&h);
    assert_eq!(stat(&h, PROM), "root:root 644 regular file");
    let prom = h.read(PROM).unwrap();
    assert!(prom.contains("\nfairshare_capacity_cpus 256\n"), "{prom}");
    assert!(prom.contains("fairshare_users 1\n"), "{prom}");
    assert!(
        !prom.contains("uid=") && !prom.contains(user),
        "other users' usage published by default:\n{prom}"
    );
    assert_eq!(leftovers(&h), Vec::<String>::new());

    // the admin's choice: every user's series, readable by node_exporter only
    h.write(
        "/etc/default/fairshare-metrics",
        "FAIRSHARE_METRICS_OPTIONS=\"--per-user --group prometheus\"\n",
    );
    h.sh(&format!("runuser -u prometheus -- ln -sf {} {PROM}.new; runuser -u prometheus -- mv -T {PROM}.new {PROM}", VICTIMS[0]))
        .ok();
    h.sh("systemctl start fairshare-metrics.service").ok();
    victims_untouched(&h);
    assert_eq!(stat(&h, PROM), "root:prometheus 640 regular file");
    let prom = h.read(PROM).unwrap();
    assert!(
        prom.contains(r#"fairshare_allocation_cpus{user="testuser",uid="1001"} 2"#),
        "{prom}"
    );
    // node_exporter's account reads it, other users do not
    assert!(
        h.sh(&format!("runuser -u prometheus -- cat {PROM}"))
            .ok()
            .out()
            .contains("uid=\"1001\"")
    );
    assert_ne!(h.ssh(user, &format!("cat {PROM}")).code, 0);

    // the account swaps the directory for a symlink to /etc: root follows
    // no symlink someone else could have made, and says so
    h.sh(&format!(
        "runuser -u prometheus -- mv {TEXTFILE_DIR} /var/lib/prometheus/moved; \
         runuser -u prometheus -- ln -s /etc {TEXTFILE_DIR}"
    ))
    .ok();
    let o = h.sh(&format!("fairshare-ctl metrics --output {PROM}"));
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("refusing to follow")
            && o.stderr.contains("/var/lib/prometheus/node-exporter"),
        "{}",
        o.stderr
    );
    assert!(h.read("/etc/fairshare.prom").is_none(), "written into /etc");
    let failed = h.sh("systemctl start fairshare-metrics.service");
    assert_ne!(failed.code, 0);
    assert!(h.read("/etc/fairshare.prom").is_none(), "written into /etc");
    victims_untouched(&h);
    assert!(
        h.sh("ls -A /var/lib/prometheus/moved")
            .ok()
            .stdout
            .contains("fairshare.prom"),
        "the real directory lost its file"
    );
}

fn unit_network(h: &Container) -> String {
    h.sh("systemctl show -p PrivateNetwork -p IPAddressDeny -p RestrictAddressFamilies fairshared.service")
        .ok()
        .stdout
}

/// The error lines of fairshared's current run.
fn errors_of_this_run(h: &Container) -> String {
    h.sh("journalctl --no-pager -o cat -p err _SYSTEMD_INVOCATION_ID=$(systemctl show -P InvocationID fairshared.service)")
        .ok()
        .stdout
}

fn restart(h: &Container) {
    h.sh("systemctl restart fairshared.service").ok();
    h.wait_socket();
    // the check logs before the socket is served: once the journal has
    // stored what it was sent so far, its lines are there
    h.sh("journalctl --sync").ok();
}

#[test]
fn a_network_name_service_gets_fairshared_the_network_or_a_loud_error() {
    let h = Container::get();
    h.fresh_daemon(BASE_POLICY);
    let original = h.read("/etc/nsswitch.conf").unwrap();
    assert!(!original.contains("ldap"));
    let _undo = Undo(
        &h,
        "cp /etc/nsswitch.conf.e2e /etc/nsswitch.conf; rm -f /etc/nsswitch.conf.e2e \
         /etc/systemd/system/fairshared.service.d/50-network-nss.conf; \
         systemctl daemon-reload; systemctl restart fairshared.service"
            .into(),
    );
    h.sh("cp /etc/nsswitch.conf /etc/nsswitch.conf.e2e").ok();

    // the default Debian host: sandboxed, nothing to say
    let net = unit_network(&h);
    assert!(net.contains("PrivateNetwork=yes"), "{net}");
    assert!(net.contains("RestrictAddressFamilies=AF_UNIX\n"), "{net}");
    assert!(errors_of_this_run(&h).is_empty());

    // users from LDAP, straight from the NSS module (no sssd, no nscd)
    let ldap = original.replace("\npasswd:", "\n#passwd:") + "passwd: files ldap\n";
    h.write("/etc/nsswitch.conf", &ldap);
    h.sh("systemctl daemon-reload").ok();
    let net = unit_network(&h);
    assert!(net.contains("PrivateNetwork=no"), "{net}");
    assert!(net.contains("IPAddressDeny=\n"), "{net}");
    assert!(
        net.contains("AF_INET ") && net.contains("AF_INET6") && net.contains("AF_UNIX"),
        "{net}"
    );
    restart(&h);
    assert!(
        errors_of_this_run(&h).is_empty(),
        "{}",
        errors_of_this_run(&h)
    );
    // it sees the host's network, and still gives a login its limits
    let pid = h
        .sh("systemctl show -P MainPID fairshared.service")
        .ok()
        .out()
        .to_string();
    let dev = h.read(&format!("/proc/{pid}/net/dev")).unwrap();
    assert!(
        dev.lines()
            .skip(2)
            .any(|l| !l.trim_start().starts_with("lo:")),
        "{dev}"
    );
    let (user, uid) = TESTUSER;
    let _s = h.session(user);
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    drop(_s);

    // the admin keeps the sandbox (masks the generator's drop-in): the
    // daemon says at start which users it cannot see, and what to do
    h.sh("mkdir -p /etc/systemd/system/fairshared.service.d && \
          ln -sf /dev/null /etc/systemd/system/fairshared.service.d/50-network-nss.conf && \
          systemctl daemon-reload")
        .ok();
    assert!(unit_network(&h).contains("PrivateNetwork=yes"));
    restart(&h);
    let errors = errors_of_this_run(&h);
    assert!(
        errors.contains("passwd: ldap") && errors.contains("need the network"),
        "{errors}"
    );
    assert!(
        errors.contains("RestrictAddressFamilies=AF_UNIX"),
        "{errors}"
    );

    // back to files only: sandboxed again, silent
    h.sh("cp /etc/nsswitch.conf.e2e /etc/nsswitch.conf; \
          rm /etc/systemd/system/fairshared.service.d/50-network-nss.conf; systemctl daemon-reload")
        .ok();
    assert!(unit_network(&h).contains("PrivateNetwork=yes"));
    restart(&h);
    assert!(errors_of_this_run(&h).is_empty());
}
