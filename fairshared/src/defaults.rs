//! The owner of fairshare's drop-ins (issue 12,
//! docs/design/defaults-from-systemd.md): what the policy-default files say
//! on disk, which runtime values systemd holds on top of them, and so what
//! is in force on every user's slice without asking systemd.
//!
//! * G, `/etc/systemd/system/user-.slice.d/40-fairshare.conf`: the policy
//!   default, which systemd gives every user slice as it starts.
//! * U, `/etc/systemd/system/user-UID.slice.d/40-fairshare.conf`: a user's
//!   own default where it differs from G (group and user overrides), or a
//!   comment-only file for exempt users (systemd's own defaults).
//! * R, `/run/systemd/system.control/user-UID.slice.d/50-*.conf`: what
//!   `SetUnitProperties(runtime=true)` wrote (resizes, leases, root's sets).
//!
//! The invariant kept: **what the files say is what is in force**. Every
//! change to a running slice is a `SetUnitProperties` of only the keys that
//! differ ([`DropIns::differing`]), recorded here as R ([`DropIns::did_set`]);
//! then U is written and the R files that only repeat what G or U says are
//! unlinked ([`DropIns::settle`]). So a login whose slice started from the
//! right files makes no D-Bus call, and a `daemon-reload` changes nothing.
//!
//! All of it is a sparse map: a user at the plain default with no runtime
//! value costs nothing here.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use fairshare_policy::{Identity, IoDevices, Policy};
use fairshare_proto::wire::Limits;

use crate::dropin::{Entry, Key, Layout, OnDisk, Outcome, PropertyValue, Settings, Value, normal};
use crate::identity::Directory;

/// Values of the managed keys (`None`: no limit, systemd's built-in
/// default).
pub type Values = BTreeMap<Key, Option<Value>>;

/// What a user's own file should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// These limits (written as U unless they equal G).
    Limits(Settings),
    /// No fairshare limit: a comment-only U, systemd's own defaults.
    Exempt,
    /// No U at all: G applies (a user who no longer exists).
    Global,
}

impl Base {
    /// The base for a user's policy default and IO limits.
    pub fn of(default: &Limits, io: &IoDevices) -> Base {
        Base::Limits(file_settings(default, io))
    }
}

/// What a drop-in (G or U) says for a policy default and its IO limits:
/// everything but the memory guarantee. A guarantee is handed out only by
/// fairshared, to the users it counts against `capacity.mem_low` (a
/// session, or one set explicitly: [`crate::guarantees`]), as a runtime
/// value; in a file systemd would give it to every slice that starts (a
/// user who logged out leaving processes behind, a lingering user, any
/// login while fairshared is down), uncounted.
pub fn file_settings(default: &Limits, io: &IoDevices) -> Settings {
    let mut d = *default;
    d.mem_low = None;
    Settings::from_limits(&d).with_io(io)
}

/// The values a slice gets from `settings`, with systemd's own for the
/// keys they leave out.
fn overlay(settings: Option<&Settings>, own: &Values) -> Values {
    Key::ALL
        .iter()
        .map(|k| {
            let v = match settings.and_then(|s| s.get(*k)) {
                Some(v) => normal(*k, Some(v)),
                None => own.get(k).copied().flatten(),
            };
            (*k, v)
        })
        .collect()
}

/// The values of an allocation, with the user's IO limits, on a slice.
pub fn values_of(limits: &Limits, io: &IoDevices, own: &Values) -> Values {
    overlay(Some(&Settings::from_limits(limits).with_io(io)), own)
}

#[derive(Default)]
struct Model {
    /// G on disk (`None`: no file).
    global: Option<Settings>,
    /// fairshare's U files on disk.
    users: HashMap<u32, Entry>,
    /// Runtime control files of managed keys, with their values.
    runtime: HashMap<u32, Runtime>,
    /// What systemd alone gives a user slice (its `10-defaults.conf`).
    own: Values,
    /// U files still to write: the base, and why (the file's first line).
    pending: HashMap<u32, (Base, String)>,
    /// Whether [`DropIns::load`] ran.
    loaded: bool,
    /// Users whose slice was read back since fairshare's files last
    /// changed (see [`DropIns::unverified`]).
    verified: std::collections::HashSet<u32>,
    /// The files a reload is about to write ([`DropIns::expect`]).
    next: Option<Plan>,
}

