//! Durations of leases: `90s`, `30m`, `4h`, `2d`, `1w`, `1h30m`.

use super::ValueError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
