//! CPU counts, memory sizes and task counts: parsing, validation and display.
//!
//! These are the only three kinds of quantity fairshare deals in, and they are
//! parsed the same way everywhere: in policy files, on the wire and on the
//! command line. Every parse error says what was wrong and what would be
//! accepted, so it can be shown to a person as it is.
//!
//! * [`Cpus`] is kept in thousandths of a CPU (`1.5` is 1500). systemd receives
//!   it as `CPUQuotaPerSecUSec` = cpus × 1 000 000.
//! * [`Bytes`] accepts `B`, `K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB` (and the
//!   `KiB` spellings), all powers of 1024, case-insensitive, with decimals
//!   (`1.5G`). A bare number is a count of bytes.
//! * [`Tasks`] is a positive whole number.
//!
//! Zero, negative numbers, NaN, infinities, overflow and unknown units are
//! errors.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a quantity could not be parsed. The message is meant for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}` is empty; expected {1}")]
    Empty(&'static str, &'static str),
    #[error("`{input}` is not a number; expected {expected}")]
    NotANumber {
        input: String,
        expected: &'static str,
    },
    #[error("`{0}` must be greater than zero")]
    NotPositive(String),
    #[error(
        "`{input}` has an unknown unit `{unit}`; use B, K, M, G or T (powers of 1024), e.g. 512M or 1.5G"
    )]
    UnknownUnit { input: String, unit: String },
    #[error("`{input}` is too large (at most {max})")]
    TooLarge { input: String, max: String },
    #[error("`{input}` is too small (at least {min})")]
    TooSmall { input: String, min: String },
    #[error("`{0}` must be a whole number")]
    NotWhole(String),
}

const CPU_EXPECTED: &str = "a number of CPUs such as 2 or 1.5";
const SIZE_EXPECTED: &str = "a size such as 8G, 512M or 1.5G";
const TASKS_EXPECTED: &str = "a whole number of tasks such as 4096";

// ---------------------------------------------------------------- Cpus

/// An amount of CPU time, in thousandths of a CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpus(u64);

impl Cpus {
    /// The smallest quota the kernel enforces meaningfully (1 ms per 100 ms).
    pub const MIN: Cpus = Cpus(10);
    /// Far above any real host; guards against `1e308` and friends.
    pub const MAX: Cpus = Cpus(100_000 * 1000);

    pub const fn from_millis(millis: u64) -> Cpus {
        Cpus(millis)
    }

    pub const fn whole(cpus: u64) -> Cpus {
        Cpus(cpus.saturating_mul(1000))
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// The value systemd takes as `CPUQuotaPerSecUSec`.
    pub const fn quota_usec_per_sec(self) -> u64 {
        self.0.saturating_mul(1000)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    pub fn saturating_sub(self, other: Cpus) -> Cpus {
        Cpus(self.0.saturating_sub(other.0))
    }

    pub fn saturating_add(self, other: Cpus) -> Cpus {
        Cpus(self.0.saturating_add(other.0))
    }

    /// `self × factor`, rounded down, saturating.
    pub fn scale(self, factor: f64) -> Cpus {
        Cpus(scale_u64(self.0, factor))
    }

    /// Validates a number of CPUs given as a float (JSON numbers, YAML floats).
    pub fn from_f64(value: f64) -> Result<Cpus, ValueError> {
        let input = fmt_f64(value);
        if value.is_nan() {
            return Err(ValueError::NotANumber {
                input,
                expected: CPU_EXPECTED,
            });
        }
        if value <= 0.0 {
            return Err(ValueError::NotPositive(input));
        }
        if !value.is_finite() || value > Cpus::MAX.as_f64() {
            return Err(ValueError::TooLarge {
                input,
                max: Cpus::MAX.to_string(),
            });
        }
        let cpus = Cpus((value * 1000.0).round() as u64);
        if cpus < Cpus::MIN {
            return Err(ValueError::TooSmall {
                input,
                min: Cpus::MIN.to_string(),
            });
        }
        Ok(cpus)
    }
}

impl FromStr for Cpus {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Cpus, ValueError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ValueError::Empty("CPU count", CPU_EXPECTED));
        }
        // Plain decimals only: no `inf`, `NaN`, `0x10` or `1e3`.
        let plain = t
            .strip_prefix('-')
            .unwrap_or(t)
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
        if !plain || t.matches('.').count() > 1 || !t.chars().any(|c| c.is_ascii_digit()) {
            return Err(ValueError::NotANumber {
                input: t.to_string(),
                expected: CPU_EXPECTED,
            });
        }
        let value: f64 = t.parse().map_err(|_| ValueError::NotANumber {
            input: t.to_string(),
            expected: CPU_EXPECTED,
        })?;
        Cpus::from_f64(value).map_err(|e| rename_input(e, t))
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:03}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl Serialize for Cpus {
    /// Whole CPUs are written as JSON integers (`4`), others as floats (`1.5`),
    /// as in the original protocol.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            s.serialize_u64(self.0 / 1000)
        } else {
            s.serialize_f64(self.as_f64())
        }
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cpus, D::Error> {
        d.deserialize_any(QuantityVisitor::<Cpus>::new())
    }
}

