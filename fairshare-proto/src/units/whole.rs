//! Whole numbers in a range: the shared parser of [`Weight`](super::Weight)
//! and [`Iops`](super::Iops).

use super::{ValueError, fmt_f64};

/// Parses a whole number between `min` and `max` from text, naming what was
/// expected in every error.
pub(crate) fn parse(
    s: &str,
    what: &'static str,
    expected: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, ValueError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ValueError::Empty(what, expected));
    }
    let body = t.strip_prefix('-').unwrap_or(t);
    if body.is_empty() || !body.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(ValueError::NotANumber {
            input: t.to_string(),
            expected,
        });
    }
    if body.len() > 20 {
        return Err(ValueError::TooLarge {
            input: t.to_string(),
            max: max.to_string(),
        });
    }
    let value: f64 = t.parse().map_err(|_| ValueError::NotANumber {
        input: t.to_string(),
        expected,
    })?;
    from_f64(value, expected, min, max).map_err(|e| super::rename_input(e, t))
}

/// Validates a whole number given as a float (YAML and JSON numbers).
pub(crate) fn from_f64(
    value: f64,
    expected: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, ValueError> {
    // formatted only for an error: parsing is on every request and state load
    let input = || fmt_f64(value);
    if value.is_nan() {
        return Err(ValueError::NotANumber {
            input: input(),
            expected,
        });
    }
    if value <= 0.0 {
        return Err(ValueError::NotPositive(input()));
    }
    if value.fract() != 0.0 {
        return Err(ValueError::NotWhole(input()));
    }
    if !value.is_finite() || value > max as f64 {
        return Err(ValueError::TooLarge {
            input: input(),
            max: max.to_string(),
        });
    }
    if value < min as f64 {
        return Err(ValueError::TooSmall {
            input: input(),
            min: min.to_string(),
        });
    }
    Ok(value as u64)
}

/// Validates a whole number given as an integer.
pub(crate) fn from_u64(value: u64, min: u64, max: u64) -> Result<u64, ValueError> {
    match value {
        0 => Err(ValueError::NotPositive("0".into())),
        v if v > max => Err(ValueError::TooLarge {
            input: v.to_string(),
            max: max.to_string(),
        }),
        v if v < min => Err(ValueError::TooSmall {
            input: v.to_string(),
            min: min.to_string(),
        }),
        v => Ok(v),
    }
}
