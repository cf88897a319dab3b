//! A token bucket for the per-node upload limit.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

/// Limits bytes per second; `None` rate means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Option<u64>,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `rate` bytes/s with one second of burst.
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0),
            state: Mutex::new((rate.unwrap_or(0) as f64, Instant::now())),
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
            tokio::time::sleep(Duration::from_secs_f64(-s.0 / rate)).await;
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
        let free = RateLimiter::new(None);
        let start = tokio::time::Instant::now();
        free.acquire(u64::MAX).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
