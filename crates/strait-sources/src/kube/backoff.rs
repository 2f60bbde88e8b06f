//! Exponential backoff with jitter, for retrying watches and discovery.

use std::time::{Duration, Instant};

/// Delays between retries: doubling from `min` up to `max`, each drawn at random from the
/// upper half of the current step (so a fleet of watchers does not retry in lockstep), and
/// back to `min` once no failure has happened for `reset_after`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    reset_after: Duration,
    step: Duration,
    last_failure: Option<Instant>,
}

impl Backoff {
    /// A backoff from `min` to `max`; quiet for `reset_after` starts over at `min`.
    pub(crate) fn new(min: Duration, max: Duration, reset_after: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            reset_after,
            step: min,
            last_failure: None,
        }
    }

    /// The delay before the next attempt, after a failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) >= self.reset_after)
        {
            self.step = self.min;
        }
        self.last_failure = Some(now);
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=jitter_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_maximum_with_jitter() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(800),
            Duration::from_secs(60),
        );
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let steps = [100u64, 200, 400, 800, 800, 800];
        for (d, s) in delays.iter().zip(steps) {
            let s = Duration::from_millis(s);
            assert!(
                *d >= s / 2 && *d <= s,
                "{d:?} not within [{:?}, {s:?}]",
                s / 2
            );
        }
    }

    #[test]
    fn starts_over_after_a_quiet_period() {
        let mut b = Backoff::new(
            Duration::from_millis(10),
            Duration::from_secs(1),
            Duration::from_millis(0),
        );
        for _ in 0..5 {
            assert!(b.next_delay() <= Duration::from_millis(10));
        }
    }
}