// ---------------------------------------------------------------- Bytes

/// A memory size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

const UNITS: [(&str, u32); 5] = [("T", 40), ("G", 30), ("M", 20), ("K", 10), ("B", 0)];

impl Bytes {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    pub const fn get(self) -> u64 {
        self.0
    }

    pub fn saturating_sub(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(other.0))
    }

    pub fn saturating_add(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(other.0))
    }

    /// `self × factor`, rounded down, saturating.
    pub fn scale(self, factor: f64) -> Bytes {
        Bytes(scale_u64(self.0, factor))
    }

    /// Validates a size given as a float (a JSON or YAML number of bytes).
    pub fn from_f64(value: f64) -> Result<Bytes, ValueError> {
        let input = fmt_f64(value);
        if value.is_nan() {
            return Err(ValueError::NotANumber {
                input,
                expected: SIZE_EXPECTED,
            });
        }
        if value <= 0.0 {
            return Err(ValueError::NotPositive(input));
        }
        // 2^64 is exactly representable; anything at or above it overflows.
        if !value.is_finite() || value >= 18_446_744_073_709_551_616.0 {
            return Err(ValueError::TooLarge {
                input,
                max: Bytes(u64::MAX).to_string(),
            });
        }
        if value.fract() != 0.0 {
            return Err(ValueError::NotWhole(input));
        }
        Ok(Bytes(value as u64))
    }
}

impl FromStr for Bytes {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Bytes, ValueError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ValueError::Empty("memory size", SIZE_EXPECTED));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], t[split..].trim());
        let not_a_number = || ValueError::NotANumber {
            input: t.to_string(),
            expected: SIZE_EXPECTED,
        };
        if let Some(rest) = num.strip_prefix('-') {
            // Report negatives as such, not as "not a number".
            return match rest.chars().any(|c| c.is_ascii_digit()) {
                true => Err(ValueError::NotPositive(t.to_string())),
                false => Err(not_a_number()),
            };
        }
        let num = num.strip_prefix('+').unwrap_or(num);
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        let digits_ok = |d: &str| d.chars().all(|c| c.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
            return Err(not_a_number());
        }
        let shift = unit_shift(unit).ok_or_else(|| ValueError::UnknownUnit {
            input: t.to_string(),
            unit: unit.to_string(),
        })?;
        let too_large = || ValueError::TooLarge {
            input: t.to_string(),
            max: Bytes(u64::MAX).to_string(),
        };
        let int = int.trim_start_matches('0');
        if int.len() > 20 {
            return Err(too_large());
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| too_large())?
        };
        let mut total = int.checked_shl(shift).ok_or_else(too_large)?;
        // Fraction: floor(frac × 2^shift / 10^len), exact in u128 for up to 18 digits.
        let frac = frac.trim_end_matches('0');
        let frac = &frac[..frac.len().min(18)];
        if !frac.is_empty() {
            let f: u128 = frac.parse().map_err(|_| not_a_number())?;
            total += (f << shift) / 10u128.pow(frac.len() as u32);
        }
        if total > u128::from(u64::MAX) {
            return Err(too_large());
        }
        if total == 0 {
            return Err(ValueError::NotPositive(t.to_string()));
        }
        Ok(Bytes(total as u64))
    }
}

fn unit_shift(unit: &str) -> Option<u32> {
    let u = unit.to_ascii_uppercase();
    let u = u.as_str();
    match u {
        "" | "B" => Some(0),
        _ => {
            let mut chars = u.chars();
            let letter = chars.next()?.to_string();
            let rest = chars.as_str();
            let shift = UNITS.iter().find(|(l, _)| *l == letter)?.1;
            if shift == 0 {
                return None;
            }
            matches!(rest, "" | "B" | "IB").then_some(shift)
        }
    }
}

