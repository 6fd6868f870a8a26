//! Delay from an OOM kill to the notice on the user's terminal (issue 14),
//! through the real sshd, PAM, logind and kernel.
//!
//! Per user (each a different one: fairshared tells a user at most one OOM
//! notice per burst, and a burst lasts a minute): `ssh -tt USER@127.0.0.1`
//! (an interactive login shell), a terminal whose output is read on the client side
//! (what the user's terminal gets), each chunk stamped with
//! CLOCK_MONOTONIC as it arrives; once the login line is in, a memory hog
//! (512M against the user's 192M, set by root beforehand) runs in a second
//! ssh session and is killed by the kernel. The kill's time is the kernel's:
//! `oom-watch`, run inside the container, polls the user slice's OOM kill
//! counter (`oom_kill` in cgroup v1's `memory.oom_control`, v2's
//! `memory.events`) every millisecond and prints when it moved
//! (CLOCK_MONOTONIC, the same clock in the container and on the host). The
//! delay is from that to the chunk that completed the notice.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::busmon::now_ns;
use crate::report::{Report, Row, Samples};
use crate::stats::median;
use crate::{Result, fail};

/// The notice's last line (fairshared's `events::notice`).
const NOTICE_END: &str = "fairshare-ctl notices off stops these messages";
/// The start of every line fairshare writes to a terminal.
const OURS: &str = "fairshare:";

/// One kill.
#[derive(Clone, Serialize, Deserialize)]
pub struct Kill {
    pub user: String,
    pub uid: u32,
    /// The hog's shell said 137 (SIGKILL).
    pub hog_killed: bool,
    /// CLOCK_MONOTONIC (ns): the slice's OOM kill counter moved.
    pub kill_ns: Option<u64>,
    /// CLOCK_MONOTONIC (ns): the notice was complete on the terminal.
    pub notice_ns: Option<u64>,
    /// The notice named the memory limit.
    pub names_limit: bool,
    /// The notice's lines as the terminal got them.
    pub text: String,
}

/// `oom-notice`.
#[derive(Serialize, Deserialize)]
pub struct OomSamples {
    pub kills: Vec<Kill>,
    pub limit: String,
}

impl Samples for OomSamples {
    const FILE: &'static str = "oom.json";
}

/// The slice's OOM kill counter: v2's `memory.events` (which counts the
/// kills below the slice too), or v1's `memory.oom_control` summed over
/// the slice and every cgroup below it (v1 counts a kill in the victim's
/// own cgroup, a session scope say, not in its ancestors).
fn oom_kills(uid: u32) -> Option<u64> {
    let slice = format!("user.slice/user-{uid}.slice");
    let v2 = format!("/sys/fs/cgroup/{slice}/memory.events");
    if let Ok(t) = std::fs::read_to_string(&v2) {
        return counter(&t);
    }
    let v1 = PathBuf::from(format!("/sys/fs/cgroup/memory/{slice}"));
    v1.is_dir().then(|| sum_below(&v1))
}

fn counter(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

fn sum_below(dir: &Path) -> u64 {
    let own = std::fs::read_to_string(dir.join("memory.oom_control"))
        .ok()
        .and_then(|t| counter(&t))
        .unwrap_or(0);
    let below: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| sum_below(&e.path()))
        .sum();
    own + below
}

