//! The progress bar of a long analysis: bytes of the trace read out of its size, with
//! the rate and an ETA, on stderr.
//!
//! It is only ever drawn on a terminal: when stderr is not a TTY (a pipe, a file, a CI
//! log) nothing is written at all. And a short analysis should not flash a bar, so the
//! bar starts hidden and only appears once the analysis has run for [`SHOW_AFTER`].
//! The report goes to stdout, so `--json > report.json` is never mixed with it.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long an analysis runs before its bar appears.
pub const SHOW_AFTER: Duration = Duration::from_millis(500);

/// A progress bar over a trace of known size (see the module docs).
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    delay: Duration,
    shown: AtomicBool,
}

impl Progress {
    /// A bar for reading `total` bytes, drawn on stderr after [`SHOW_AFTER`] (or after
    /// `HEAPTAPE_PROGRESS_DELAY_MS` milliseconds, for tests); `None` when stderr is not
    /// a terminal.
    pub fn stderr(total: u64) -> Option<Progress> {
        let delay = std::env::var("HEAPTAPE_PROGRESS_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(SHOW_AFTER, Duration::from_millis);
        std::io::stderr()
            .is_terminal()
            .then(|| Progress::new(total, delay))
    }

    /// A bar for `total` bytes that draws on stderr once `delay` has passed (whether
    /// stderr is a terminal is the caller's business; see [`Progress::stderr`]).
    pub fn new(total: u64, delay: Duration) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                 {binary_bytes_per_sec}, ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message("analyzing");
        Progress {
            bar,
            started: Instant::now(),
            delay,
            shown: AtomicBool::new(false),
        }
    }

    /// Notes that the first `bytes` of the trace were read (callable from any thread).
    pub fn set(&self, bytes: u64) {
        self.bar.set_position(bytes);
        if !self.shown.load(Ordering::Relaxed) && self.started.elapsed() >= self.delay {
            self.shown.store(true, Ordering::Relaxed);
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.enable_steady_tick(Duration::from_millis(200));
        }
    }

    /// Whether the bar was made visible (the delay passed while reading).
    #[cfg(test)]
    pub fn shown(&self) -> bool {
        self.shown.load(Ordering::Relaxed)
    }

    /// Removes the bar (leaving the terminal as it was).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_until_the_delay_passed() {
        let p = Progress::new(100, Duration::from_secs(3600));
        p.set(10);
        assert!(!p.shown());
        assert!(p.bar.is_hidden());
        p.finish();
    }

    #[test]
    fn shown_after_the_delay() {
        let p = Progress::new(100, Duration::ZERO);
        p.set(10);
        assert!(p.shown());
        assert_eq!(p.bar.position(), 10);
        p.finish();
        assert!(p.bar.is_finished());
    }
}
