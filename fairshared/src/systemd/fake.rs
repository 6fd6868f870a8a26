//! `Fake`: an in-memory systemd for unit tests and the memory benchmark
//! (feature `fake-systemd`); never in the shipped daemon.
//!
//! Given a root directory ([`Fake::with_root`]) it behaves like systemd 252
//! towards fairshare's files (docs/design/defaults-from-systemd.md): a
//! slice that starts takes its values from the drop-ins under that root
//! ([`Fake::start_slice`]), `set` writes the control drop-ins
//! `SetUnitProperties(runtime=true)` writes and changes the running slice
//! at once, a changed drop-in reaches a running slice only at
//! [`Fake::daemon_reload`]. Tests assert on [`Fake::in_force`], what the
//! slice would show, not on the calls alone.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use fairshare_proto::units::{Bytes, Cpus, Tasks};
use fairshare_proto::wire::Limits;

use super::{LogindSession, PropertyValue, SliceValues, Systemd, SystemdError, slice_name};
use crate::dropin::{Key, Layout, Value, normal, write_atomic};

/// One recorded call to the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `SetUnitProperties(user-UID.slice, runtime=true, props)`.
    Set(u32, Vec<(String, PropertyValue)>),
    /// `SetUnitProperties(unit, runtime=true, props)` of another unit.
    SetUnit(String, Vec<(String, PropertyValue)>),
    Adopt(u32, u32),
}

/// Values of the managed keys on one slice (`None`: no limit).
pub type Values = BTreeMap<Key, Option<Value>>;

/// An in-memory systemd for unit tests (and the memory benchmark).
#[derive(Default)]
pub struct Fake {
    pub calls: Mutex<Vec<Call>>,
    /// Make the next `set` calls fail.
    pub fail_apply: std::sync::atomic::AtomicBool,
    /// Delay every call (to test that users do not queue behind each other).
    pub delay: Mutex<Option<Duration>>,
    pub sessions: Mutex<Vec<LogindSession>>,
    /// Users logind knows, and the pids of their user managers.
    pub users: Mutex<Vec<(u32, String)>>,
    pub managers: Mutex<Vec<(u32, u32)>>,
    in_flight: std::sync::atomic::AtomicUsize,
    /// The most `set` calls ever running at once.
    pub max_in_flight: std::sync::atomic::AtomicUsize,
    /// Where the unit directories are (`None`: no files, calls only).
    root: Option<PathBuf>,
    /// Running slices and the values in force on them.
    live: Mutex<HashMap<u32, Values>>,
    /// `MemoryLow` of other units (`user.slice`), as set.
    pub memory_lows: Mutex<HashMap<String, u64>>,
    /// A temporary root that goes with the fake (tests).
    #[cfg(test)]
    _dir: Option<tempfile::TempDir>,
}

impl Fake {
    /// A fake whose unit directories are under `root` (as
    /// [`Layout::under`]).
    pub fn with_root(root: impl Into<PathBuf>) -> Fake {
        Fake {
            root: Some(root.into()),
            ..Fake::default()
        }
    }

    /// A fake with its own temporary root, removed with it (tests).
    #[cfg(test)]
    pub fn in_tempdir() -> Fake {
        let dir = tempfile::tempdir().expect("temporary directory");
        Fake {
            root: Some(dir.path().to_path_buf()),
            _dir: Some(dir),
            ..Fake::default()
        }
    }

    /// Where the unit directories are.
    pub fn root(&self) -> Option<&std::path::Path> {
        self.root.as_deref()
    }

