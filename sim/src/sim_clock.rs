//! A node's own clock in the simulation: offset, drifting, jumping forward.
//!
//! madsim has one global virtual clock. [`SkewedClock`] bends it per node:
//! `now = offset + elapsed * (1 + drift_ppm / 1e6)`, where `elapsed` is global
//! time since the clock was made. The harness creates one per node, outside
//! the node's `init`, so it survives restarts; the nemesis changes drift and
//! jumps it forward while the node runs (clones share one state). Timers
//! stretch with the clock: `sleep_until(deadline)` waits the global time that
//! this clock needs to reach `deadline`, and re-aims when drift or offset
//! changes mid-sleep.
//!
//! The clock never goes backwards: there is no backward jump, drift is kept
//! above -100%, and a change of drift re-bases the formula at the current
//! reading. Arithmetic is in integer nanoseconds, so a seed replays exactly.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ringkv_core::Time;
use ringkv_node::clock::{Clock, Sleep};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Drift is clamped to ±this many parts per million (±90%): far beyond any
/// real crystal (tests beyond the lease bound want extreme rates), and it
/// keeps the clock strictly increasing, at a tenth of real speed at least.
pub const MAX_DRIFT_PPM: i64 = 900_000;

const PPM: i128 = 1_000_000;
const NANOS_PER_MILLI: u128 = 1_000_000;

/// A per-node skewed clock over madsim's global time. Cheap to clone; clones
/// share the same offset and drift.
#[derive(Debug, Clone)]
pub struct SkewedClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    origin: Instant,
    state: Mutex<Rate>,
    /// Wakes sleepers when drift or offset changes, so they re-aim.
    changed: Notify,
}

/// The piecewise-linear map from global to local time: at global `base_global`
/// (nanoseconds since origin) the local reading was `base_local`, and it runs
/// at `1 + drift_ppm / 1e6` from there.
#[derive(Debug, Clone, Copy)]
struct Rate {
    base_global: u128,
    base_local: u128,
    drift_ppm: i64,
}

impl Rate {
    fn local_at(&self, global: u128) -> u128 {
        let elapsed = global.saturating_sub(self.base_global) as i128;
        let scaled = elapsed * (PPM + i128::from(self.drift_ppm)) / PPM;
        self.base_local + scaled.max(0) as u128
    }

    /// Global nanoseconds this clock needs to advance `local` nanoseconds
    /// (rounded up, so a sleep never wakes early).
    fn global_for(&self, local: u128) -> u128 {
        let rate = (PPM + i128::from(self.drift_ppm)) as u128;
        (local * PPM as u128).div_ceil(rate)
    }
}

impl SkewedClock {
    /// A clock reading `offset` now and running `drift_ppm` fast (negative:
    /// slow), clamped to ±[`MAX_DRIFT_PPM`].
    pub fn new(offset: Duration, drift_ppm: i64) -> Self {
        SkewedClock {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                state: Mutex::new(Rate {
                    base_global: 0,
                    base_local: offset.as_nanos(),
                    drift_ppm: clamp_drift(drift_ppm),
                }),
                changed: Notify::new(),
            }),
        }
    }

    /// A clock in step with global time (no offset, no drift).
    pub fn exact() -> Self {
        Self::new(Duration::ZERO, 0)
    }

    fn state(&self) -> MutexGuard<'_, Rate> {
        // The state is three numbers, consistent after any panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn global_now(&self) -> u128 {
        self.inner.origin.elapsed().as_nanos()
    }

    /// The local reading in nanoseconds.
    pub fn now_nanos(&self) -> u128 {
        let global = self.global_now();
        self.state().local_at(global)
    }

    /// Current drift in parts per million.
    pub fn drift_ppm(&self) -> i64 {
        self.state().drift_ppm
    }

    /// Changes the drift from now on (clamped to ±[`MAX_DRIFT_PPM`]); the
    /// reading stays continuous.
    pub fn set_drift_ppm(&self, drift_ppm: i64) {
        let global = self.global_now();
        let mut rate = self.state();
        rate.base_local = rate.local_at(global);
        rate.base_global = global;
        rate.drift_ppm = clamp_drift(drift_ppm);
        drop(rate);
        self.inner.changed.notify_waiters();
    }

    /// Steps the clock forward by `by` at once (an NTP step). There is no
    /// backward step: the node's clock is monotonic by contract.
    pub fn jump_forward(&self, by: Duration) {
        let global = self.global_now();
        let mut rate = self.state();
        rate.base_local = rate.local_at(global) + by.as_nanos();
        rate.base_global = global;
        drop(rate);
        self.inner.changed.notify_waiters();
    }

    /// Local minus global time, in nanoseconds (positive: this clock is ahead).
    pub fn skew_nanos(&self) -> i128 {
        let global = self.global_now();
        self.state().local_at(global) as i128 - global as i128
    }
}

