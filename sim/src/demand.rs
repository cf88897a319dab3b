//! What users ask for: a population of store paths with NAR sizes and
//! closures, and requests drawn with Zipf popularity (a few paths, the
//! ones every system has, are asked for far more often than the rest).
//! A request is for a path and, as Nix substitutes, its whole closure.

use rand::{RngExt as _, SeedableRng as _};

/// One store path of the population.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// NAR bytes.
    pub size: u64,
    /// The paths it refers to (by index; always lower ones, so closures
    /// are acyclic, as the store's are).
    pub refs: Vec<usize>,
}

/// The population and its popularity.
#[derive(Debug)]
pub struct Demand {
    pub paths: Vec<Path>,
    /// Cumulative Zipf weights, for sampling by rank.
    cumulative: Vec<f64>,
    rng: rand::rngs::StdRng,
}

/// How a population is made.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub paths: usize,
    /// Zipf exponent (about 1 for software popularity).
    pub zipf: f64,
    /// Median NAR size; sizes are log-normal around it.
    pub median_size: u64,
    /// References per path at most (fewer for the first paths).
    pub max_refs: usize,
}

impl Demand {
    pub fn new(shape: Shape, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let paths = (0..shape.paths)
            .map(|i| {
                // Log-normal: exp(normal(0, 1.5)) times the median, the
                // normal drawn by Box-Muller.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
                let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let size = (shape.median_size as f64 * (1.5 * normal).exp()).max(1.0) as u64;
                let n = rng.random_range(0..=shape.max_refs.min(i));
                let mut refs: Vec<usize> = (0..n).map(|_| rng.random_range(0..i)).collect();
                refs.sort_unstable();
                refs.dedup();
                Path { size, refs }
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=shape.paths)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(shape.zipf);
                total
            })
            .collect();
        Self { paths, cumulative, rng }
    }

    /// A path asked for, by popularity.
    pub fn draw(&mut self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = self.rng.random::<f64>() * total;
        self.cumulative
            .partition_point(|c| *c < x)
            .min(self.paths.len().saturating_sub(1))
    }

    /// `root` and everything it refers to, each once.
    pub fn closure(&self, root: usize) -> Vec<usize> {
        let mut seen = vec![false; self.paths.len()];
        let mut stack = vec![root];
        let mut out = Vec::new();
        while let Some(p) = stack.pop() {
            if std::mem::replace(&mut seen[p], true) {
                continue;
            }
            out.push(p);
            stack.extend(self.paths[p].refs.iter().copied());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            paths: 10_000,
            zipf: 1.0,
            median_size: 1 << 20,
            max_refs: 5,
        }
    }

    #[test]
    fn popularity_follows_zipf() {
        let mut d = Demand::new(shape(), 1);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..200_000 {
            counts[d.draw()] += 1;
        }
        // Rank 1 is asked for twice as often as rank 2 and ten times as
        // often as rank 10 (within sampling noise).
        let r = |a: usize, b: usize| f64::from(counts[a]) / f64::from(counts[b]);
        assert!((r(0, 1) - 2.0).abs() < 0.15, "{}", r(0, 1));
        assert!((r(0, 9) - 10.0).abs() < 1.5, "{}", r(0, 9));
    }

    #[test]
    fn sizes_have_the_median_and_closures_are_whole_and_acyclic() {
        let d = Demand::new(shape(), 2);
        let mut sizes: Vec<u64> = d.paths.iter().map(|p| p.size).collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2] as f64 / f64::from(1 << 20);
        assert!((median - 1.0).abs() < 0.1, "{median}");
        let c = d.closure(9_999);
        assert_eq!(c[0], 9_999);
        for p in &c {
            assert!(d.paths[*p].refs.iter().all(|r| r < p && c.contains(r)));
        }
        let mut sorted = c.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), c.len(), "each path once");
    }

    #[test]
    fn the_same_seed_makes_the_same_population_and_requests() {
        let (mut a, mut b) = (Demand::new(shape(), 3), Demand::new(shape(), 3));
        assert_eq!(a.paths, b.paths);
        assert!((0..1000).all(|_| a.draw() == b.draw()));
    }
}