/// `oom-watch`: prints `ready`, then `kill UID NS` each time a slice's OOM
/// kill counter moves, until every uid had one or `secs` passed.
pub fn watch(uids: &[u32], secs: f64) -> Result<()> {
    let mut last: HashMap<u32, u64> = uids
        .iter()
        .map(|&u| (u, oom_kills(u).unwrap_or(0)))
        .collect();
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut left: Vec<u32> = uids.to_vec();
    while !left.is_empty() && Instant::now() < until {
        left.retain(|&u| {
            let now = oom_kills(u).unwrap_or(0);
            let before = last.get(&u).copied().unwrap_or(0);
            if now > before {
                let _ = writeln!(out, "kill {u} {}", now_ns());
                let _ = out.flush();
                last.insert(u, now);
                false
            } else {
                true
            }
        });
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

pub struct Setup {
    /// `name:uid` of each user, one kill each.
    pub users: Vec<(String, u32)>,
    /// The memory limit root set for them (for the report).
    pub limit: String,
    /// Runs `oom-watch` for the uids inside the test host (`sh -c`; the
    /// uids are appended).
    pub watch: String,
    pub ssh_args: Vec<String>,
    pub dir: PathBuf,
}

/// A memory hog asking for 512M; its shell then prints `hog-status=$?`.
const HOG: &str = "perl -e 'my $x = q(a) x (512*1024*1024); sleep 5;'; echo hog-status=$?";

/// What a terminal got: (CLOCK_MONOTONIC ns, bytes) per read.
type Chunks = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// An `ssh -tt` terminal: chunks as they come, stamped.
struct Tty {
    child: std::process::Child,
    chunks: Chunks,
}

impl Tty {
    fn open(ssh_args: &[String], user: &str) -> Result<Tty> {
        let mut child = Command::new("ssh")
            .args(ssh_args)
            .arg("-tt")
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        let chunks: Chunks = Arc::default();
        let Some(mut pipe) = child.stdout.take() else {
            return fail("no pipe from ssh");
        };
        let c = chunks.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let at = now_ns();
                if let Ok(mut v) = c.lock() {
                    v.push((at, buf[..n].to_vec()));
                }
            }
        });
        Ok(Tty { child, chunks })
    }

    /// The text so far, and when the first chunk that made it contain
    /// `needle` after `from` bytes came.
    fn find(&self, needle: &str, from: usize) -> (String, Option<u64>) {
        let v = self.chunks.lock().map(|v| v.clone()).unwrap_or_default();
        let mut all = Vec::new();
        let mut at = None;
        for (t, b) in v {
            all.extend_from_slice(&b);
            if at.is_none()
                && all.len() > from
                && String::from_utf8_lossy(&all[from..]).contains(needle)
            {
                at = Some(t);
            }
        }
        (String::from_utf8_lossy(&all).into_owned(), at)
    }

    fn len(&self) -> usize {
        self.chunks
            .lock()
            .map(|v| v.iter().map(|(_, b)| b.len()).sum())
            .unwrap_or(0)
    }

    fn wait(&self, needle: &str, from: usize, within: Duration) -> Option<u64> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let (_, Some(t)) = self.find(needle, from) {
                return Some(t);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(s: &Setup) -> Result<()> {
    let uids: Vec<String> = s.users.iter().map(|(_, u)| u.to_string()).collect();
    let mut watcher = Command::new("sh")
        .arg("-c")
        .arg(format!("{} {}", s.watch, uids.join(" ")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the OOM watcher: {e}"))?;
    let Some(out) = watcher.stdout.take() else {
        return fail("no pipe from the OOM watcher");
    };
    let kills: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let kills = kills.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if line == "ready" {
                    let _ = ready_tx.send(());
                }
                let f: Vec<&str> = line.split_whitespace().collect();
                if let ["kill", uid, ns] = f[..]
                    && let (Ok(uid), Ok(ns)) = (uid.parse::<u32>(), ns.parse::<u64>())
                    && let Ok(mut k) = kills.lock()
                {
                    k.insert(uid, ns);
                }
            }
        });
    }
    let result = (|| {
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            return fail("the OOM watcher did not start within 30 s");
        }
        let mut samples = Vec::new();
        for (user, uid) in &s.users {
            let tty = Tty::open(&s.ssh_args, user)?;
            // the login line: PAM (and logind's session, made by
            // pam_systemd before the module) is done, and the shell next
            if tty.wait(OURS, 0, Duration::from_secs(10)).is_none() {
                eprintln!("oom-notice: no login line on {user}'s terminal within 10 s");
            }
            std::thread::sleep(Duration::from_millis(1000));
            let from = tty.len();
            let hog = Command::new("ssh")
                .args(&s.ssh_args)
                .arg(format!("{user}@127.0.0.1"))
                .arg(HOG)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run ssh: {e}"))?;
            let hog_killed = String::from_utf8_lossy(&hog.stdout).contains("hog-status=137");
            let notice_ns = tty.wait(NOTICE_END, from, Duration::from_secs(20));
            let text = tty.find("", 0).0;
            let text: String = text
                .get(from.min(text.len())..)
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            let kill_ns = kills.lock().ok().and_then(|k| k.get(uid).copied());
            eprintln!(
                "oom-notice: {user}: killed {hog_killed}, kill to notice {}",
                kill_ns.zip(notice_ns).map_or("—".into(), |(k, n)| format!(
                    "{:.1} ms",
                    n.saturating_sub(k) as f64 / 1e6
                ))
            );
            samples.push(Kill {
                user: user.clone(),
                uid: *uid,
                hog_killed,
                kill_ns,
                notice_ns,
                names_limit: text.contains(&format!("memory limit of {}", s.limit)),
                text,
            });
        }
        Ok(samples)
    })();
    let _ = watcher.kill();
    let _ = watcher.wait();
    OomSamples {
        kills: result?,
        limit: s.limit.clone(),
    }
    .save(&s.dir)
}

