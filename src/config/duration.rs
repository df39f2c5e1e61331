//! Human-friendly durations in config: `"25s"`, `"500ms"`, `"2m"`, `"1h"`, `"0s"`.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A non-negative duration written as a number followed by a unit (`ms`, `s`, `m`, `h`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Parses `"<number><unit>"`; the error says what was expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 = num.parse().map_err(|_| {
            format!("{s:?} is not a duration; write a number and a unit, like \"25s\" or \"500ms\"")
        })?;
        let secs = match unit.trim() {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "" => {
                return Err(format!(
                    "{s:?} has no unit; write \"{num}s\" for seconds or \"{num}ms\" for milliseconds"
                ));
            }
            other => {
                return Err(format!(
                    "{s:?} has unknown unit {other:?}; use ms, s, m or h"
                ));
            }
        };
        if !secs.is_finite() || secs > 1.0e9 {
            return Err(format!("{s:?} is too large"));
        }
        Ok(Duration(std::time::Duration::from_secs_f64(secs)))
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(Duration::parse("25s").unwrap(), Duration::from_secs(25));
        assert_eq!(
            Duration::parse("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(Duration::parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(Duration::parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            Duration::parse("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(Duration::parse("0s").unwrap(), Duration::from_secs(0));
    }

    #[test]
    fn rejects_missing_or_unknown_unit_with_a_hint() {
        assert!(Duration::parse("25").unwrap_err().contains("\"25s\""));
        assert!(
            Duration::parse("3 days")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            Duration::parse("fast")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn displays_round_trip() {
        assert_eq!(Duration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(Duration::from_secs(25).to_string(), "25s");
    }
}
