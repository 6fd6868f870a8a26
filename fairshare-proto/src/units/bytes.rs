//! [`Bytes`]: a memory size, written with units that are powers of 1024.

use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use super::{Quantity, QuantityVisitor, ValueError, fmt_f64, scale_u64};

const SIZE_EXPECTED: &str = "a size such as 8G, 512M or 1.5G";

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
        // formatted only for an error: parsing is on every request and state load
        let input = || fmt_f64(value);
        if value.is_nan() {
            return Err(ValueError::NotANumber {
                input: input(),
                expected: SIZE_EXPECTED,
            });
        }
        if value <= 0.0 {
            return Err(ValueError::NotPositive(input()));
        }
        // 2^64 is exactly representable; anything at or above it overflows.
        if !value.is_finite() || value >= 18_446_744_073_709_551_616.0 {
            return Err(ValueError::TooLarge {
                input: input(),
                max: Bytes(u64::MAX).to_string(),
            });
        }
        if value.fract() != 0.0 {
            return Err(ValueError::NotWhole(input()));
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
            fn parsed_sizes_are_positive(s in "[0-9]{0,25}(\\.[0-9]{0,25})?[ ]?(B|K|KB|M|MB|G|GB|T|TB|k|g)?") {
                if let Ok(b) = s.parse::<Bytes>() {
                    prop_assert!(b.0 > 0);
                }
            }
        }
    }
}
