//! [`Weight`]: a share of contended CPU or IO time, as systemd's `CPUWeight=`
//! and `IOWeight=` take it.

use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use super::{Quantity, QuantityVisitor, ValueError, whole};

const WEIGHT_EXPECTED: &str = "a weight from 1 to 10000 such as 100 (the default) or 200";

/// A relative weight, 1 to 10000; systemd's and the kernel's default is 100.
///
/// Under contention the kernel splits CPU time (or disk time) between
/// siblings in proportion to their weights: 200 against 100 is two to one.
/// On cgroup v1 systemd writes a CPU weight as `cpu.shares` (× 1024 / 100)
/// and an IO weight as `blkio.bfq.weight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Weight(u16);

impl Weight {
    pub const MIN: Weight = Weight(1);
    pub const MAX: Weight = Weight(10_000);
    /// The kernel's and systemd's default.
    pub const DEFAULT: Weight = Weight(100);

    /// A weight, if `v` is within 1..=10000.
    pub fn new(v: u64) -> Option<Weight> {
        (Weight::MIN.get()..=Weight::MAX.get())
            .contains(&v)
            .then(|| Weight::within(v))
    }

    pub const fn get(self) -> u64 {
        self.0 as u64
    }

    /// `v`, already checked to be within 1..=10000 (kept in 16 bits: a
    /// user's record holds several).
    fn within(v: u64) -> Weight {
        Weight(u16::try_from(v).unwrap_or(u16::MAX))
    }
}

impl Default for Weight {
    fn default() -> Weight {
        Weight::DEFAULT
    }
}

impl FromStr for Weight {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Weight, ValueError> {
        whole::parse(
            s,
            "weight",
            WEIGHT_EXPECTED,
            Weight::MIN.get(),
            Weight::MAX.get(),
        )
        .map(Weight::within)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Weight, D::Error> {
        d.deserialize_any(QuantityVisitor::<Weight>::new())
    }
}

impl Quantity for Weight {
    const EXPECTED: &'static str = WEIGHT_EXPECTED;
    /// Never valid; what an answer decodes `0` to.
    const ZERO: Self = Weight(0);
    fn from_number(value: f64) -> Result<Self, ValueError> {
        whole::from_f64(value, WEIGHT_EXPECTED, Weight::MIN.get(), Weight::MAX.get())
            .map(Weight::within)
    }
    fn from_u64(value: u64) -> Result<Self, ValueError> {
        whole::from_u64(value, Weight::MIN.get(), Weight::MAX.get()).map(Weight::within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_parse() {
        assert_eq!("100".parse::<Weight>(), Ok(Weight::DEFAULT));
        assert_eq!(" 10000 ".parse::<Weight>(), Ok(Weight::MAX));
        assert_eq!("1".parse::<Weight>(), Ok(Weight::MIN));
        assert!(matches!(
            "0".parse::<Weight>(),
            Err(ValueError::NotPositive(_))
        ));
        assert!(matches!(
            "-5".parse::<Weight>(),
            Err(ValueError::NotPositive(_))
        ));
        assert!(matches!(
            "1.5".parse::<Weight>(),
            Err(ValueError::NotWhole(_))
        ));
        assert!(matches!(
            "10001".parse::<Weight>(),
            Err(ValueError::TooLarge { .. })
        ));
        assert!(matches!(
            "high".parse::<Weight>(),
            Err(ValueError::NotANumber { .. })
        ));
        assert!(matches!("".parse::<Weight>(), Err(ValueError::Empty(..))));
        assert_eq!(Weight::from_number(200.0), Ok(Weight(200)));
        assert!(Weight::from_number(f64::NAN).is_err());
        assert!(Weight::from_number(f64::INFINITY).is_err());
        assert!(Weight::from_u64(0).is_err());
        let e = "10001".parse::<Weight>().unwrap_err().to_string();
        assert_eq!(e, "`10001` is too large (at most 10000)");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn weight_display_round_trips(n in 1u64..=10_000) {
                let w = Weight::new(n).unwrap();
                prop_assert_eq!(w.to_string().parse::<Weight>(), Ok(w));
            }

            #[test]
            fn weight_parser_accepts_only_the_range(n in 0u64..100_000) {
                let ok = n.to_string().parse::<Weight>().is_ok();
                prop_assert_eq!(ok, (1..=10_000).contains(&n));
            }
        }
    }
}
