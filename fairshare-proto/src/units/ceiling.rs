//! [`Ceiling`]: a limit, or explicitly none (`max`).

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::{Quantity, ValueError};

/// A limit of some quantity, or `max`: no limit at all. `max` lets an
/// override lift a limit an earlier level of the policy set (a group's
/// `write_bw: max` over the default's `write_bw: 20M`). Every limit is below
/// `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ceiling<T> {
    Limit(T),
    Unlimited,
}

/// The spellings of "no limit": systemd's `infinity`, the kernel's `max`.
const UNLIMITED: [&str; 3] = ["max", "infinity", "unlimited"];

impl<T> Ceiling<T> {
    /// The limit, if there is one.
    pub fn limit(self) -> Option<T> {
        match self {
            Ceiling::Limit(v) => Some(v),
            Ceiling::Unlimited => None,
        }
    }

    /// Whether `s` is one of the spellings of "no limit".
    pub fn is_unlimited_word(s: &str) -> bool {
        UNLIMITED.iter().any(|w| s.trim().eq_ignore_ascii_case(w))
    }
}

impl<T: Quantity> FromStr for Ceiling<T> {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Ceiling<T>, ValueError> {
        match Ceiling::<T>::is_unlimited_word(s) {
            true => Ok(Ceiling::Unlimited),
            false => s.parse().map(Ceiling::Limit),
        }
    }
}

impl<T: fmt::Display> fmt::Display for Ceiling<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ceiling::Limit(v) => v.fmt(f),
            Ceiling::Unlimited => f.write_str("max"),
        }
    }
}

impl<T: fmt::Display> Serialize for Ceiling<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Bandwidth, Iops};
    use super::*;

    #[test]
    fn ceiling_parse_and_order() {
        assert_eq!("max".parse::<Ceiling<Iops>>(), Ok(Ceiling::Unlimited));
        assert_eq!("Infinity".parse::<Ceiling<Iops>>(), Ok(Ceiling::Unlimited));
        assert_eq!(
            "500".parse::<Ceiling<Iops>>(),
            Ok(Ceiling::Limit(Iops::new(500).unwrap()))
        );
        assert!("none".parse::<Ceiling<Iops>>().is_err());
        let l: Ceiling<Bandwidth> = "20M".parse().unwrap();
        assert!(l < Ceiling::Unlimited);
        assert_eq!(l.to_string(), "20MB/s");
        assert_eq!(Ceiling::<Iops>::Unlimited.to_string(), "max");
        assert_eq!(l.limit().map(|b| b.bytes_per_sec()), Some(20_000_000));
    }
}
