//! [`Tasks`]: a limit on processes and threads.

use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use super::{Quantity, QuantityVisitor, ValueError, fmt_f64, rename_input};

const TASKS_EXPECTED: &str = "a whole number of tasks such as 4096";

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
        // formatted only for an error: parsing is on every request and state load
        let input = || fmt_f64(value);
        if value.is_nan() {
            return Err(ValueError::NotANumber {
                input: input(),
                expected: TASKS_EXPECTED,
            });
        }
        if value < 1.0 {
            return match value.fract() != 0.0 && value > 0.0 {
                true => Err(ValueError::NotWhole(input())),
                false => Err(ValueError::NotPositive(input())),
            };
        }
        if !value.is_finite() || value > Tasks::MAX.0 as f64 {
            return Err(ValueError::TooLarge {
                input: input(),
                max: Tasks::MAX.0.to_string(),
            });
        }
        if value.fract() != 0.0 {
            return Err(ValueError::NotWhole(input()));
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

#[cfg(test)]
mod tests {
    use super::*;

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

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn tasks_display_round_trips(n in 1u64..=Tasks::MAX.get()) {
                let shown = Tasks(n).to_string();
                prop_assert_eq!(shown.parse::<Tasks>(), Ok(Tasks(n)));
            }
        }
    }
}
