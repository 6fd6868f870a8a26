//! CPU counts, memory sizes, task counts, weights, IO rates: parsing,
//! validation and display.
//!
//! Each kind of quantity is parsed the same way everywhere: in policy files, on the wire and on the
//! command line. Every parse error says what was wrong and what would be
//! accepted, so it can be shown to a person as it is.
//!
//! * [`Cpus`] is kept in thousandths of a CPU (`1.5` is 1500). systemd receives
//!   it as `CPUQuotaPerSecUSec` = cpus × 1 000 000.
//! * [`Bytes`] accepts `B`, `K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB` (and the
//!   `KiB` spellings), all powers of 1024, case-insensitive, with decimals
//!   (`1.5G`). A bare number is a count of bytes.
//! * [`Tasks`] is a positive whole number.
//! * [`Weight`] is a CPU or IO weight, 1 to 10000 (default 100).
//! * [`Bandwidth`] is bytes per second; `K`, `M`, `G`, `T` are powers of
//!   1000 here, as systemd and `dd` count them (`Ki`, `Mi`... of 1024).
//! * [`Iops`] is a positive whole number of IO operations per second.
//! * [`Ceiling`] is one of these, or `max`: explicitly no limit.
//!
//! * [`parse_duration`] and [`format_duration`] read and show the length of
//!   a lease (`4h`, `1h30m`).
//!
//! Zero, negative numbers, NaN, infinities, overflow and unknown units are
//! errors. Each quantity has its own file; this one holds what they share:
//! the error type, the [`Quantity`] trait and the serde visitor.

mod bandwidth;
mod bytes;
mod ceiling;
mod cpus;
mod duration;
mod iops;
mod tasks;
mod weight;
mod whole;

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};

pub use bandwidth::Bandwidth;
pub use bytes::Bytes;
pub use ceiling::Ceiling;
pub use cpus::Cpus;
pub use duration::{format_duration, parse_duration};
pub use iops::Iops;
pub use tasks::Tasks;
pub use weight::Weight;

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
    #[error(
        "`{input}` has an unknown unit `{unit}`; use K, M, G or T (powers of 1000, as systemd and dd count rates) or Ki, Mi, Gi, Ti (powers of 1024), optionally followed by B/s, e.g. 50M or 500MB/s"
    )]
    UnknownRateUnit { input: String, unit: String },
    #[error("`{input}` is too large (at most {max})")]
    TooLarge { input: String, max: String },
    #[error("`{input}` is too small (at least {min})")]
    TooSmall { input: String, min: String },
    #[error("`{0}` must be a whole number")]
    NotWhole(String),
}

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

pub(crate) struct QuantityVisitor<T>(std::marker::PhantomData<T>);

impl<T> QuantityVisitor<T> {
    pub(crate) fn new() -> Self {
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

pub(crate) fn fmt_f64(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

pub(crate) fn scale_u64(v: u64, factor: f64) -> u64 {
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
pub(crate) fn rename_input(e: ValueError, input: &str) -> ValueError {
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

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn size_parser_never_panics(s in "\\PC{0,40}") {
                let _ = s.parse::<Bytes>();
                let _ = s.parse::<Cpus>();
                let _ = s.parse::<Tasks>();
            }
        }
    }
}
