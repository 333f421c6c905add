//! Time, as the node sees it. The driver reads the time and sleeps only
//! through [`Clock`], so the simulation can give every node its own skewed,
//! drifting clock whose timers stretch with it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ringkv_core::Time;

/// A boxed sleep, so `Clock` stays object-safe.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The node's clock: a monotonic reading in milliseconds since some origin,
/// and sleeps measured on that same clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since this clock's origin. Never goes backwards.
    fn now(&self) -> Time;
    /// Completes once `now()` has reached `deadline` (at once if it has).
    fn sleep_until(&self, deadline: Time) -> Sleep;
    /// Completes after `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Sleep {
        self.sleep_until(self.now() + d)
    }
    /// The wall clock: milliseconds since the Unix epoch. May jump either
    /// way (NTP steps, an operator); the core copes (see
    /// `ringkv_core::kv::KvStore`). What key expiry is judged by.
    fn unix_ms(&self) -> u64;
}

/// The runtime's monotonic clock (real time in production; madsim's global
/// virtual time under `cfg(madsim)`).
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    origin: tokio::time::Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Time {
        let ms = self.origin.elapsed().as_millis();
        Time::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn sleep_until(&self, deadline: Time) -> Sleep {
        let at = self.origin + Duration::from_millis(deadline.as_millis());
        Box::pin(tokio::time::sleep_until(at))
    }

    fn unix_ms(&self) -> u64 {
        wall_clock_ms()
    }
}

/// This machine's wall clock, Unix milliseconds. A clock before 1970 reads
/// as 0: the core then refuses TTLs (`no_wall_clock`) rather than stamp
/// deadlines in the past. The APIs use it to tell a client how long a key
/// has left.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
