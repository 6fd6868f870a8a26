//! [`Bandwidth`]: a limit on bytes read or written per second
//! (`IOReadBandwidthMax=`, `IOWriteBandwidthMax=`).
//!
//! Unlike memory sizes, `K`, `M`, `G` and `T` are powers of 1000 here, as
//! systemd reads these settings (`IOWriteBandwidthMax=/home 20M` is
//! 20 000 000 bytes a second) and as `dd` reports its rate; `Ki`, `Mi`, `Gi`
//! and `Ti` are powers of 1024. A trailing `B`, `/s` or `B/s` is allowed:
//! `50M`, `50MB/s` and `50000000` are the same.

use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use super::{Quantity, QuantityVisitor, ValueError, fmt_f64};

const BANDWIDTH_EXPECTED: &str = "a rate such as 50M or 500MB/s (K, M, G, T: powers of 1000)";

/// Bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bandwidth(u64);

/// Decimal units first: they are what people write and what systemd reads.
const UNITS: [(&str, u64); 8] = [
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("K", 1_000),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];

impl Bandwidth {
    /// Below this a limit is almost certainly a missing unit (`20` for 20M).
    pub const MIN: Bandwidth = Bandwidth(1000);
    /// Far above any device (1000 TB/s).
    pub const MAX: Bandwidth = Bandwidth(1_000_000_000_000_000);

    pub fn new(bytes_per_sec: u64) -> Option<Bandwidth> {
        (Bandwidth::MIN.0..=Bandwidth::MAX.0)
            .contains(&bytes_per_sec)
            .then_some(Bandwidth(bytes_per_sec))
    }

    /// Bytes per second, as systemd's D-Bus properties take it.
    pub const fn bytes_per_sec(self) -> u64 {
        self.0
    }

    fn check(value: u128, input: &str) -> Result<Bandwidth, ValueError> {
        if value == 0 {
            return Err(ValueError::NotPositive(input.to_string()));
        }
        if value > u128::from(Bandwidth::MAX.0) {
            return Err(ValueError::TooLarge {
                input: input.to_string(),
                max: Bandwidth::MAX.to_string(),
            });
        }
        if value < u128::from(Bandwidth::MIN.0) {
            return Err(ValueError::TooSmall {
                input: input.to_string(),
                min: Bandwidth::MIN.to_string(),
            });
        }
        Ok(Bandwidth(value as u64))
    }
}

fn unit_factor(unit: &str) -> Option<u64> {
    // `50MB/s`, `50M/s`, `50MB`, `50M`, `50MiB/s`: strip `/s`, then `B`.
    let u = unit.trim();
    let u = u.strip_suffix("/s").unwrap_or(u).trim_end();
    let u = match u.strip_suffix(['B', 'b']) {
        Some(rest) => rest,
        None => u,
    };
    if u.is_empty() {
        return Some(1);
    }
    let mut chars = u.chars();
    let letter = chars.next()?.to_ascii_uppercase();
    let binary = match chars.as_str() {
        "" => false,
        "i" | "I" => true,
        _ => return None,
    };
    UNITS
        .iter()
        .find(|(name, f)| name.starts_with(letter) && (name.len() == 2) == binary && *f > 1)
        .map(|(_, f)| *f)
}

impl FromStr for Bandwidth {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Bandwidth, ValueError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ValueError::Empty("rate", BANDWIDTH_EXPECTED));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], &t[split..]);
        let not_a_number = || ValueError::NotANumber {
            input: t.to_string(),
            expected: BANDWIDTH_EXPECTED,
        };
        if let Some(rest) = num.strip_prefix('-') {
            return match rest.chars().any(|c| c.is_ascii_digit()) {
                true => Err(ValueError::NotPositive(t.to_string())),
                false => Err(not_a_number()),
            };
        }
        let num = num.strip_prefix('+').unwrap_or(num);
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let digits_ok = |d: &str| d.chars().all(|c| c.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
            return Err(not_a_number());
        }
        let factor = unit_factor(unit).ok_or_else(|| ValueError::UnknownRateUnit {
            input: t.to_string(),
            unit: unit.trim().to_string(),
        })?;
        let too_large = || ValueError::TooLarge {
            input: t.to_string(),
            max: Bandwidth::MAX.to_string(),
        };
        let int = int.trim_start_matches('0');
        if int.len() > 20 {
            return Err(too_large());
        }
        let int: u128 = match int.is_empty() {
            true => 0,
            false => int.parse().map_err(|_| too_large())?,
        };
        let mut total = int.checked_mul(u128::from(factor)).ok_or_else(too_large)?;
        let frac = frac.trim_end_matches('0');
        let frac = &frac[..frac.len().min(18)];
        if !frac.is_empty() {
            let f: u128 = frac.parse().map_err(|_| not_a_number())?;
            total += f * u128::from(factor) / 10u128.pow(frac.len() as u32);
        }
        Bandwidth::check(total, t)
    }
}

