//! The ledger's layout in `state.bin`: every user's entry as plain integers
//! and strings, in a fixed order ([postcard]), behind a header that says
//! what the file is and a checksum of the rest.
//!
//! ```text
//! "FSLEDGER"  version (u32, little-endian)  CRC-32 of the payload (u32, LE)
//! payload: the entries, uid order, each as `User` below
//! ```
//!
//! Quantities are stored as numbers (CPU in thousandths, memory in bytes),
//! not the text the JSON file held ("4G"): a start at 100 000 users reads
//! this in a fraction of the time `state.json` took (bench/RESULTS.md).
//!
//! Fields are positional: adding one to [`Entry`], [`Grant`], [`Limits`] or
//! [`SessionInfo`] stops this file from compiling (each conversion takes
//! its value apart field by field), and the new field needs a place here,
//! a new [`VERSION`], and a reading of the old one.

use std::cell::{Cell, RefCell};

use fairshare_proto::units::{Bytes, Cpus, Tasks, Weight};
use fairshare_proto::wire::{Limits, SessionInfo};
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ledger::{Entry, Grant, Ledger};

pub const MAGIC: &[u8; 8] = b"FSLEDGER";
pub const VERSION: u32 = 1;
const HEADER: usize = 16;

/// Encodes the ledger, header included.
pub fn encode(ledger: &Ledger) -> Result<Vec<u8>, String> {
    encode_users(ledger.entries().map(|(uid, e)| (*uid, e)))
}

/// Encodes a list of users as given (order and repeats too), for tests of
/// what a load refuses.
#[cfg(test)]
pub fn encode_entries(users: &[(u32, Box<Entry>)]) -> Result<Vec<u8>, String> {
    encode_users(users.iter().map(|(uid, e)| (*uid, &**e)))
}

fn encode_users<'a, I>(users: I) -> Result<Vec<u8>, String>
where
    I: ExactSizeIterator<Item = (u32, &'a Entry)>,
{
    let payload = postcard::to_stdvec(&Users(Cell::new(Some(users)))).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes a whole file; the error says what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Ledger, String> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err(format!(
            "not a fairshare state file ({} bytes, no FSLEDGER header)",
            bytes.len()
        ));
    }
    let (Some(version), Some(crc)) = (word(8), word(12)) else {
        return Err("truncated header".into());
    };
    if version != VERSION {
        return Err(format!(
            "unknown state version {version} (this fairshared reads {VERSION})"
        ));
    }
    let payload = &bytes[HEADER..];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch (the file was changed or damaged)".into());
    }
    // postcard keeps no message of an error raised while reading: the
    // reader's own go here
    let why = RefCell::new(None);
    let mut de = postcard::Deserializer::from_bytes(payload);
    let read = EntriesSeed(&why)
        .deserialize(&mut de)
        .and_then(|e| Ok((e, de.finalize()?)));
    let (entries, rest) = read.map_err(|e| why.take().unwrap_or_else(|| e.to_string()))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last user", rest.len()));
    }
    Ledger::from_saved(entries).map_err(|e| e.to_string())
}

/// Reads the users, each converted as it is read (a list of the read form
/// first would take several times the memory); what is wrong goes to `.0`.
struct EntriesSeed<'w>(&'w RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Vec<(u32, Box<Entry>)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Vec<(u32, Box<Entry>)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the users")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut v: Vec<(u32, Box<Entry>)> =
            Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        let fail = |why: String| {
            let e = A::Error::custom(&why);
            *self.0.borrow_mut() = Some(why);
            e
        };
        while let Some(u) = seq.next_element::<User<'de>>()? {
            let uid = u.uid;
            // written in uid order, each once
            if v.last().is_some_and(|(last, _)| *last >= uid) {
                return Err(fail(format!("user {uid} out of order")));
            }
            match u.entry() {
                Ok(e) => v.push((uid, Box::new(e))),
                Err(e) => return Err(fail(format!("user {uid}: {e}"))),
            }
        }
        Ok(v)
    }
}

/// The ledger's users as one sequence, converted one at a time (no copy of
/// the ledger is made under its lock); serialized once.
struct Users<I>(Cell<Option<I>>);

