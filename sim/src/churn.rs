//! Sessions: how long a volunteer node stays up and away, drawn from
//! exponential distributions with the means given (IPFS crawls measure
//! median sessions of hours), from a seeded generator.

use std::time::Duration;

use rand::{RngExt as _, SeedableRng as _};

/// Up and away times of one node, deterministic for a seed.
#[derive(Debug)]
pub struct Sessions {
    rng: rand::rngs::StdRng,
    mean_up: Duration,
    mean_down: Duration,
}

impl Sessions {
    pub fn new(seed: u64, mean_up: Duration, mean_down: Duration) -> Self {
        Self {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            mean_up,
            mean_down,
        }
    }

    fn exponential(&mut self, mean: Duration) -> Duration {
        // Inverse transform; 1 - u is in (0, 1].
        let u: f64 = self.rng.random();
        mean.mul_f64(-(1.0 - u).ln())
    }

    /// How long the next session lasts.
    pub fn up(&mut self) -> Duration {
        self.exponential(self.mean_up)
    }

    /// How long the node stays away after it.
    pub fn down(&mut self) -> Duration {
        self.exponential(self.mean_down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_have_the_means_asked_for_and_repeat_for_a_seed() {
        let (up, down) = (Duration::from_secs(3600), Duration::from_secs(600));
        let mut s = Sessions::new(1, up, down);
        let n = 20_000;
        let total_up: f64 = (0..n).map(|_| s.up().as_secs_f64()).sum();
        let total_down: f64 = (0..n).map(|_| s.down().as_secs_f64()).sum();
        let (mean_up, mean_down) = (total_up / f64::from(n), total_down / f64::from(n));
        assert!((mean_up / 3600.0 - 1.0).abs() < 0.03, "{mean_up}");
        assert!((mean_down / 600.0 - 1.0).abs() < 0.03, "{mean_down}");
        let (mut a, mut b) = (Sessions::new(7, up, down), Sessions::new(7, up, down));
        assert!((0..100).all(|_| a.up() == b.up()));
    }
}
