//! The wall clock, read in one place: certificate and token lifetimes,
//! session idle times, policy `context.time` and the reload timestamp all
//! come from here, so they agree on what "now" is.
//!
//! Intervals (timeouts, latencies) use `tokio::time::Instant`, which is
//! monotonic; this module is only for times compared with timestamps that
//! come from outside the process (notAfter, `exp`, audit `ts`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whole seconds since the Unix epoch.
pub fn unix_seconds() -> i64 {
    unix_ms() / 1000
}
