//! Kubernetes resource quantities (`100m`, `128Mi`, `1.5`, `2e3`): checked the way the API
//! server checks them, and compared, so that an injected container never asks for more than
//! its limit.

/// A quantity's value, in units of 10⁻⁹ (exact enough to compare what manifests write).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Quantity(f64);

impl Quantity {
    /// Parses a quantity; `None` when the API server would refuse it.
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let (sign, rest) = match s.strip_prefix('-') {
            Some(r) => (-1.0, r),
            None => (1.0, s.strip_prefix('+').unwrap_or(s)),
        };
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let base: f64 = num.parse().ok()?;
        let scale = match suffix {
            "" => 1.0,
            "n" => 1e-9,
            "u" => 1e-6,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024f64,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..].parse().ok()?;
                10f64.powi(exp)
            }
            _ => return None,
        };
        Some(Quantity(sign * base * scale))
    }

    /// True for a quantity below zero (resources refuse them).
    pub fn is_negative(self) -> bool {
        self.0 < 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_api_server() {
        for ok in [
            "100m", "1", "0.5", "128Mi", "1Gi", "2e3", "1E2", "+1", ".5", "5.", "1k",
        ] {
            assert!(Quantity::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "abc", "1mi", "1 Gi", "1..2", "m", "1KiB", "--1", "1e"] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
        let q = |s| Quantity::parse(s).expect("valid");
        assert!(q("100m") < q("1"));
        assert!(q("1Gi") > q("1G"));
        assert!(q("1024Mi") == q("1Gi"));
        assert!(q("-1").is_negative());
    }
}