/// One user's runtime values: a few keys, kept as a short sorted list with
/// room for what it holds (a B-tree map's node would cost about 200 bytes
/// per user; 100 000 users set by root each have some).
#[derive(Debug, Default)]
struct Runtime(Vec<(Key, Option<Value>)>);

impl Runtime {
    fn iter(&self) -> std::slice::Iter<'_, (Key, Option<Value>)> {
        self.0.iter()
    }

    fn insert(&mut self, k: Key, v: Option<Value>) {
        match self.0.binary_search_by_key(&k, |(x, _)| *x) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (k, v));
            }
        }
    }

    /// Inserts unless `k` has a value already.
    fn keep_or_insert(&mut self, k: Key, v: Option<Value>) {
        if self.0.binary_search_by_key(&k, |(x, _)| *x).is_err() {
            self.insert(k, v);
        }
    }

    fn remove(&mut self, k: &Key) {
        if let Ok(i) = self.0.binary_search_by_key(k, |(x, _)| *x) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// fairshare's drop-ins, on disk and in memory; see the module's doc.
pub struct DropIns {
    /// `None`: no file is read or written (tests and benchmarks that do not
    /// give a directory); the model is kept all the same.
    layout: Option<Layout>,
    model: Mutex<Model>,
}

impl Default for DropIns {
    fn default() -> DropIns {
        DropIns::new(None)
    }
}

/// What writing the policy's files did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub written: Vec<std::path::PathBuf>,
    pub removed: Vec<std::path::PathBuf>,
    /// Files of fairshare's name that are someone else's, left alone.
    pub foreign: Vec<std::path::PathBuf>,
}

impl DropIns {
    pub fn new(layout: Option<Layout>) -> DropIns {
        DropIns {
            layout,
            model: Mutex::new(Model::default()),
        }
    }

    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads what is on disk: G, every U of fairshare's, every runtime
    /// control file of a managed key, and systemd's own defaults. Runtime
    /// values recorded meanwhile (a login answered before this) are kept.
    /// Blocking; once (later calls do nothing).
    pub fn load(&self) -> io::Result<()> {
        let Some(l) = &self.layout else {
            return Ok(());
        };
        if self.lock().loaded {
            return Ok(());
        }
        let global = match l.read_global()? {
            OnDisk::Ours(Entry::Limits(s)) => Some(s),
            _ => None,
        };
        let users: HashMap<u32, Entry> = l.user_entries()?.into_iter().collect();
        let mut runtime = HashMap::new();
        for (uid, _) in l.users_with_control_files()? {
            runtime.insert(uid, l.control_values(uid));
        }
        let own = own_values(l)?;
        let mut m = self.lock();
        m.global = global;
        m.users = users;
        for (uid, values) in runtime {
            let r = m.runtime.entry(uid).or_default();
            for (k, v) in values {
                r.keep_or_insert(k, v);
            }
        }
        m.own = own;
        m.loaded = true;
        Ok(())
    }

    /// What systemd alone gives a user slice.
    pub fn own(&self) -> Values {
        self.lock().own.clone()
    }

    /// The policy default on disk (G).
    pub fn global(&self) -> Option<Settings> {
        self.lock().global.clone()
    }

    /// What the files give the user's slice: U, or G.
    fn file_values(m: &Model, uid: u32) -> Values {
        match m.users.get(&uid) {
            Some(Entry::Limits(s)) => overlay(Some(s), &m.own),
            Some(Entry::Exempt) => m.own.clone(),
            None => overlay(m.global.as_ref(), &m.own),
        }
    }

    /// What is in force on the user's slice: the files, and the runtime
    /// values on top.
    pub fn in_force(&self, uid: u32) -> Values {
        let m = self.lock();
        Self::in_force_of(&m, uid)
    }

    fn in_force_of(m: &Model, uid: u32) -> Values {
        let mut v = Self::file_values(m, uid);
        if let Some(r) = m.runtime.get(&uid) {
            for (k, x) in r.iter() {
                v.insert(*k, *x);
            }
        }
        v
    }