    fn layout(&self) -> Option<Layout> {
        self.root.as_ref().map(Layout::under)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// How many `SetUnitProperties` calls were made for `uid`.
    pub fn sets(&self, uid: u32) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Set(u, _) if *u == uid))
            .count()
    }

    /// What systemd's files say for `user-UID.slice` (what a slice that
    /// starts now gets).
    pub fn from_files(&self, uid: u32) -> Values {
        let mut out: Values = Key::ALL.iter().map(|k| (*k, None)).collect();
        if let Some(l) = self.layout()
            && let Ok(eff) = l.effective(uid, &|_| false)
        {
            for (k, a) in eff {
                out.insert(k, a.value.filter(|v| *v != Value::Infinity));
            }
        }
        out
    }

    /// The user's slice starts (their first login): it takes what the
    /// files say.
    pub fn start_slice(&self, uid: u32) {
        let v = self.from_files(uid);
        if let Ok(mut live) = self.live.lock() {
            live.insert(uid, v);
        }
    }

    /// The user's slice starts with `values` whatever the files say now (a
    /// unit systemd loaded before the files changed).
    pub fn start_slice_with(&self, uid: u32, values: Values) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(uid, values);
        }
    }

    /// The user's slice stops.
    pub fn stop_slice(&self, uid: u32) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&uid);
        }
    }

    /// `systemctl daemon-reload`: every running slice gets what the files
    /// say.
    pub fn daemon_reload(&self) {
        let uids: Vec<u32> = self
            .live
            .lock()
            .map(|l| l.keys().copied().collect())
            .unwrap_or_default();
        for uid in uids {
            self.start_slice(uid);
        }
    }

    /// What is in force on the user's slice: the running slice's values, or
    /// for a slice not running what it would start with.
    pub fn in_force(&self, uid: u32) -> Values {
        if let Some(v) = self.live.lock().ok().and_then(|l| l.get(&uid).cloned()) {
            return v;
        }
        self.from_files(uid)
    }

    /// The limits in force as [`Limits`], when all of cpu, mem and tasks
    /// are absolute amounts.
    pub fn applied(&self, uid: u32) -> Option<Limits> {
        let v = self.in_force(uid);
        let amount = |k| match v.get(&k).copied().flatten() {
            Some(Value::Amount(n)) => Some(n),
            _ => None,
        };
        Some(Limits {
            cpu: Cpus::from_millis(amount(Key::CpuQuota)? / 1000),
            mem: Bytes(amount(Key::MemoryMax)?),
            mem_high: amount(Key::MemoryHigh).map(Bytes),
            tasks: Tasks(amount(Key::TasksMax)?),
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        })
    }

    async fn pause(&self) {
        let d = self.delay.lock().ok().and_then(|d| *d);
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }

    fn record(&self, c: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(c);
        }
    }
}

/// The key and value a property sets, as systemd reads it.
fn decode(name: &str, v: PropertyValue) -> Option<(Key, Option<Value>)> {
    for k in Key::ALL {
        let spec = k.spec();
        if spec.property == name {
            return Some(match v {
                PropertyValue::U64(n) | PropertyValue::Devices(n) => {
                    (*k, normal(*k, Some(Value::Amount(n))))
                }
                PropertyValue::U32(n) => (*k, Some(Value::Amount(u64::from(n)))),
            });
        }
        if spec.scale_property == Some(name) {
            let p = match v {
                PropertyValue::U32(n) => u64::from(n),
                PropertyValue::U64(n) | PropertyValue::Devices(n) => n,
            };
            let share = (p * 10_000).div_ceil(u64::from(u32::MAX));
            return Some((*k, Some(Value::Share(u32::try_from(share).ok()?))));
        }
    }
    None
}

