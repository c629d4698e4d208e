//! Running one row: a fixed number of tasks take operations from a shared budget (a count and
//! a deadline, whichever runs out first), time each one, and hand back their latencies.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How much work one row may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ops: u64,
    pub time: Duration,
}

/// The operations left in one row, shared by its tasks.
#[derive(Debug)]
pub struct Budget {
    next: AtomicU64,
    ops: u64,
    deadline: Instant,
}

impl Budget {
    fn new(limits: Limits) -> Self {
        Budget { next: AtomicU64::new(0), ops: limits.ops, deadline: Instant::now() + limits.time }
    }

    /// The index of the next operation to run, or `None` once the count or the time is used up.
    pub fn claim(&self) -> Option<u64> {
        if self.expired() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.ops).then_some(i)
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// What one task saw.
#[derive(Debug, Default)]
pub struct TaskReport {
    /// One entry per completed operation.
    pub latencies: Vec<Duration>,
    /// Compare-and-swap attempts that lost (each still went through the store's writer).
    pub conflicts: u64,
    /// The most compare-and-swap attempts that one operation lost before it won.
    pub most_conflicts: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl TaskReport {
    pub fn error(&mut self, e: impl Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// The outcome of one row.
#[derive(Debug)]
pub struct Sample {
    pub tasks: usize,
    pub planned: u64,
    pub elapsed: Duration,
    /// Sorted, for quantiles.
    latencies: Vec<Duration>,
    pub conflicts: u64,
    /// The most compare-and-swap attempts that one operation lost before it won.
    pub most_conflicts: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Sample {
    pub fn new(tasks: usize, limits: Limits, elapsed: Duration, reports: Vec<TaskReport>) -> Self {
        let mut sample = Sample {
            tasks,
            planned: limits.ops,
            elapsed,
            latencies: Vec::new(),
            conflicts: 0,
            most_conflicts: 0,
            errors: 0,
            first_error: None,
        };
        for r in reports {
            sample.latencies.extend(r.latencies);
            sample.conflicts += r.conflicts;
            sample.most_conflicts = sample.most_conflicts.max(r.most_conflicts);
            sample.errors += r.errors;
            if sample.first_error.is_none() {
                sample.first_error = r.first_error;
            }
        }
        sample.latencies.sort_unstable();
        sample
    }

    /// Completed operations.
    pub fn ops(&self) -> u64 {
        self.latencies.len() as u64
    }

    /// True when the deadline, not the count, ended the row.
    pub fn time_limited(&self) -> bool {
        self.ops() + self.errors < self.planned
    }

    /// Completed operations per second of wall time.
    pub fn per_sec(&self) -> f64 {
        rate(self.ops(), self.elapsed)
    }

    /// Everything sent to the store's writer per second, lost CAS attempts included.
    pub fn attempts_per_sec(&self) -> f64 {
        rate(self.ops() + self.conflicts, self.elapsed)
    }

    /// Nearest-rank quantile, `q` in 0..=1; zero when nothing completed.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let n = self.latencies.len();
        // Nearest rank: the smallest value with at least q·n values at or below it.
        let rank = (q * n as f64).ceil().max(1.0) as usize;
        self.latencies[rank.min(n) - 1]
    }

    pub fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Runs `tasks` copies of `worker` (given their task index and the shared budget) and
/// measures the wall time until the last one is done.
pub async fn run<W, Fut>(tasks: usize, limits: Limits, worker: W) -> anyhow::Result<Sample>
where
    W: Fn(usize, Arc<Budget>) -> Fut,
    Fut: Future<Output = TaskReport> + Send + 'static,
{
    let budget = Arc::new(Budget::new(limits));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks).map(|t| tokio::spawn(worker(t, Arc::clone(&budget)))).collect();
    let mut reports = Vec::with_capacity(tasks);
    for handle in handles {
        reports.push(handle.await.context("a benchmark task panicked")?);
    }
    Ok(Sample::new(tasks, limits, start.elapsed(), reports))
}

/// Runs a blocking loop on one thread, one operation per budget claim.
pub async fn run_blocking<F>(limits: Limits, mut op: F) -> anyhow::Result<Sample>
where
    F: FnMut() -> std::io::Result<()> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let budget = Budget::new(limits);
        let mut report = TaskReport::default();
        let start = Instant::now();
        while budget.claim().is_some() {
            let t = Instant::now();
            match op() {
                Ok(()) => report.latencies.push(t.elapsed()),
                Err(e) => report.error(e),
            }
        }
        Sample::new(1, limits, start.elapsed(), vec![report])
    })
    .await
    .context("the blocking benchmark thread panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_of(ms: &[u64]) -> Sample {
        let report = TaskReport {
            latencies: ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            ..TaskReport::default()
        };
        let limits = Limits { ops: ms.len() as u64, time: Duration::from_secs(1) };
        Sample::new(1, limits, Duration::from_secs(1), vec![report])
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let s = sample_of(&(1..=100).rev().collect::<Vec<_>>());
        assert_eq!(s.quantile(0.5), Duration::from_millis(50));
        assert_eq!(s.quantile(0.99), Duration::from_millis(99));
        assert_eq!(s.max(), Duration::from_millis(100));
        assert_eq!(s.per_sec(), 100.0);
        assert!(!s.time_limited());
    }

    #[test]
    fn empty_sample_reports_zero() {
        let s = sample_of(&[]);
        assert_eq!(s.quantile(0.99), Duration::ZERO);
        assert_eq!(s.per_sec(), 0.0);
    }
}
