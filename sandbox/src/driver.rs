//! The mutation driver's clock, shared by every emulator: calls `mutate` with the
//! changes owed every 50 ms so that about `per_sec` happen a second, until the task
//! is aborted or the emulator dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

pub fn spawn<T: Send + Sync + 'static>(
    target: &Arc<T>,
    per_sec: f64,
    mutate: fn(&T, usize),
) -> JoinHandle<()> {
    let weak = Arc::downgrade(target);
    tokio::spawn(async move {
        if per_sec.is_nan() || per_sec <= 0.0 {
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
            owed += per_tick;
            let n = owed.floor();
            owed -= n;
            if n >= 1.0 {
                mutate(&target, n as usize);
            }
        }
    })
}
