//! Durations as Istio manifests spell them: `10s`, `0.5s`, `250ms`, `1m30s`, `1h`.
//!
//! Istio accepts both the protobuf JSON form (`1.5s`) and Go's `time.ParseDuration` form, so
//! this type accepts a sequence of decimal numbers each followed by one of `h`, `m`, `s`, `ms`,
//! `us`/`µs`, `ns`. Negative durations are refused.

use std::fmt;
use std::str::FromStr;

/// A non-negative duration parsed from a manifest string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// The duration as a `std::time::Duration`.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// From whole milliseconds.
    pub fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// From whole seconds.
    pub fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    /// True for a zero duration.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        if s == "0" {
            return Ok(Duration::default());
        }
        let mut total_nanos: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit (use h, m, s, ms, us or ns)"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, tail) = rest.split_at(num_len);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let scale: u128 = match unit {
                "h" => 3_600_000_000_000,
                "m" => 60_000_000_000,
                "s" => 1_000_000_000,
                "ms" => 1_000_000,
                "us" | "µs" | "μs" => 1_000,
                "ns" => 1,
                _ => return Err(err("unknown unit (use h, m, s, ms, us or ns)")),
            };
            let (int, frac) = match num.split_once('.') {
                Some((i, f)) => (i, f),
                None => (num, ""),
            };
            if int.is_empty() && frac.is_empty() || frac.contains('.') {
                return Err(err("malformed number"));
            }
            let int: u128 = if int.is_empty() {
                0
            } else {
                int.parse().map_err(|_| err("number too large"))?
            };
            let mut frac_nanos: u128 = 0;
            let mut div: u128 = 1;
            for d in frac.bytes().take(18) {
                frac_nanos = frac_nanos * 10 + u128::from(d - b'0');
                div *= 10;
            }
            total_nanos = total_nanos
                .checked_add(int.checked_mul(scale).ok_or_else(|| err("too large"))?)
                .and_then(|t| t.checked_add(frac_nanos * scale / div))
                .ok_or_else(|| err("too large"))?;
            rest = tail;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Duration(std::time::Duration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) && d.as_secs() == 0 {
            write!(f, "{}ms", d.subsec_millis())
        } else {
            let s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
            write!(f, "{}s", s.trim_end_matches('0'))
        }
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as 10s, 0.5s, 250ms or 1m30s.",
            "pattern": "^([0-9]+(\\.[0-9]+)?(h|m|s|ms|us|µs|ns))+$|^0$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> std::time::Duration {
        s.parse::<Duration>().expect(s).0
    }

    #[test]
    fn parses_istio_spellings() {
        assert_eq!(p("10s"), std::time::Duration::from_secs(10));
        assert_eq!(p("0.5s"), std::time::Duration::from_millis(500));
        assert_eq!(p("1.5s"), std::time::Duration::from_millis(1500));
        assert_eq!(p("250ms"), std::time::Duration::from_millis(250));
        assert_eq!(p("1m30s"), std::time::Duration::from_secs(90));
        assert_eq!(p("1h"), std::time::Duration::from_secs(3600));
        assert_eq!(p("100us"), std::time::Duration::from_micros(100));
        assert_eq!(p("0"), std::time::Duration::ZERO);
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "10", "-1s", "1x", "s", "1..2s", "abc"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["10s", "250ms", "1.5s"] {
            assert_eq!(p(s), p(&s.parse::<Duration>().expect(s).to_string()));
        }
        assert_eq!(Duration::from_millis(250).to_string(), "250ms");
        assert_eq!(Duration::from_secs(3).to_string(), "3s");
    }
}