impl fmt::Display for Bytes {
    /// The largest unit that shows the value exactly with at most three
    /// decimals: `8G`, `1.5G`, `1000M`, `4095B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = u128::from(self.0);
        for (letter, shift) in UNITS {
            let unit = 1u128 << shift;
            if shift > 0 && (v < unit || (v * 1000) % unit != 0) {
                continue;
            }
            let whole = v / unit;
            let thousandths = (v % unit) * 1000 / unit;
            return if thousandths == 0 {
                write!(f, "{whole}{letter}")
            } else {
                let digits = format!("{thousandths:03}");
                write!(f, "{whole}.{}{letter}", digits.trim_end_matches('0'))
            };
        }
        write!(f, "{}B", self.0)
    }
}

impl Bytes {
    /// A short approximate form for tables and messages: `7.2G`, `512M`.
    /// Use `Display` where the exact value matters.
    pub fn human(self) -> String {
        for (letter, shift) in UNITS {
            let unit = 1u64 << shift;
            if self.0 >= unit || shift == 0 {
                let v = self.0 as f64 / unit as f64;
                let s = if v >= 100.0 || shift == 0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                };
                return format!("{}{letter}", s.strip_suffix(".0").unwrap_or(&s));
            }
        }
        self.to_string()
    }

    /// Rounded down to a whole MiB (at least 1 MiB when not zero).
    pub fn floor_mib(self) -> Bytes {
        match self.0 {
            0 => Bytes(0),
            v if v < Self::MIB => Bytes(Self::MIB),
            v => Bytes(v - v % Self::MIB),
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_any(QuantityVisitor::<Bytes>::new())
    }
}

// ---------------------------------------------------------------- Tasks

/// A limit on the number of tasks (processes and threads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Tasks(pub u64);

impl Tasks {
    /// The kernel's own ceiling on PIDs (`PID_MAX_LIMIT`).
    pub const MAX: Tasks = Tasks(4_194_304);

    pub const fn get(self) -> u64 {
        self.0
    }

    pub fn from_f64(value: f64) -> Result<Tasks, ValueError> {
        let input = fmt_f64(value);
        if value.is_nan() {
            return Err(ValueError::NotANumber {
                input,
                expected: TASKS_EXPECTED,
            });
        }
        if value < 1.0 {
            return match value.fract() != 0.0 && value > 0.0 {
                true => Err(ValueError::NotWhole(input)),
                false => Err(ValueError::NotPositive(input)),
            };
        }
        if !value.is_finite() || value > Tasks::MAX.0 as f64 {
            return Err(ValueError::TooLarge {
                input,
                max: Tasks::MAX.0.to_string(),
            });
        }
        if value.fract() != 0.0 {
            return Err(ValueError::NotWhole(input));
        }
        Ok(Tasks(value as u64))
    }
}

impl FromStr for Tasks {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Tasks, ValueError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ValueError::Empty("task count", TASKS_EXPECTED));
        }
        let body = t.strip_prefix('-').unwrap_or(t);
        if !body.chars().all(|c| c.is_ascii_digit() || c == '.') || body.is_empty() {
            return Err(ValueError::NotANumber {
                input: t.to_string(),
                expected: TASKS_EXPECTED,
            });
        }
        if body.len() > 20 {
            return Err(ValueError::TooLarge {
                input: t.to_string(),
                max: Tasks::MAX.0.to_string(),
            });
        }
        let value: f64 = t.parse().map_err(|_| ValueError::NotANumber {
            input: t.to_string(),
            expected: TASKS_EXPECTED,
        })?;
        Tasks::from_f64(value).map_err(|e| rename_input(e, t))
    }
}

impl fmt::Display for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Tasks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tasks, D::Error> {
        d.deserialize_any(QuantityVisitor::<Tasks>::new())
    }
}

// ---------------------------------------------------------------- durations

