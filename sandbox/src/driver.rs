//! The mutation driver's clock, shared by every emulator: calls `mutate` with the
//! changes owed every 50 ms so that about `per_sec` happen a second (at most
//! [`MAX_PER_TICK`] a tick), until the task is aborted or the emulator dropped. A rate
//! that is not a positive finite number runs nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// The most changes one tick makes, whatever the rate asked: a backlog beyond it is
/// dropped, so a huge rate cannot stall the emulator in one call.
pub const MAX_PER_TICK: usize = 10_000;

pub fn spawn<T: Send + Sync + 'static>(
    target: &Arc<T>,
    per_sec: f64,
    mutate: fn(&T, usize),
) -> JoinHandle<()> {
    let weak = Arc::downgrade(target);
    tokio::spawn(async move {
        if !per_sec.is_finite() || per_sec <= 0.0 {
            return;
        }
        let tick = Duration::from_millis(50);
        let per_tick = per_sec * tick.as_secs_f64();
        let mut owed = 0.0;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(target) = weak.upgrade() else {
                return;
            };
            owed = (owed + per_tick).min(MAX_PER_TICK as f64);
            let n = owed.floor();
            owed -= n;
            if n >= 1.0 {
                mutate(&target, n as usize);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counter {
        calls: AtomicUsize,
        largest: AtomicUsize,
    }

    fn count(c: &Counter, n: usize) {
        c.calls.fetch_add(1, Ordering::Relaxed);
        c.largest.fetch_max(n, Ordering::Relaxed);
    }

    #[tokio::test]
    async fn rates_that_are_not_finite_run_nothing_and_huge_ones_are_clamped() {
        for bad in [f64::INFINITY, f64::NAN, -1.0, 0.0] {
            let c = Arc::new(Counter::default());
            let task = spawn(&c, bad, count);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the driver stops at once")
                .unwrap();
            assert_eq!(c.calls.load(Ordering::Relaxed), 0, "{bad}");
        }
        let c = Arc::new(Counter::default());
        let task = spawn(&c, 1e300, count);
        tokio::time::sleep(Duration::from_millis(200)).await;
        task.abort();
        assert!(c.calls.load(Ordering::Relaxed) >= 1);
        assert_eq!(c.largest.load(Ordering::Relaxed), MAX_PER_TICK);
    }
}