impl<'a, I> Serialize for Users<I>
where
    I: ExactSizeIterator<Item = (u32, &'a Entry)>,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.take() {
            Some(users) => s.collect_seq(users.map(|(uid, e)| User::of(uid, e))),
            // never an empty ledger with a right checksum
            None => Err(serde::ser::Error::custom("the users were already written")),
        }
    }
}

/// Sessions serialized straight from the entry's list.
struct Sessions<'a>(&'a [SessionInfo]);

impl Serialize for Sessions<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Session::of))
    }
}

/// One user as written ([`Entry`] plus its uid).
#[derive(Serialize)]
struct UserOut<'a> {
    uid: u32,
    name: &'a str,
    sessions: Sessions<'a>,
    grant: Option<GrantOnDisk>,
    admin: Option<GrantOnDisk>,
    limits: LimitsOnDisk,
    applied: Option<LimitsOnDisk>,
    notice: Option<&'a str>,
    granted_mem_low: Option<u64>,
    logged_in_at: Option<u64>,
}

/// One user as read: the same fields in the same order as [`UserOut`].
#[derive(Deserialize)]
struct User<'a> {
    uid: u32,
    #[serde(borrow)]
    name: &'a str,
    #[serde(borrow)]
    sessions: Vec<Session<'a>>,
    grant: Option<GrantOnDisk>,
    admin: Option<GrantOnDisk>,
    limits: LimitsOnDisk,
    applied: Option<LimitsOnDisk>,
    #[serde(borrow)]
    notice: Option<&'a str>,
    granted_mem_low: Option<u64>,
    logged_in_at: Option<u64>,
}

