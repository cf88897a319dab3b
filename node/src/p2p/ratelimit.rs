//! A token bucket for the per-node upload limit, which counts how long
//! senders waited for it (for `nixswarm status`: is the limit what makes
//! transfers slow?).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

/// Limits bytes per second; `None` rate means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Option<u64>,
    state: Mutex<(f64, Instant)>,
    /// Time senders spent waiting, in all (microseconds).
    waited_us: AtomicU64,
    /// When a sender last waited (microseconds after `born`).
    last_wait_us: AtomicU64,
    born: Instant,
}

/// The upload limit as `nixswarm status` shows it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct Throttle {
    /// Bytes per second; `None`: unlimited.
    pub limit: Option<u64>,
    /// Milliseconds senders waited for the limit, in all.
    pub waited_ms: u64,
    /// A sender waited within the last 5 seconds.
    pub now: bool,
}

impl RateLimiter {
    /// A limiter of `rate` bytes/s with one second of burst.
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0),
            state: Mutex::new((rate.unwrap_or(0) as f64, Instant::now())),
            waited_us: AtomicU64::new(0),
            last_wait_us: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// The limit, and how much it held senders back.
    pub fn throttle(&self) -> Throttle {
        let last = self.last_wait_us.load(Ordering::Relaxed);
        let since_born = self.born.elapsed().as_micros() as u64;
        Throttle {
            limit: self.rate,
            waited_ms: self.waited_us.load(Ordering::Relaxed) / 1000,
            now: last > 0 && since_born.saturating_sub(last) < 5_000_000,
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let rate = rate as f64;
        let mut s = self.state.lock().await;
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(rate);
        s.1 = now;
        s.0 -= bytes as f64;
        if s.0 < 0.0 {
            // Holding the lock while sleeping queues later senders behind us.
            let wait = Duration::from_secs_f64(-s.0 / rate);
            self.waited_us.fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
            let at = (now + wait).duration_since(self.born).as_micros() as u64;
            let before = self.last_wait_us.swap(at.max(1), Ordering::Relaxed);
            // Said in the log when throttling starts (not within a minute of
            // the last time it held anyone back).
            if before == 0 || at.saturating_sub(before) > 60_000_000 {
                tracing::info!(
                    limit = rate as u64,
                    "uploads to peers held back by the upload limit (--upload-limit)"
                );
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let l = RateLimiter::new(Some(1000));
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            l.acquire(1000).await;
        }
        // One second of burst, then 1000 bytes/s: 4 more seconds for 4000 bytes.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(3900) && took <= Duration::from_millis(4200),
            "{took:?}"
        );
        let t = l.throttle();
        assert_eq!(t.limit, Some(1000));
        assert!(t.waited_ms.abs_diff(4000) < 200 && t.now, "{t:?}");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!l.throttle().now);
        let free = RateLimiter::new(None);
        let start = tokio::time::Instant::now();
        free.acquire(u64::MAX).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