/// Parses a duration such as `90s`, `30m`, `4h`, `2d`, `1w` or `1h30m`.
/// A bare number is a count of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, ValueError> {
    const EXPECTED: &str = "a duration such as 30m, 4h or 1d";
    let t = s.trim();
    if t.is_empty() {
        return Err(ValueError::Empty("duration", EXPECTED));
    }
    let bad = || ValueError::NotANumber {
        input: t.to_string(),
        expected: EXPECTED,
    };
    if t.starts_with('-') {
        return Err(ValueError::NotPositive(t.to_string()));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 || digits > 12 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let secs = match unit.to_ascii_lowercase().as_str() {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            _ => {
                return Err(ValueError::NotANumber {
                    input: t.to_string(),
                    expected: "a duration with a unit s, m, h, d or w, such as 30m or 4h",
                });
            }
        };
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| ValueError::TooLarge {
                input: t.to_string(),
                max: "10 years".into(),
            })?;
    }
    if total == 0 {
        return Err(ValueError::NotPositive(t.to_string()));
    }
    if total > 10 * 365 * 86_400 {
        return Err(ValueError::TooLarge {
            input: t.to_string(),
            max: "10 years".into(),
        });
    }
    Ok(std::time::Duration::from_secs(total))
}

/// Shows a duration in the largest units that keep it exact: `4h`, `1h30m`, `90s`.
pub fn format_duration(d: std::time::Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

// ---------------------------------------------------------------- shared

/// A quantity that can be read from a string or from a number.
///
/// `Deserialize` (used for answers and saved state) also accepts zero, which
/// capacity figures need; requests and policies go through the validating
/// `FromStr` and `from_*` functions, which never do.
pub trait Quantity: FromStr<Err = ValueError> + Sized {
    const EXPECTED: &'static str;
    const ZERO: Self;
    fn from_number(value: f64) -> Result<Self, ValueError>;

    fn from_u64(value: u64) -> Result<Self, ValueError> {
        Self::from_number(value as f64)
    }
}

impl Quantity for Cpus {
    const EXPECTED: &'static str = CPU_EXPECTED;
    const ZERO: Self = Cpus(0);
    fn from_number(value: f64) -> Result<Self, ValueError> {
        Cpus::from_f64(value)
    }
}

impl Quantity for Bytes {
    const EXPECTED: &'static str = SIZE_EXPECTED;
    const ZERO: Self = Bytes(0);
    fn from_number(value: f64) -> Result<Self, ValueError> {
        Bytes::from_f64(value)
    }
    fn from_u64(value: u64) -> Result<Self, ValueError> {
        match value {
            0 => Err(ValueError::NotPositive("0".into())),
            v => Ok(Bytes(v)),
        }
    }
}

impl Quantity for Tasks {
    const EXPECTED: &'static str = TASKS_EXPECTED;
    const ZERO: Self = Tasks(0);
    fn from_number(value: f64) -> Result<Self, ValueError> {
        Tasks::from_f64(value)
    }
    fn from_u64(value: u64) -> Result<Self, ValueError> {
        match value {
            0 => Err(ValueError::NotPositive("0".into())),
            v if v > Tasks::MAX.0 => Err(ValueError::TooLarge {
                input: v.to_string(),
                max: Tasks::MAX.0.to_string(),
            }),
            v => Ok(Tasks(v)),
        }
    }
}

struct QuantityVisitor<T>(std::marker::PhantomData<T>);

impl<T> QuantityVisitor<T> {
    fn new() -> Self {
        QuantityVisitor(std::marker::PhantomData)
    }
}

impl<T: Quantity> Visitor<'_> for QuantityVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        match v.parse() {
            Err(ValueError::NotPositive(_)) if !v.trim_start().starts_with('-') => Ok(T::ZERO),
            other => other.map_err(E::custom),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        match v {
            0 => Ok(T::ZERO),
            v => T::from_u64(v).map_err(E::custom),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(u) => T::from_u64(u).map_err(E::custom),
            Err(_) => Err(E::custom(ValueError::NotPositive(v.to_string()))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        match v == 0.0 {
            true => Ok(T::ZERO),
            false => T::from_number(v).map_err(E::custom),
        }
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn scale_u64(v: u64, factor: f64) -> u64 {
    if !factor.is_finite() || factor <= 0.0 {
        return 0;
    }
    let r = v as f64 * factor;
    if r >= u64::MAX as f64 {
        u64::MAX
    } else {
        r as u64
    }
}

/// Puts the caller's spelling back into an error produced from a parsed float.
fn rename_input(e: ValueError, input: &str) -> ValueError {
    let input = input.to_string();
    match e {
        ValueError::NotPositive(_) => ValueError::NotPositive(input),
        ValueError::TooLarge { max, .. } => ValueError::TooLarge { input, max },
        ValueError::TooSmall { min, .. } => ValueError::TooSmall { input, min },
        ValueError::NotWhole(_) => ValueError::NotWhole(input),
        ValueError::NotANumber { expected, .. } => ValueError::NotANumber { input, expected },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Result<u64, ValueError> {
        s.parse::<Bytes>().map(|b| b.0)
    }

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(b("8G"), Ok(8 << 30));
        assert_eq!(b("16GB"), Ok(16 << 30));
        assert_eq!(b("512M"), Ok(512 << 20));
        assert_eq!(b("512mb"), Ok(512 << 20));
        assert_eq!(b("1K"), Ok(1024));
        assert_eq!(b("1KB"), Ok(1024));
        assert_eq!(b("2T"), Ok(2 << 40));
        assert_eq!(b("2TB"), Ok(2 << 40));
        assert_eq!(b("100B"), Ok(100));
        assert_eq!(b("100"), Ok(100));
        assert_eq!(b("1GiB"), Ok(1 << 30));
        assert_eq!(b(" 8 G "), Ok(8 << 30));
    }

    #[test]
    fn decimal_sizes_are_exact() {
        assert_eq!(b("1.5G"), Ok(3 << 29));
        assert_eq!(b("0.5K"), Ok(512));
        assert_eq!(b(".5M"), Ok(512 << 10));
        assert_eq!(b("1.0G"), Ok(1 << 30));
        assert_eq!(b("1.3G"), Ok(1_395_864_371)); // floor of 1395864371.2
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(matches!(b("0"), Err(ValueError::NotPositive(_))));
        assert!(matches!(b("0G"), Err(ValueError::NotPositive(_))));
        assert!(matches!(b("0.0000001B"), Err(ValueError::NotPositive(_))));
        assert!(matches!(b("-1G"), Err(ValueError::NotPositive(_))));
        assert!(matches!(b("NaN"), Err(ValueError::NotANumber { .. })));
        assert!(matches!(b("8X"), Err(ValueError::UnknownUnit { .. })));
        assert!(matches!(b("8GBB"), Err(ValueError::UnknownUnit { .. })));
        assert!(matches!(b("8P"), Err(ValueError::UnknownUnit { .. })));
        assert!(matches!(b("G"), Err(ValueError::NotANumber { .. })));
        assert!(matches!(b("1.2.3G"), Err(ValueError::NotANumber { .. })));
        assert!(matches!(b(""), Err(ValueError::Empty(..))));
        assert!(matches!(b("16777216T"), Err(ValueError::TooLarge { .. })));
        assert!(matches!(
            b("99999999999999999999999G"),
            Err(ValueError::TooLarge { .. })
        ));
        assert!(matches!(
            b("18446744073709551616"),
            Err(ValueError::TooLarge { .. })
        ));
        assert_eq!(b("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit() {
        assert_eq!(Bytes(8 << 30).to_string(), "8G");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5G");
        assert_eq!(Bytes(1000 << 20).to_string(), "1000M");
        assert_eq!(Bytes(1023).to_string(), "1023B");
        assert_eq!(Bytes(1536).to_string(), "1.5K");
        assert_eq!(Bytes(1 << 40).to_string(), "1T");
        assert_eq!(Bytes(u64::MAX).to_string(), "18446744073709551615B");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(Bytes(7_730_941_132).human(), "7.2G");
        assert_eq!(Bytes(8 << 30).human(), "8G");
        assert_eq!(Bytes(512 << 20).human(), "512M");
        assert_eq!(Bytes(1000).human(), "1000B");
        assert_eq!(Bytes(150 << 30).human(), "150G");
        assert_eq!(Bytes(7_730_941_132).floor_mib(), Bytes(7372 << 20));
    }

    #[test]
    fn cpus_parse_and_display() {
        assert_eq!("2".parse::<Cpus>(), Ok(Cpus::whole(2)));
        assert_eq!("1.5".parse::<Cpus>(), Ok(Cpus::from_millis(1500)));
        assert_eq!("0.25".parse::<Cpus>(), Ok(Cpus::from_millis(250)));
        assert_eq!(Cpus::from_millis(1500).to_string(), "1.5");
        assert_eq!(Cpus::from_millis(250).to_string(), "0.25");
        assert_eq!(Cpus::whole(8).to_string(), "8");
        assert_eq!(Cpus::from_millis(1500).quota_usec_per_sec(), 1_500_000);
    }

    #[test]
    fn bad_cpus_are_errors() {
        for s in ["0", "0.0", "-1", "-0.5"] {
            assert!(
                matches!(s.parse::<Cpus>(), Err(ValueError::NotPositive(_))),
                "{s}"
            );
        }
        for s in ["NaN", "inf", "1e3", "two", "1.2.3", ".", "0x10"] {
            assert!(
                matches!(s.parse::<Cpus>(), Err(ValueError::NotANumber { .. })),
                "{s}"
            );
        }
        assert!(matches!(
            "0.001".parse::<Cpus>(),
            Err(ValueError::TooSmall { .. })
        ));
        assert!(matches!(
            "1000000".parse::<Cpus>(),
            Err(ValueError::TooLarge { .. })
        ));
        assert!(matches!(
            Cpus::from_f64(f64::NAN),
            Err(ValueError::NotANumber { .. })
        ));
        assert!(matches!(
            Cpus::from_f64(1e308),
            Err(ValueError::TooLarge { .. })
        ));
        assert!(matches!(
            Cpus::from_f64(f64::INFINITY),
            Err(ValueError::TooLarge { .. })
        ));
    }

    #[test]
    fn tasks_parse() {
        assert_eq!("4096".parse::<Tasks>(), Ok(Tasks(4096)));
        assert!(matches!(
            "0".parse::<Tasks>(),
            Err(ValueError::NotPositive(_))
        ));
        assert!(matches!(
            "1.5".parse::<Tasks>(),
            Err(ValueError::NotWhole(_))
        ));
        assert!(matches!(
            "99999999".parse::<Tasks>(),
            Err(ValueError::TooLarge { .. })
        ));
        assert!(matches!(
            "-3".parse::<Tasks>(),
            Err(ValueError::NotPositive(_))
        ));
    }

    #[test]
    fn json_accepts_numbers_and_strings() {
        let c: Cpus = serde_json::from_str("4").unwrap();
        assert_eq!(c, Cpus::whole(4));
        let c: Cpus = serde_json::from_str("1.5").unwrap();
        assert_eq!(c, Cpus::from_millis(1500));
        let c: Cpus = serde_json::from_str("\"1.5\"").unwrap();
        assert_eq!(c, Cpus::from_millis(1500));
        let m: Bytes = serde_json::from_str("\"16G\"").unwrap();
        assert_eq!(m, Bytes(16 << 30));
        let m: Bytes = serde_json::from_str("1048576").unwrap();
        assert_eq!(m, Bytes(1 << 20));
        assert!(serde_json::from_str::<Cpus>("-1").is_err());
        // zero is a valid figure in answers (nothing allocated yet)
        assert_eq!(serde_json::from_str::<Cpus>("0").unwrap(), Cpus::default());
        assert_eq!(serde_json::from_str::<Bytes>("\"0B\"").unwrap(), Bytes(0));
        assert!(serde_json::from_str::<Bytes>("\"-0G\"").is_err());
        assert!(serde_json::from_str::<Cpus>("1e308").is_err());
        assert!(serde_json::from_str::<Bytes>("18446744073709551616").is_err());
        assert!(serde_json::from_str::<Bytes>("-5").is_err());
        assert!(serde_json::from_str::<Tasks>("true").is_err());
        assert_eq!(serde_json::to_string(&Cpus::whole(4)).unwrap(), "4");
        assert_eq!(
            serde_json::to_string(&Cpus::from_millis(1500)).unwrap(),
            "1.5"
        );
        assert_eq!(serde_json::to_string(&Bytes(16 << 30)).unwrap(), "\"16G\"");
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2 days"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("4x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999w").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(format_duration(Duration::from_secs(90_061)), "1d1h1m1s");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn size_display_round_trips(v in 1u64..) {
                let shown = Bytes(v).to_string();
                prop_assert_eq!(shown.parse::<Bytes>(), Ok(Bytes(v)));
            }

            #[test]
            fn cpus_display_round_trips(m in 10u64..=100_000_000) {
                let shown = Cpus::from_millis(m).to_string();
                prop_assert_eq!(shown.parse::<Cpus>(), Ok(Cpus::from_millis(m)));
            }

            #[test]
            fn size_parser_never_panics(s in "\\PC{0,40}") {
                let _ = s.parse::<Bytes>();
                let _ = s.parse::<Cpus>();
                let _ = s.parse::<Tasks>();
            }

            #[test]
            fn parsed_sizes_are_positive(s in "[0-9]{0,25}(\\.[0-9]{0,25})?[ ]?(B|K|KB|M|MB|G|GB|T|TB|k|g)?") {
                if let Ok(b) = s.parse::<Bytes>() {
                    prop_assert!(b.0 > 0);
                }
            }
        }
    }
}
