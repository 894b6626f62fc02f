//! What the run loop serves between fetches: the progress on stderr, the periodic flush of
//! the output, and Ctrl-C.

use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::driver::lib::{Handle, WaitSummary};
use crate::output::Output;
use crate::record::{CliRequest, Shared};

/// Records written so far.
#[derive(Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn count(&self, is_error: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if is_error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// The scheduler's state at a tick, when the driver can read it during a run (summed over
/// the threads).
#[derive(Clone, Copy, Default)]
pub struct Detail {
    queued: usize,
    in_flight: usize,
    wait: WaitSummary,
}

impl Detail {
    /// The blocking driver's fetcher is busy in `run` at every tick: it has no detail.
    #[cfg(any(feature = "tokio", feature = "smol"))]
    pub fn of(fetcher: &crate::driver::lib::Fetcher<CliRequest>) -> Self {
        let stats = fetcher.stats();
        Detail {
            queued: stats.queued,
            in_flight: stats.in_flight,
            wait: fetcher.scheduler().wait_summary(Instant::now()),
        }
    }

    fn add(mut self, other: &Detail) -> Detail {
        self.queued += other.queued;
        self.in_flight += other.in_flight;
        self.wait.delay += other.wait.delay;
        self.wait.backoff += other.wait.backoff;
        self.wait.in_flight_limit += other.wait.in_flight_limit;
        self.wait.robots += other.wait.robots;
        self
    }
}

/// Shared by the run loop, the progress ticks and the Ctrl-C handler.
pub struct Monitor {
    progress: Progress,
    pub counters: Arc<Counters>,
    output: Output,
    shared: Arc<Shared>,
    interrupts: AtomicU32,
    /// Per fetching thread, its last detail.
    details: Mutex<Vec<Option<Detail>>>,
}

impl Monitor {
    /// `total` is the count of URLs to fetch, when it is known (not for stdin).
    pub fn new(
        quiet: bool,
        total: Option<u64>,
        threads: usize,
        output: Output,
        shared: Arc<Shared>,
    ) -> Self {
        Monitor {
            progress: Progress::new(quiet, total),
            counters: Arc::new(Counters::default()),
            output,
            shared,
            interrupts: AtomicU32::new(0),
            details: Mutex::new(vec![None; threads.max(1)]),
        }
    }

    /// How often the driver should call [`tick`](Monitor::tick).
    pub fn interval(&self) -> Duration {
        self.progress.interval()
    }

    /// Keeps the detail of fetching thread `thread`, for the next [`tick`](Monitor::tick).
    #[cfg(any(feature = "tokio", feature = "smol"))]
    pub fn set_detail(&self, thread: usize, detail: Detail) {
        if let Some(slot) = self
            .details
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(thread)
        {
            *slot = Some(detail);
        }
    }

    /// Shows the progress and flushes the records written so far.
    pub fn tick(&self) {
        let detail = self
            .details
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .fold(None, |sum: Option<Detail>, d| {
                Some(sum.unwrap_or_default().add(d))
            });
        self.progress
            .update(&self.counters, detail.as_ref(), self.shared.started);
        self.output.flush_quietly();
    }

    /// A Ctrl-C: the first stops gracefully, the second aborts the fetches in flight, a
    /// third (should the second not be enough) exits at once. `handles`: every fetcher's.
    pub fn interrupt(&self, handles: &[Handle<CliRequest>]) {
        match self.interrupts.fetch_add(1, Ordering::SeqCst) {
            0 => {
                self.progress
                    .note("stopping: fetches in flight finish (Ctrl-C again to abort them)");
                handles.iter().for_each(Handle::stop);
            }
            1 => {
                self.shared.aborting.store(true, Ordering::SeqCst);
                self.progress.note(if self.shared.redis {
                    "aborting the fetches in flight (they stay in Redis for the next run)"
                } else {
                    "aborting the fetches in flight"
                });
                handles.iter().for_each(Handle::stop_now);
            }
            _ => {
                self.progress.note("exiting at once");
                self.output.flush_quietly();
                std::process::exit(130);
            }
        }
    }

    /// A line on stderr, above the progress bar if there is one.
    pub fn note(&self, message: &str) {
        self.progress.note(message);
    }

    /// Whether Ctrl-C was pressed.
    pub fn interrupted(&self) -> bool {
        self.interrupts.load(Ordering::SeqCst) > 0
    }

    pub fn finish(&self) {
        self.progress.finish();
    }
}

/// Progress on stderr: a bar on a terminal, a plain line every few seconds otherwise.
enum Progress {
    Quiet,
    Bar(ProgressBar),
    Plain,
}

impl Progress {
    fn new(quiet: bool, total: Option<u64>) -> Self {
        if quiet {
            Progress::Quiet
        } else if io::stderr().is_terminal() {
            let (bar, template) = match total {
                Some(total) => (
                    ProgressBar::new(total),
                    "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} {msg}",
                ),
                None => (
                    ProgressBar::no_length(),
                    "{elapsed_precise} {pos} done {per_sec} {msg}",
                ),
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            Progress::Bar(bar)
        } else {
            Progress::Plain
        }
    }

    fn interval(&self) -> Duration {
        match self {
            Progress::Bar(_) => Duration::from_millis(200),
            Progress::Quiet | Progress::Plain => Duration::from_secs(5),
        }
    }

    fn update(&self, counters: &Counters, detail: Option<&Detail>, started: Instant) {
        let done = counters.done();
        let describe = || {
            let mut text = format!("errors {}", counters.errors());
            if let Some(Detail {
                queued,
                in_flight,
                wait,
            }) = detail
            {
                text.push_str(&format!(
                    ", queued {queued}, in flight {in_flight}, hosts waiting: delay {} backoff {} limit {} robots {}",
                    wait.delay,
                    wait.backoff,
                    wait.in_flight_limit,
                    wait.robots
                ));
            }
            text
        };
        match self {
            Progress::Quiet => {}
            Progress::Bar(bar) => {
                bar.set_position(done);
                bar.set_message(describe());
            }
            Progress::Plain => {
                let elapsed = started.elapsed().as_secs_f64();
                if elapsed < 1.0 {
                    return;
                }
                eprintln!(
                    "downpour: {done} done, {:.1}/s, {}",
                    done as f64 / elapsed,
                    describe()
                );
            }
        }
    }

    fn note(&self, message: &str) {
        match self {
            Progress::Bar(bar) => bar.println(format!("downpour: {message}")),
            Progress::Quiet | Progress::Plain => eprintln!("downpour: {message}"),
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