impl fmt::Display for Bandwidth {
    /// The largest decimal unit if it shows the rate exactly with at most
    /// three decimals (`50MB/s`, `1.5GB/s`), else the largest binary one
    /// (`20MiB/s`), else bytes (`1234567B/s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (decimal, binary) = UNITS.split_at(4);
        for units in [decimal, binary] {
            let Some((name, factor)) = units.iter().find(|(_, factor)| self.0 >= *factor) else {
                continue;
            };
            let milli = u128::from(self.0) * 1000;
            if milli % u128::from(*factor) != 0 {
                continue;
            }
            let milli = milli / u128::from(*factor);
            let (whole, part) = (milli / 1000, milli % 1000);
            return match part {
                0 => write!(f, "{whole}{name}B/s"),
                p => {
                    let p = format!("{p:03}");
                    write!(f, "{whole}.{}{name}B/s", p.trim_end_matches('0'))
                }
            };
        }
        write!(f, "{}B/s", self.0)
    }
}

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bandwidth, D::Error> {
        d.deserialize_any(QuantityVisitor::<Bandwidth>::new())
    }
}

impl Quantity for Bandwidth {
    const EXPECTED: &'static str = BANDWIDTH_EXPECTED;
    const ZERO: Self = Bandwidth(0);
    fn from_number(value: f64) -> Result<Self, ValueError> {
        // formatted only for an error: parsing is on every request and state load
        let input = || fmt_f64(value);
        if value.is_nan() {
            return Err(ValueError::NotANumber {
                input: input(),
                expected: BANDWIDTH_EXPECTED,
            });
        }
        if value <= 0.0 {
            return Err(ValueError::NotPositive(input()));
        }
        if !value.is_finite() || value > Bandwidth::MAX.0 as f64 {
            return Err(ValueError::TooLarge {
                input: input(),
                max: Bandwidth::MAX.to_string(),
            });
        }
        if value.fract() != 0.0 {
            return Err(ValueError::NotWhole(input()));
        }
        Bandwidth::check(value as u128, &input())
    }
    fn from_u64(value: u64) -> Result<Self, ValueError> {
        Bandwidth::check(u128::from(value), &value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_parse() {
        let m = |s: &str| s.parse::<Bandwidth>().map(|b| b.bytes_per_sec());
        assert_eq!(m("20M"), Ok(20_000_000));
        assert_eq!(m("20MB/s"), Ok(20_000_000));
        assert_eq!(m("20 MB/s"), Ok(20_000_000));
        assert_eq!(m("20m/s"), Ok(20_000_000));
        assert_eq!(m("500MB"), Ok(500_000_000));
        assert_eq!(m("1.5G"), Ok(1_500_000_000));
        assert_eq!(m("20MiB/s"), Ok(20 << 20));
        assert_eq!(m("5Ki"), Ok(5 << 10));
        assert_eq!(m("1000"), Ok(1000));
        assert_eq!(m("1000B/s"), Ok(1000));
        assert!(matches!(m("20"), Err(ValueError::TooSmall { .. })));
        assert!(matches!(m("0"), Err(ValueError::NotPositive(_))));
        assert!(matches!(m("-5M"), Err(ValueError::NotPositive(_))));
        assert!(matches!(m("5X"), Err(ValueError::UnknownRateUnit { .. })));
        assert!(matches!(
            m("5MX/s"),
            Err(ValueError::UnknownRateUnit { .. })
        ));
        assert!(matches!(m("fast"), Err(ValueError::NotANumber { .. })));
        assert!(matches!(
            m("2000P"),
            Err(ValueError::UnknownRateUnit { .. })
        ));
        assert!(matches!(m("2000000T"), Err(ValueError::TooLarge { .. })));
        assert!(matches!(m(""), Err(ValueError::Empty(..))));
        let e = "5X".parse::<Bandwidth>().unwrap_err().to_string();
        assert!(e.contains("powers of 1000"), "{e}");
    }

    #[test]
    fn bandwidth_display() {
        let s = |v: u64| Bandwidth::new(v).unwrap().to_string();
        assert_eq!(s(20_000_000), "20MB/s");
        assert_eq!(s(1_500_000_000), "1.5GB/s");
        assert_eq!(s(20 << 20), "20MiB/s");
        assert_eq!(s(1234), "1.234KB/s");
        assert_eq!(s(1_234_567), "1234567B/s");
        assert_eq!(s(1536), "1.536KB/s");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn bandwidth_display_round_trips(n in Bandwidth::MIN.bytes_per_sec()..=Bandwidth::MAX.bytes_per_sec()) {
                let b = Bandwidth::new(n).unwrap();
                prop_assert_eq!(b.to_string().parse::<Bandwidth>(), Ok(b));
            }

            #[test]
            fn bandwidth_parser_never_panics(s in "\\PC{0,40}") {
                let _ = s.parse::<Bandwidth>();
            }
        }
    }
}
