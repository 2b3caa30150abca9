//! A fixed-bucket histogram that threads record into without locks, for metrics.
//!
//! Buckets are explicit upper bounds chosen by the owner (Prometheus wants explicit buckets, not
//! summaries: they aggregate across instances and over time). Recording is one binary search over
//! at most a few dozen bounds and three relaxed atomic adds, so it can sit on a per-batch path.
//! A reader takes a [`HistogramSnapshot`]; counts are monotonic, so two snapshots subtract into
//! the histogram of the interval between them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds in nanoseconds from 100 µs to 1 s, for commit and fsync times.
pub const DURATION_NANOSECONDS_FAST: &[u64] =
    &microseconds([100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000]);

/// Bounds written in microseconds (readable), kept in nanoseconds (what is recorded).
pub const fn microseconds<const N: usize>(bounds: [u64; N]) -> [u64; N] {
    let mut nanoseconds = bounds;
    let mut index = 0;
    while index < N {
        nanoseconds[index] = bounds[index] * 1_000;
        index += 1;
    }
    nanoseconds
}

/// Upper bounds in events: powers of two up to the largest batch (8,190 fits under 8,192).
pub const BATCH_EVENTS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One count per bound, plus the overflow bucket (+Inf).
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A point-in-time copy of a histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [u64],
    /// Count per bucket (not cumulative); the last is above every bound.
    pub counts: Vec<u64>,
    pub sum: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]), "histogram bounds must increase");
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) }
    }

    pub fn observe(&self, value: u64) {
        self.observe_many(value, 1);
    }

    /// Records `count` observations of the same value (a batch of payments answered together).
    pub fn observe_many(&self, value: u64, count: u64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(count, Ordering::Relaxed);
        self.sum.fetch_add(value.saturating_mul(count), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.counts.iter().map(|count| count.load(Ordering::Relaxed)).collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was recorded between `earlier` and this snapshot of the same histogram.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.counts.iter().zip(&earlier.counts).map(|(now, then)| now.saturating_sub(*then)).collect(),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    /// The value below which `quantile` of the observations fall, interpolated linearly inside
    /// its bucket as Prometheus' `histogram_quantile` does; `None` when empty. Above the last
    /// bound the answer is the last bound (the histogram knows no more).
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = quantile.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            let Some(upper) = self.bounds.get(index) else { break };
            if (below + count) as f64 >= rank && *count > 0 {
                let lower = if index == 0 { 0.0 } else { self.bounds[index - 1] as f64 };
                let within = (rank - below as f64) / *count as f64;
                return Some(lower + (*upper as f64 - lower) * within);
            }
            below += count;
        }
        self.bounds.last().map(|bound| *bound as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let histogram = Histogram::new(&[10, 20, 30]);
        for value in [0, 10, 11, 20, 30, 31, 1_000] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts, vec![2, 2, 1, 2]);
        assert_eq!(snapshot.sum, 1_102);
        assert_eq!(snapshot.count(), 7);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_and_intervals_subtract() {
        let histogram = Histogram::new(&[100, 200]);
        histogram.observe_many(50, 50);
        let first = histogram.snapshot();
        histogram.observe_many(150, 100);
        let interval = histogram.snapshot().since(&first);
        assert_eq!(interval.counts, vec![0, 100, 0]);
        // Half of the interval's observations lie below the middle of the (100, 200] bucket.
        assert_eq!(interval.quantile(0.5), Some(150.0));
        assert_eq!(first.quantile(1.0), Some(100.0));
        assert_eq!(Histogram::new(&[1]).snapshot().quantile(0.5), None);
    }
}