const TARGET: &str = "≤ 5 s (issue 14's bound)";

pub fn report(dir: &Path, r: &mut Report) -> Result<()> {
    const FIGURE: &str = "OOM kill to notice on the user's ssh -tt terminal, median";
    let Some(v) = OomSamples::load(dir)? else {
        r.row(Row::missing(FIGURE, TARGET));
        return Ok(());
    };
    let delays: Vec<f64> = v
        .kills
        .iter()
        .filter_map(|k| k.kill_ns.zip(k.notice_ns))
        .map(|(k, n)| n.saturating_sub(k) as f64)
        .collect();
    let complete = v
        .kills
        .iter()
        .filter(|k| k.hog_killed && k.kill_ns.is_some() && k.notice_ns.is_some() && k.names_limit)
        .count();
    let m = median(&delays);
    let mut row = Row::single(
        &format!("{FIGURE} (n={})", v.kills.len()),
        crate::report::ms(m),
        TARGET,
        m.map(|m| m <= 5e9),
    );
    row.p99 =
        crate::report::ms(delays.iter().copied().reduce(f64::max)).replace(" ms", " ms (max)");
    if complete < v.kills.len() {
        row.verdict = format!(
            "MISSED ({} of {} kills without kernel kill, counter move or notice naming the limit)",
            v.kills.len() - complete,
            v.kills.len()
        );
    }
    r.row(row);
    let example = v
        .kills
        .iter()
        .find(|k| k.notice_ns.is_some())
        .map(|k| k.text.replace('\r', "").replace('\n', " ⏎ "))
        .unwrap_or_default();
    r.note(format!(
        "OOM kill to notice: per kill a different bench user (fairshared tells a user one OOM notice per burst of kills) with a memory limit of {limit} set by root, logged in with `ssh -tt USER@127.0.0.1` from the host (an interactive login shell: a logind session on a pts, where notices go; its output read on the client side and stamped with CLOCK_MONOTONIC per chunk as it arrives); after the login line, a memory hog (perl, 512M) in a second ssh session, killed by the kernel (the hog's shell said 137 in {killed} of {n} runs). The kill's time is the kernel's: a watcher inside the container polls the slice's `oom_kill` counter (cgroup v2 memory.events; v1 memory.oom_control summed over the slice's subtree, where v1 counts a kill) every 1 ms; the notice's time is the chunk that completed its last line. The delay includes fairshared's 1 s gathering of kills close together into one notice (`events::watch::GATHER`) by design. {complete} of {n} kills complete (kernel kill, counter moved, notice naming the {limit} limit). Delays: {list}. A notice as the terminal got it: {example}",
        limit = v.limit,
        killed = v.kills.iter().filter(|k| k.hog_killed).count(),
        n = v.kills.len(),
        list = delays
            .iter()
            .map(|d| format!("{:.0} ms", d / 1e6))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    Ok(())
}
