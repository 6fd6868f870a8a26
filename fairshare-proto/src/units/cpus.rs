//! [`Cpus`]: a number of CPUs, kept in thousandths of a CPU.

use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use super::{Quantity, QuantityVisitor, ValueError, fmt_f64, rename_input, scale_u64};

const CPU_EXPECTED: &str = "a number of CPUs such as 2 or 1.5";

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
        // formatted only for an error: parsing is on every request and state load
        let input = || fmt_f64(value);
        if value.is_nan() {
            return Err(ValueError::NotANumber {
                input: input(),
                expected: CPU_EXPECTED,
            });
        }
        if value <= 0.0 {
            return Err(ValueError::NotPositive(input()));
        }
        if !value.is_finite() || value > Cpus::MAX.as_f64() {
            return Err(ValueError::TooLarge {
                input: input(),
                max: Cpus::MAX.to_string(),
            });
        }
        let cpus = Cpus((value * 1000.0).round() as u64);
        if cpus < Cpus::MIN {
            return Err(ValueError::TooSmall {
                input: input(),
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

impl Quantity for Cpus {
    const EXPECTED: &'static str = CPU_EXPECTED;
    const ZERO: Self = Cpus(0);
    fn from_number(value: f64) -> Result<Self, ValueError> {
        Cpus::from_f64(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn cpus_display_round_trips(m in 10u64..=100_000_000) {
                let shown = Cpus::from_millis(m).to_string();
                prop_assert_eq!(shown.parse::<Cpus>(), Ok(Cpus::from_millis(m)));
            }
        }
    }
}
