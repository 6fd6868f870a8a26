//! [`Iops`]: a limit on IO operations per second (`IOReadIOPSMax=`,
//! `IOWriteIOPSMax=`).

use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use super::{Quantity, QuantityVisitor, ValueError, whole};

const IOPS_EXPECTED: &str = "a whole number of IO operations per second such as 1000";

/// IO operations per second, at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Iops(u64);

impl Iops {
    /// Far above any device (a billion operations a second).
    pub const MAX: Iops = Iops(1_000_000_000);

    pub fn new(v: u64) -> Option<Iops> {
        (1..=Iops::MAX.0).contains(&v).then_some(Iops(v))
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for Iops {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Iops, ValueError> {
        whole::parse(s, "IOPS", IOPS_EXPECTED, 1, Iops::MAX.0).map(Iops)
    }
}

impl fmt::Display for Iops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Iops {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Iops, D::Error> {
        d.deserialize_any(QuantityVisitor::<Iops>::new())
    }
}

impl Quantity for Iops {
    const EXPECTED: &'static str = IOPS_EXPECTED;
    const ZERO: Self = Iops(0);
    fn from_number(value: f64) -> Result<Self, ValueError> {
        whole::from_f64(value, IOPS_EXPECTED, 1, Iops::MAX.0).map(Iops)
    }
    fn from_u64(value: u64) -> Result<Self, ValueError> {
        whole::from_u64(value, 1, Iops::MAX.0).map(Iops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iops_parse() {
        assert_eq!("10000".parse::<Iops>(), Ok(Iops(10_000)));
        assert!(matches!(
            "0".parse::<Iops>(),
            Err(ValueError::NotPositive(_))
        ));
        assert!(matches!(
            "2.5".parse::<Iops>(),
            Err(ValueError::NotWhole(_))
        ));
        assert!(matches!(
            "1e12".parse::<Iops>(),
            Err(ValueError::NotANumber { .. })
        ));
        assert!(matches!(
            "2000000000".parse::<Iops>(),
            Err(ValueError::TooLarge { .. })
        ));
        assert_eq!(Iops::from_u64(500), Ok(Iops(500)));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn iops_display_round_trips(n in 1u64..=Iops::MAX.get()) {
                let v = Iops::new(n).unwrap();
                prop_assert_eq!(v.to_string().parse::<Iops>(), Ok(v));
            }
        }
    }
}
