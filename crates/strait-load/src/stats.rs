//! Percentiles and summaries of measured durations.

use serde::Serialize;

/// The value at percentile `p` (0–100) of `sorted` by the nearest-rank method: the smallest
/// value such that at least `p`% of the values are at most it. `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p90, p99, max, mean and count of a set of values (milliseconds, usually).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// How many values.
    pub count: usize,
}

impl Summary {
    /// Summarises `values` (any order; NaNs are dropped). All zeros when empty.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |p| percentile(&v, p).unwrap_or_default();
        Summary {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
            count: v.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 90.0), Some(90.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        // 4 values: p50 is the 2nd, p90 and p99 the 4th.
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.0));
        assert_eq!(percentile(&v, 90.0), Some(4.0));
    }

    #[test]
    fn summaries_sort_and_ignore_nans() {
        let s = Summary::of([30.0, f64::NAN, 10.0, 20.0]);
        assert_eq!(s.count, 3);
        assert_eq!(
            (s.p50, s.p90, s.p99, s.max, s.mean),
            (20.0, 30.0, 30.0, 30.0, 20.0)
        );
        assert_eq!(Summary::of([]), Summary::default());
    }
}