impl Systemd for Fake {
    async fn set(
        &self,
        uid: u32,
        props: &[(&'static str, PropertyValue)],
    ) -> Result<(), SystemdError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.max_in_flight.fetch_max(now, SeqCst);
        self.pause().await;
        self.in_flight.fetch_sub(1, SeqCst);
        if self.fail_apply.load(SeqCst) {
            return Err(SystemdError::Refused {
                call: "SetUnitProperties",
                unit: slice_name(uid),
                message: "injected failure".into(),
            });
        }
        self.record(Call::Set(
            uid,
            props.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ));
        let mut values = self.in_force(uid);
        for (name, v) in props {
            let Some((key, value)) = decode(name, *v) else {
                return Err(SystemdError::Refused {
                    call: "SetUnitProperties",
                    unit: slice_name(uid),
                    message: format!("unknown property {name}"),
                });
            };
            values.insert(key, value);
            // systemd's control drop-in: one file per property
            if let Some(l) = self.layout() {
                let spec = key.spec();
                let file = if spec.property == *name {
                    spec.control_files[0]
                } else {
                    spec.control_files
                        .get(1)
                        .copied()
                        .unwrap_or(spec.control_files[0])
                };
                let lines = match (spec.kind, value) {
                    // as systemd writes a list: a reset, then each disk
                    (crate::dropin::Kind::Devices, v) => {
                        let mut l = vec![format!("{}=", key.name())];
                        l.extend(v.map(|v| v.render_lines(key)).unwrap_or_default());
                        l.join("\n")
                    }
                    (_, v) => format!(
                        "{}={}",
                        key.name(),
                        v.map_or_else(
                            || match spec.unset {
                                u64::MAX => Value::Infinity.render(key),
                                n => n.to_string(),
                            },
                            |v| v.render(key)
                        )
                    ),
                };
                let text = format!(
                    "# This is a drop-in unit file extension, created via \"systemctl set-property\"\n\
                     # or an equivalent operation. Do not edit.\n[Slice]\n{lines}\n"
                );
                let _ = write_atomic(&l.control_dir(uid), file, &text);
            }
        }
        if let Ok(mut live) = self.live.lock()
            && let Some(slice) = live.get_mut(&uid)
        {
            *slice = values;
        }
        Ok(())
    }

    async fn set_unit(
        &self,
        unit: &str,
        props: &[(&'static str, PropertyValue)],
    ) -> Result<(), SystemdError> {
        self.record(Call::SetUnit(
            unit.to_string(),
            props.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ));
        for (k, v) in props {
            if let (&"MemoryLow", PropertyValue::U64(n)) = (k, v)
                && let Ok(mut m) = self.memory_lows.lock()
            {
                m.insert(unit.to_string(), *n);
            }
        }
        Ok(())
    }

    async fn memory_low(&self, unit: &str) -> Result<Option<u64>, SystemdError> {
        Ok(Some(
            self.memory_lows
                .lock()
                .ok()
                .and_then(|m| m.get(unit).copied())
                .unwrap_or(0),
        ))
    }

    async fn slice_values(&self, uid: u32) -> Result<Option<SliceValues>, SystemdError> {
        let Some(v) = self.live.lock().ok().and_then(|l| l.get(&uid).cloned()) else {
            return Ok(None);
        };
        let n = |k: Key| match v.get(&k).copied().flatten() {
            Some(Value::Amount(n)) => n,
            // what a share comes to on this made-up host: 10 000 tasks
            Some(Value::Share(p)) => u64::from(p),
            _ => k.spec().unset,
        };
        Ok(Some(crate::dropin::per_key(n)))
    }

    async fn adopt(&self, uid: u32, process: &crate::proc::Pinned) -> Result<String, SystemdError> {
        let pid = process.pid();
        self.pause().await;
        self.record(Call::Adopt(uid, pid));
        Ok(format!("fairshare-session-{uid}-{pid}.scope"))
    }

    async fn in_logind_session(&self, pid: u32) -> Result<bool, SystemdError> {
        Ok(self
            .sessions
            .lock()
            .map(|s| s.iter().any(|x| x.leader == pid))
            .unwrap_or(false))
    }

    async fn logind_users(&self) -> Result<Vec<(u32, String)>, SystemdError> {
        Ok(self.users.lock().map(|u| u.clone()).unwrap_or_default())
    }

    async fn user_manager_pid(&self, uid: u32) -> Result<Option<u32>, SystemdError> {
        Ok(self
            .managers
            .lock()
            .ok()
            .and_then(|m| m.iter().find(|(u, _)| *u == uid).map(|(_, p)| *p)))
    }

    async fn logind_sessions(&self, only: Option<u32>) -> Result<Vec<LogindSession>, SystemdError> {
        let all = self.sessions.lock().map(|u| u.clone()).unwrap_or_default();
        Ok(all
            .into_iter()
            .filter(|s| only.is_none_or(|o| o == s.uid))
            .collect())
    }
}
