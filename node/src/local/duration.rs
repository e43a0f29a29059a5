//! `--duration` values: `500ms`, `8s`, `5m`, `1h30m`, or plain seconds.

use std::time::Duration;

/// Longest accepted run; anything longer is surely a typo.
const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 500ms, 8s, 5m, 1h30m)");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return checked(secs, s);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    checked(total, s)
}

fn checked(secs: f64, s: &str) -> Result<Duration, String> {
    if secs.is_finite() && secs > 0.0 && secs <= MAX.as_secs_f64() {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("{s:?}: a duration must be > 0 and at most a year"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse("8s"), Ok(Duration::from_secs(8)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2.5"), Ok(Duration::from_millis(2500)));
        for bad in ["", "s", "8x", "-1s", "0s", "1e400", "NaN", "9999999h", "1.2.3s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
