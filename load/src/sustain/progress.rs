//! Live progress of a sustained run on stderr: time left, sales, requests
//! per second and failures so far, redrawn a few times a second.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::closed::{Counts, Shared};
use super::SustainPlan;

/// The line shown beside the bar: what the counters say after `elapsed`.
pub fn progress_line(counts: &Counts, elapsed: Duration) -> String {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    format!(
        "{} sold · {:.0} req/s · busy {} · errors {}",
        load(&counts.succeeded),
        load(&counts.attempts) as f64 / seconds,
        load(&counts.busy),
        load(&counts.errors),
    )
}

/// A running progress display; [`Ticker::finish`] clears it.
pub(super) struct Ticker {
    bar: ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Ticker {
    /// Stops redrawing and clears the line.
    pub(super) fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        self.bar.finish_and_clear();
    }
}

/// Starts the display when `plan.progress` (hidden otherwise, and when
/// stderr is not a terminal).
pub(super) fn start(plan: &SustainPlan, shared: &Arc<Shared>, started: Instant) -> Ticker {
    if !plan.progress {
        return Ticker {
            bar: ProgressBar::hidden(),
            task: None,
        };
    }
    let bar = ProgressBar::new(plan.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed}/{duration} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let task = {
        let (bar, shared) = (bar.clone(), shared.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let elapsed = started.elapsed();
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(progress_line(&shared.counts, elapsed));
            }
        })
    };
    Ticker {
        bar,
        task: Some(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_sales_rate_and_failures_so_far() {
        let counts = Counts::default();
        counts.succeeded.store(120, Ordering::Relaxed);
        counts.attempts.store(300, Ordering::Relaxed);
        counts.busy.store(7, Ordering::Relaxed);
        counts.errors.store(2, Ordering::Relaxed);
        let line = progress_line(&counts, Duration::from_secs(2));
        assert_eq!(line, "120 sold · 150 req/s · busy 7 · errors 2");
    }
}
