//! A token bucket, kept as one number: the generic cell rate algorithm
//! (GCRA). A bucket of `burst` tokens refilled at `rate` per second is the
//! same as a "theoretical arrival time" (`tat`): each request moves it one
//! emission interval (`1 / rate`) later, and a request is let through while
//! `tat` stays within `burst` intervals of now. Integer nanoseconds only,
//! on a monotonic clock the caller reads (so tests inject time).
//!
//! Must never: let more than `burst` requests through at once, or more
//! than `rate` per second over time; overflow on absurd inputs (the config
//! bounds them, and the arithmetic is wide enough).

/// Nanoseconds per second.
const NANOS: u64 = 1_000_000_000;

/// A refill rate and a burst, as the bucket needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds per token (at least 1).
    interval: u64,
    /// Tokens the bucket holds when full (at least 1).
    burst: u64,
}

impl Rate {
    /// `per_second` tokens a second (> 0), at most `burst` (>= 1) at once.
    /// The config bounds both (`config::limits`); here they are clamped so
    /// the arithmetic cannot go wrong whatever is passed.
    pub fn new(per_second: f64, burst: u32) -> Rate {
        let interval = if per_second.is_finite() && per_second > 0.0 {
            // Rounded to the nanosecond: at 1,000,000/s (the largest the
            // config accepts) the error is below 0.1 %.
            (NANOS as f64 / per_second)
                .round()
                .clamp(1.0, u64::MAX as f64) as u64
        } else {
            u64::MAX
        };
        Rate {
            interval,
            burst: u64::from(burst.max(1)),
        }
    }
}

/// One bucket's state: the theoretical arrival time, in nanoseconds on the
/// caller's clock. A new bucket is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    tat: u64,
}

impl Bucket {
    /// Takes one token at `now`; `Err(wait)`: none left, and one will be
    /// there in `wait` nanoseconds. A refusal takes nothing.
    pub fn take(&mut self, rate: Rate, now: u64) -> Result<(), u64> {
        // In u128: an interval and a burst at their extremes cannot wrap.
        let next = u128::from(self.tat.max(now)) + u128::from(rate.interval);
        let allowed_until = u128::from(now) + u128::from(rate.interval) * u128::from(rate.burst);
        if next > allowed_until {
            return Err(u64::try_from(next - allowed_until).unwrap_or(u64::MAX));
        }
        self.tat = u64::try_from(next).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Whether the bucket is full at `now`: it then carries no information
    /// and may be forgotten (a new one is the same).
    pub fn is_full(&self, now: u64) -> bool {
        self.tat <= now
    }
}

/// `Retry-After` for a wait of `nanos`: whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_refuses() {
        let rate = Rate::new(10.0, 3);
        let mut bucket = Bucket::default();
        let now = 5 * NANOS;
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, now), Ok(()));
        }
        // The fourth waits one interval (100 ms) for the first token back.
        assert_eq!(bucket.take(rate, now), Err(100 * MS));
        // A refusal takes nothing: still 100 ms.
        assert_eq!(bucket.take(rate, now), Err(100 * MS));
        assert_eq!(bucket.take(rate, now + 99 * MS), Err(MS));
        assert_eq!(bucket.take(rate, now + 100 * MS), Ok(()));
        assert_eq!(bucket.take(rate, now + 100 * MS), Err(100 * MS));
    }

    #[test]
    fn over_time_the_rate_holds_and_idle_time_refills_only_to_the_burst() {
        let rate = Rate::new(4.0, 2);
        let mut bucket = Bucket::default();
        // Ten seconds, a request every millisecond: 2 (the burst) + 4/s.
        let passed = (0..10_000u64)
            .filter(|ms| bucket.take(rate, NANOS + ms * MS).is_ok())
            .count();
        assert_eq!(passed, 2 + 4 * 10 - 1);
        // An hour idle refills to the burst, not beyond.
        let later = 3600 * NANOS;
        assert!(bucket.is_full(later));
        assert_eq!(bucket.take(rate, later), Ok(()));
        assert_eq!(bucket.take(rate, later), Ok(()));
        assert!(bucket.take(rate, later).is_err());
    }

    #[test]
    fn slow_rates_wait_whole_seconds_rounded_up() {
        let rate = Rate::new(0.5, 1);
        let mut bucket = Bucket::default();
        assert_eq!(bucket.take(rate, 0), Ok(()));
        let wait = bucket.take(rate, 0).unwrap_err();
        assert_eq!(wait, 2 * NANOS);
        assert_eq!(retry_after_seconds(wait), 2);
        assert_eq!(retry_after_seconds(1), 1);
        assert_eq!(retry_after_seconds(0), 1);
        assert_eq!(retry_after_seconds(NANOS + 1), 2);
        assert!(!bucket.is_full(NANOS));
        assert!(bucket.is_full(2 * NANOS));
    }

    #[test]
    fn absurd_inputs_saturate_instead_of_overflowing() {
        // A rate the config would refuse: the one token, then never again.
        let never = Rate::new(0.0, 1);
        let mut bucket = Bucket::default();
        assert_eq!(bucket.take(never, 0), Ok(()));
        assert!(bucket.take(never, u64::MAX - 1).is_err());
        let fast = Rate::new(1e18, u32::MAX);
        let mut bucket = Bucket::default();
        assert_eq!(bucket.take(fast, u64::MAX), Ok(()));
        assert_eq!(Rate::new(f64::NAN, 0), never);
    }
}