impl User<'_> {
    fn of(uid: u32, e: &Entry) -> UserOut<'_> {
        let Entry {
            name,
            sessions,
            grant,
            admin,
            limits,
            applied,
            notice,
            granted_mem_low,
            logged_in_at,
        } = e;
        UserOut {
            uid,
            name,
            sessions: Sessions(sessions),
            grant: grant.as_deref().map(GrantOnDisk::of),
            admin: admin.as_deref().map(GrantOnDisk::of),
            limits: LimitsOnDisk::of(limits),
            applied: applied.as_ref().map(LimitsOnDisk::of),
            notice: notice.as_deref(),
            granted_mem_low: granted_mem_low.map(Bytes::get),
            logged_in_at: *logged_in_at,
        }
    }

    fn entry(self) -> Result<Entry, String> {
        let grant = |g: Option<GrantOnDisk>| -> Result<Option<Box<Grant>>, String> {
            g.map(|g| g.grant().map(Box::new)).transpose()
        };
        Ok(Entry {
            name: self.name.to_owned(),
            sessions: self.sessions.into_iter().map(Session::info).collect(),
            grant: grant(self.grant)?,
            admin: grant(self.admin)?,
            limits: self.limits.limits()?,
            applied: self.applied.map(LimitsOnDisk::limits).transpose()?,
            notice: self.notice.map(str::to_owned),
            granted_mem_low: self.granted_mem_low.map(Bytes),
            logged_in_at: self.logged_in_at,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Session<'a> {
    pid: u32,
    service: Option<&'a str>,
    tty: Option<&'a str>,
    rhost: Option<&'a str>,
    session_id: Option<&'a str>,
    opened_at: u64,
    start_time: Option<u64>,
}

impl<'a> Session<'a> {
    fn of(s: &'a SessionInfo) -> Session<'a> {
        let SessionInfo {
            pid,
            service,
            tty,
            rhost,
            session_id,
            opened_at,
            start_time,
        } = s;
        Session {
            pid: *pid,
            service: service.as_deref(),
            tty: tty.as_deref(),
            rhost: rhost.as_deref(),
            session_id: session_id.as_deref(),
            opened_at: *opened_at,
            start_time: *start_time,
        }
    }

    fn info(self) -> SessionInfo {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        SessionInfo {
            pid: self.pid,
            service: owned(self.service),
            tty: owned(self.tty),
            rhost: owned(self.rhost),
            session_id: owned(self.session_id),
            opened_at: self.opened_at,
            start_time: self.start_time,
        }
    }
}

/// CPUs within what a policy or a request may give (a zero is refused
/// later, with the other zero quantities, by [`Ledger::from_saved`]).
fn cpus(millis: u64) -> Result<Cpus, String> {
    if millis != 0 && !(Cpus::MIN.millis()..=Cpus::MAX.millis()).contains(&millis) {
        return Err(format!(
            "{} CPUs outside {}..={}",
            Cpus::from_millis(millis),
            Cpus::MIN,
            Cpus::MAX
        ));
    }
    Ok(Cpus::from_millis(millis))
}

fn tasks(n: u64) -> Result<Tasks, String> {
    if n > Tasks::MAX.get() {
        return Err(format!("{n} tasks above {}", Tasks::MAX));
    }
    Ok(Tasks(n))
}

fn weight(w: Option<u64>) -> Result<Option<Weight>, String> {
    w.map(|v| Weight::new(v).ok_or_else(|| format!("weight {v} outside 1..=10000")))
        .transpose()
}

#[derive(Serialize, Deserialize)]
struct LimitsOnDisk {
    cpu_millis: u64,
    mem: u64,
    mem_high: Option<u64>,
    tasks: u64,
    weight: Option<u64>,
    io_weight: Option<u64>,
    mem_low: Option<u64>,
    swap: Option<u64>,
}

impl LimitsOnDisk {
    fn of(l: &Limits) -> LimitsOnDisk {
        let Limits {
            cpu,
            mem,
            mem_high,
            tasks,
            weight,
            io_weight,
            mem_low,
            swap,
        } = l;
        LimitsOnDisk {
            cpu_millis: cpu.millis(),
            mem: mem.get(),
            mem_high: mem_high.map(Bytes::get),
            tasks: tasks.get(),
            weight: weight.map(Weight::get),
            io_weight: io_weight.map(Weight::get),
            mem_low: mem_low.map(Bytes::get),
            swap: swap.map(Bytes::get),
        }
    }

    fn limits(self) -> Result<Limits, String> {
        Ok(Limits {
            cpu: cpus(self.cpu_millis)?,
            mem: Bytes(self.mem),
            mem_high: self.mem_high.map(Bytes),
            tasks: tasks(self.tasks)?,
            weight: weight(self.weight)?,
            io_weight: weight(self.io_weight)?,
            mem_low: self.mem_low.map(Bytes),
            swap: self.swap.map(Bytes),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct GrantOnDisk {
    cpu_millis: Option<u64>,
    mem: Option<u64>,
    tasks: Option<u64>,
    weight: Option<u64>,
    io_weight: Option<u64>,
    mem_low: Option<u64>,
    swap: Option<u64>,
    by: u32,
    at: u64,
    expires_at: Option<u64>,
    since: Option<u64>,
}

impl GrantOnDisk {
    fn of(g: &Grant) -> GrantOnDisk {
        let Grant {
            cpu,
            mem,
            tasks,
            weight,
            io_weight,
            mem_low,
            swap,
            by,
            at,
            expires_at,
            since,
        } = g;
        GrantOnDisk {
            cpu_millis: cpu.map(Cpus::millis),
            mem: mem.map(Bytes::get),
            tasks: tasks.map(Tasks::get),
            weight: weight.map(Weight::get),
            io_weight: io_weight.map(Weight::get),
            mem_low: mem_low.map(Bytes::get),
            swap: swap.map(Bytes::get),
            by: *by,
            at: *at,
            expires_at: *expires_at,
            since: *since,
        }
    }

    fn grant(self) -> Result<Grant, String> {
        Ok(Grant {
            cpu: self.cpu_millis.map(cpus).transpose()?,
            mem: self.mem.map(Bytes),
            tasks: self.tasks.map(tasks).transpose()?,
            weight: weight(self.weight)?,
            io_weight: weight(self.io_weight)?,
            mem_low: self.mem_low.map(Bytes),
            swap: self.swap.map(Bytes),
            by: self.by,
            at: self.at,
            expires_at: self.expires_at,
            since: self.since,
        })
    }
}