    /// The values a base gives (for exempt users: systemd's own).
    pub fn base_values(&self, base: &Base) -> Values {
        let m = self.lock();
        match base {
            Base::Limits(s) => overlay(Some(s), &m.own),
            Base::Exempt => m.own.clone(),
            Base::Global => overlay(m.global.as_ref(), &m.own),
        }
    }

    /// The keys whose value in force differs from `target`, with the
    /// target's value: what one `SetUnitProperties` must carry. While a
    /// reload is about to write new files ([`DropIns::expect`]), also the
    /// keys those files would change under the slice (a resize that
    /// equalled the old default): set as runtime values before the files
    /// change, they stay when systemd reads the new files.
    pub fn differing(&self, uid: u32, target: &Values) -> Vec<(Key, Option<Value>)> {
        let m = self.lock();
        let now = Self::in_force_of(&m, uid);
        let then = Self::next_files(&m, uid).map(|mut v| {
            if let Some(r) = m.runtime.get(&uid) {
                for (k, x) in r.iter() {
                    v.insert(*k, *x);
                }
            }
            v
        });
        target
            .iter()
            .filter(|(k, v)| {
                now.get(k) != Some(v) || then.as_ref().is_some_and(|t| t.get(k) != Some(v))
            })
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// The files a reload is about to write (`None`: written, or not to
    /// be): [`DropIns::differing`] and [`DropIns::settle`] count with them
    /// from now on.
    pub fn expect(&self, next: Option<Plan>) {
        self.lock().next = next;
    }

    /// What the files a reload is about to write give the user's slice.
    fn next_files(m: &Model, uid: u32) -> Option<Values> {
        let next = m.next.as_ref()?;
        Some(match next.base(uid) {
            Base::Limits(s) => overlay(Some(&s), &m.own),
            Base::Exempt => m.own.clone(),
            Base::Global => overlay(Some(&next.global), &m.own),
        })
    }

    /// The user's runtime values that only repeat what the files say (and,
    /// while a reload is about to write new ones, what those will say too:
    /// a value set because the new files differ must stay).
    fn redundant(m: &Model, uid: u32) -> Vec<Key> {
        let files = Self::file_values(m, uid);
        let next = Self::next_files(m, uid);
        m.runtime
            .get(&uid)
            .map(|r| {
                r.iter()
                    .filter(|(k, v)| {
                        files.get(k) == Some(v) && next.as_ref().is_none_or(|n| n.get(k) == Some(v))
                    })
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the user's file on disk says `base`.
    pub fn file_is(&self, uid: u32, base: &Base) -> bool {
        let m = self.lock();
        let on_disk = m.users.get(&uid);
        match base {
            Base::Global => on_disk.is_none(),
            Base::Exempt => on_disk == Some(&Entry::Exempt),
            Base::Limits(s) => match on_disk {
                Some(Entry::Limits(x)) => x == s,
                Some(Entry::Exempt) => false,
                None => m.global.as_ref() == Some(s),
            },
        }
    }

    /// What a running slice really carries (`CPUQuotaPerSecUSec`,
    /// `MemoryMax`, `MemoryHigh`, `TasksMax`; `u64::MAX`: no limit), read
    /// at start: where it differs from what the files say (a slice that
    /// started before the files were written or changed, a crash between a
    /// file and a call), the difference is recorded as in force, so that the
    /// next sync sets it right. Shares (`33%`) cannot be compared with an
    /// absolute value and are taken as they are. Returns the keys that
    /// differed.
    pub fn observed(&self, uid: u32, actual: crate::systemd::SliceValues) -> Vec<Key> {
        let mut m = self.lock();
        let now = Self::in_force_of(&m, uid);
        let mut differ = Vec::new();
        for (k, n) in Key::ALL.iter().zip(actual) {
            let real = normal(*k, Some(Value::Amount(n)));
            match now.get(k).copied().flatten() {
                Some(Value::Share(_)) => continue,
                model if model == real => continue,
                _ => differ.push((*k, real)),
            }
        }
        if !differ.is_empty() {
            let r = m.runtime.entry(uid).or_default();
            for (k, v) in &differ {
                r.insert(*k, *v);
            }
        }
        differ.into_iter().map(|(k, _)| k).collect()
    }

    /// Whether `uid`'s slice has not been read back since fairshared
    /// started or last changed its files. systemd gives a slice the files
    /// as they were when it loaded the unit: a unit still loaded from
    /// before a change (stopped but kept, e.g. by a `systemctl
    /// set-property` on it) starts again with the old default, and only a
    /// read of the slice tells ([`DropIns::observed`]). Once per user and
    /// change.
    pub fn unverified(&self, uid: u32) -> bool {
        !self.lock().verified.contains(&uid)
    }

    /// `uid`'s slice was read back ([`DropIns::unverified`]).
    pub fn verified(&self, uid: u32) {
        self.lock().verified.insert(uid);
    }

    /// Reads the user's runtime control files again (a few `stat`s on
    /// /run, no D-Bus): what someone else set on the slice meanwhile (root's
    /// `systemctl set-property --runtime`, a client of systemd's) is then
    /// in the model, so the next sync sets it right. A key without a file
    /// keeps what the model says (a value read from the slice at start that
    /// no file holds).
    pub fn reread_runtime(&self, uid: u32) {
        let Some(l) = &self.layout else {
            return;
        };
        let on_disk = l.control_values(uid);
        if on_disk.is_empty() {
            return;
        }
        let mut m = self.lock();
        let r = m.runtime.entry(uid).or_default();
        for (k, v) in on_disk {
            r.insert(k, v);
        }
    }

    /// `SetUnitProperties` wrote these keys (runtime control files).
    pub fn did_set(&self, uid: u32, keys: &[(Key, Option<Value>)]) {
        let mut m = self.lock();
        let r = m.runtime.entry(uid).or_default();
        for (k, v) in keys {
            r.insert(*k, *v);
        }
    }

    /// The user's own file should say `base`; written by the next
    /// [`DropIns::settle`].
    pub fn want(&self, uid: u32, base: Base, why: String) {
        self.lock().pending.insert(uid, (base, why));
    }

    /// Whether [`DropIns::settle`] has anything to do for this user.
    pub fn unsettled(&self, uid: u32) -> bool {
        let m = self.lock();
        if m.pending.contains_key(&uid) {
            return true;
        }
        !Self::redundant(&m, uid).is_empty()
    }

    /// Writes the user's pending file, then unlinks the runtime control
    /// files that only repeat what the files say. Blocking; call with the
    /// user's lock held, after the `SetUnitProperties` that made the slice
    /// what the file will say.
    pub fn settle(&self, uid: u32) -> io::Result<()> {
        let pending = self.lock().pending.remove(&uid);
        if let Some((base, why)) = pending {
            self.write_user(uid, &base, &why)?;
        }
        let redundant = Self::redundant(&self.lock(), uid);
        if redundant.is_empty() {
            return Ok(());
        }
        if let Some(l) = &self.layout {
            l.remove_control_files(uid, &redundant)?;
        }
        let mut m = self.lock();
        if let Some(r) = m.runtime.get_mut(&uid) {
            for k in &redundant {
                r.remove(k);
            }
            if r.is_empty() {
                m.runtime.remove(&uid);
            }
        }
        Ok(())
    }

    /// Writes (or removes) one user's own file and records it.
    fn write_user(&self, uid: u32, base: &Base, why: &str) -> io::Result<Outcome> {
        let global = self.lock().global.clone();
        let entry = match base {
            Base::Limits(s) if Some(s) == global.as_ref() => None,
            Base::Limits(s) => Some(Entry::Limits(s.clone())),
            Base::Exempt => Some(Entry::Exempt),
            Base::Global => None,
        };
        let outcome = match (&self.layout, &entry) {
            (None, _) => Outcome::Written,
            (Some(l), Some(e)) => l.write_user(uid, e, why)?,
            (Some(l), None) => l.remove_user(uid)?,
        };
        if outcome != Outcome::LeftForeign {
            let mut m = self.lock();
            match entry {
                Some(e) => m.users.insert(uid, e),
                None => m.users.remove(&uid),
            };
        }
        Ok(outcome)
    }

    /// Writes the policy default (G) and the given users' own files, and
    /// removes fairshare's files of users not given (they are at G now, or
    /// gone). Blocking. Call after the running slices whose values change
    /// were set ([`DropIns::differing`], [`DropIns::did_set`]).
    pub fn write_all(
        &self,
        global: &Settings,
        global_why: &str,
        users: &BTreeMap<u32, (Base, String)>,
    ) -> io::Result<Written> {
        let mut out = Written::default();
        // a changed file reaches units systemd loads afterwards only: every
        // slice is read back again at its user's next first login
        let before = self.lock().global.clone();
        if before.as_ref() != Some(global) {
            self.lock().verified.clear();
        }
        if let Some(l) = &self.layout {
            match l.write_global(global, global_why)? {
                Outcome::Written => out.written.push(l.global_file()),
                Outcome::LeftForeign => out.foreign.push(l.global_file()),
                _ => {}
            }
        }
        self.lock().global = Some(global.clone());
        let on_disk: Vec<u32> = self.lock().users.keys().copied().collect();
        for uid in on_disk {
            if !users.contains_key(&uid) {
                let o = self.write_user(uid, &Base::Global, "")?;
                if o == Outcome::Removed {
                    self.lock().verified.remove(&uid);
                }
                if o == Outcome::Removed
                    && let Some(l) = &self.layout
                {
                    out.removed.push(l.user_file(uid));
                }
            }
        }
        for (uid, (base, why)) in users {
            let o = self.write_user(*uid, base, why)?;
            if matches!(o, Outcome::Written | Outcome::Removed) {
                self.lock().verified.remove(uid);
            }
            if let Some(l) = &self.layout {
                match o {
                    Outcome::Written => out.written.push(l.user_file(*uid)),
                    Outcome::Removed => out.removed.push(l.user_file(*uid)),
                    Outcome::LeftForeign => out.foreign.push(l.user_file(*uid)),
                    _ => {}
                }
            }
            self.lock().pending.remove(uid);
        }
        Ok(out)
    }

    /// Every user with runtime values or an own file: they need a look at
    /// start and at every reload.
    pub fn known_uids(&self) -> Vec<u32> {
        let m = self.lock();
        let mut v: Vec<u32> = m.users.keys().chain(m.runtime.keys()).copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Users with an own file on disk.
    pub fn own_files(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.lock().users.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Whether the user has runtime values on their slice.
    pub fn has_runtime(&self, uid: u32) -> bool {
        self.lock().runtime.contains_key(&uid)
    }

    /// How many users the model holds anything for (metrics, tests).
    pub fn len(&self) -> usize {
        self.known_uids().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What systemd alone gives a user slice: every file but fairshare's, for a
/// uid with no directory of its own.
fn own_values(l: &Layout) -> io::Result<Values> {
    let mut out: Values = Key::ALL.iter().map(|k| (*k, None)).collect();
    for (k, a) in l.systemd_own(u32::MAX - 1)? {
        out.insert(k, normal(k, a.value));
    }
    Ok(out)
}

/// The D-Bus properties that put these keys to these values.
pub fn properties(keys: &[(Key, Option<Value>)]) -> Vec<(&'static str, PropertyValue)> {
    keys.iter()
        .map(|(k, v)| crate::dropin::property(*k, *v))
        .collect()
}

/// The files a policy asks for: G and the own files of every user it can
/// name without a login.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub global: Settings,
    /// G's first line.
    pub global_why: String,
    /// Users whose own file differs from G: their base and why.
    pub users: BTreeMap<u32, (Base, String)>,
}

impl Plan {
    /// The base a user gets from this plan (G when not listed).
    pub fn base(&self, uid: u32) -> Base {
        match self.users.get(&uid) {
            Some((b, _)) => b.clone(),
            None => Base::Limits(self.global.clone()),
        }
    }
}

/// The base and why for one user under `policy`.
pub fn base_for(policy: &Policy, id: &Identity) -> (Base, String) {
    let up = policy.for_user(id);
    match &up.exempt {
        Some(ex) => (Base::Exempt, format!("{}: {ex}", id.name)),
        None => (
            Base::of(&up.default, &crate::iodisk::io_of(&up.fair_default)),
            format!("{}: {}", id.name, up.sources.join(", ")),
        ),
    }
}

/// What `policy` asks to be on disk: G, and an own file for root, nobody,
/// the local system accounts below `exempt.uid_below`, every user and every
/// member of every group the policy names, and every user in `extra` (users
/// with a file already, users seen): each looked up in `dir`, and left out
/// when their file would equal G or they no longer exist. Blocking (NSS).
pub fn plan(policy: &Policy, dir: &dyn Directory, extra: &[u32]) -> Plan {
    let global = file_settings(
        &policy.plain_default(),
        &crate::iodisk::io_of(&policy.plain_fair()),
    );
    let files: Vec<String> = policy
        .files()
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let global_why = format!("the policy default, from {}", files.join(", "));
    let mut uids: Vec<u32> = vec![0, NOBODY];
    uids.extend(dir.local_uids_below(policy.exempt_uid_below()));
    let mut names: Vec<String> = policy.named_users().into_iter().map(|(n, _)| n).collect();
    for (g, _) in policy.named_groups() {
        names.extend(dir.group_members(&g));
    }
    names.sort();
    names.dedup();
    let mut by_name = Vec::new();
    for n in &names {
        if let Ok(Some(id)) = dir.by_name(n) {
            uids.push(id.uid);
            by_name.push(id);
        }
    }
    uids.extend_from_slice(extra);
    uids.sort_unstable();
    uids.dedup();
    let mut users = BTreeMap::new();
    for uid in uids {
        let id = match by_name.iter().find(|i| i.uid == uid) {
            Some(id) => Some(id.clone()),
            None => dir.by_uid(uid).ok().flatten(),
        };
        let (base, why) = match id {
            Some(id) => base_for(policy, &id),
            // root and nobody are never limited, with or without an entry
            None if uid == 0 || uid == NOBODY => (
                Base::Exempt,
                format!("uid {uid}: never limited by fairshare"),
            ),
            None => continue,
        };
        if base != Base::Limits(global.clone()) {
            users.insert(uid, (base, why));
        }
    }
    Plan {
        global,
        global_why,
        users,
    }
}

/// The overflow user, never limited.
const NOBODY: u32 = fairshare_policy::NOBODY_UID;

/// The values a slice gets from these settings, with systemd's own for
/// the keys they leave out.
pub fn values_of_settings(s: &Settings, own: &Values) -> Values {
    overlay(Some(s), own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_proto::units::{Bytes, Cpus, Tasks};

    fn default_of(mem_g: u64) -> Settings {
        Settings::from_limits(&Limits {
            cpu: Cpus::from_millis(2000),
            mem: Bytes(mem_g << 30),
            mem_high: None,
            tasks: Tasks(500),
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        })
    }

    /// A value set on a slice because the files a reload is about to write
    /// differ from the old ones (it equals the old files) stays through the
    /// file work that follows any change meanwhile, and goes once the new
    /// files are written and it repeats nothing.
    #[test]
    fn a_runtime_value_the_new_files_differ_from_is_kept_until_they_are_written() {
        let d = DropIns::default();
        let no_users = BTreeMap::new();
        d.write_all(&default_of(8), "old", &no_users).unwrap();
        let eight = Some(Value::Amount(8 << 30));
        let target: Values = [(Key::MemoryMax, eight)].into();
        assert!(
            d.differing(1001, &target).is_empty(),
            "the old files give it"
        );
        let next = Plan {
            global: default_of(9),
            global_why: "new".into(),
            users: BTreeMap::new(),
        };
        d.expect(Some(next.clone()));
        assert_eq!(d.differing(1001, &target), vec![(Key::MemoryMax, eight)]);
        d.did_set(1001, &[(Key::MemoryMax, eight)]);
        // a change meanwhile settles the user's files: the value stays
        assert!(!d.unsettled(1001));
        d.settle(1001).unwrap();
        assert_eq!(d.in_force(1001)[&Key::MemoryMax], eight);
        d.write_all(&next.global, &next.global_why, &next.users)
            .unwrap();
        d.expect(None);
        d.settle(1001).unwrap();
        assert_eq!(d.in_force(1001)[&Key::MemoryMax], eight, "over G's 9G");
        // back to the (new) default: the runtime value repeats G and goes
        let nine = Some(Value::Amount(9 << 30));
        d.did_set(1001, &[(Key::MemoryMax, nine)]);
        assert!(d.unsettled(1001));
        d.settle(1001).unwrap();
        assert!(!d.has_runtime(1001));
    }
}