fn clamp_drift(ppm: i64) -> i64 {
    ppm.clamp(-MAX_DRIFT_PPM, MAX_DRIFT_PPM)
}

/// The wall-clock time a node's clock reads at its local time zero, Unix
/// milliseconds (2027-01-15): a skewed clock's wall reading is skewed alike.
pub const SIM_WALL_EPOCH_MS: u64 = 1_800_000_000_000;

impl Clock for SkewedClock {
    fn now(&self) -> Time {
        let ms = self.now_nanos() / NANOS_PER_MILLI;
        Time::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn unix_ms(&self) -> u64 {
        SIM_WALL_EPOCH_MS + self.now().as_millis()
    }

    fn sleep_until(&self, deadline: Time) -> Sleep {
        let clock = self.clone();
        let deadline = u128::from(deadline.as_millis()) * NANOS_PER_MILLI;
        Box::pin(async move {
            // Drift or a jump may change while we sleep: wake, re-read, and
            // sleep again for what is left on this clock.
            loop {
                // Registered before reading the rate, so no change is missed.
                let changed = clock.inner.changed.notified();
                let global = clock.global_now();
                let rate = *clock.state();
                let local = rate.local_at(global);
                if local >= deadline {
                    return;
                }
                let wait = rate.global_for(deadline - local);
                let wait = Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX));
                tokio::select! {
                    biased;
                    () = changed => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }
}

#[cfg(all(test, madsim))]
mod tests {
    use super::*;

    /// madsim advances time a few nanoseconds per task poll, and readings
    /// are whole milliseconds: timers are exact to well under a millisecond.
    fn assert_about(elapsed: Duration, expected: Duration) {
        let slack = Duration::from_micros(100);
        assert!(
            elapsed + slack >= expected && elapsed <= expected + slack,
            "took {elapsed:?}, expected {expected:?}"
        );
    }

    #[madsim::test]
    async fn runs_fast_with_positive_drift_and_timers_stretch() {
        let clock = SkewedClock::new(Duration::from_secs(10), 100_000); // +10%
        assert_eq!(clock.now(), Time::from_millis(10_000));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(clock.now(), Time::from_millis(11_100));

        // 1100 ms on this clock is 1000 ms of global time.
        let start = Instant::now();
        clock.sleep_until(Time::from_millis(12_200)).await;
        assert_about(start.elapsed(), Duration::from_secs(1));
        assert_eq!(clock.now(), Time::from_millis(12_200));
    }

    #[madsim::test]
    async fn drift_changes_and_jumps_keep_it_monotonic() {
        let clock = SkewedClock::exact();
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.set_drift_ppm(-500_000); // half speed
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(clock.now(), Time::from_millis(2_000));
        clock.jump_forward(Duration::from_secs(5));
        assert_eq!(clock.now(), Time::from_millis(7_000));
        clock.set_drift_ppm(-10_000_000); // clamped to -90%
        assert_eq!(clock.drift_ppm(), -MAX_DRIFT_PPM);
        let before = clock.now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(clock.now() >= before);
    }

    #[madsim::test]
    async fn a_sleep_follows_a_drift_change_mid_way() {
        let clock = SkewedClock::exact();
        let sleeper = clock.clone();
        let start = Instant::now();
        let sleep =
            tokio::spawn(async move { sleeper.sleep_until(Time::from_millis(2_000)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.set_drift_ppm(-500_000); // the second local second now takes two
        sleep.await.expect("sleep task");
        assert_about(start.elapsed(), Duration::from_secs(3));

        // Speeding up (or jumping) mid-sleep wakes the sleeper sooner.
        let sleeper = clock.clone();
        let deadline = clock.now() + Duration::from_secs(10);
        let start = Instant::now();
        let sleep = tokio::spawn(async move { sleeper.sleep_until(deadline).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.jump_forward(Duration::from_secs(9));
        sleep.await.expect("sleep task");
        assert_about(start.elapsed(), Duration::from_secs(2));
    }
}
