//! Growth by call site: how much each call site holds over an image's lifetime, and
//! which sites look like leaks or unbounded caches.
//!
//! # Series
//!
//! Every call site keeps a [`Series`]: its live bytes at the *end* of each of at most
//! [`MAX_BUCKETS`] equal time buckets covering the image's lifetime. The lifetime is not
//! known while the replay streams, so buckets start [`INITIAL_BUCKET_NS`] wide and double
//! whenever an event falls past the last one (a [`Clock`] per image); a site's series is
//! brought to the current width lazily, the next time the site changes, by keeping the
//! later value of each pair of buckets. A site is only touched when its live bytes
//! change, so the buckets it skipped held the value it had when it was last touched:
//! filling them then is exact. An image longer than `MAX_BUCKETS × INITIAL_BUCKET_NS`
//! ends with between `MAX_BUCKETS / 2` and `MAX_BUCKETS` buckets. Cost: O(1) amortised
//! per event; memory: at most `MAX_BUCKETS` words per site.
//!
//! Timestamps of different threads need not be monotonic: an event that falls before the
//! site's latest bucket counts in that bucket.
//!
//! # Score
//!
//! A leak suspect is a site whose live bytes keep rising over the lifetime. A cache that
//! is only released at exit (which memcheck never reports, since nothing is live at the
//! end) rises all along and then drops in the last moments; that teardown must not hide
//! the growth. So the evaluation **window** is the whole series, except when the site's
//! highest value is last reached in the final quarter of the lifetime and the series
//! ends lower: the window then stops at that last maximum (the teardown is excluded).
//! Over the window, with `x` the bucket's time in seconds:
//!
//! * `slope_bytes_per_sec`: the least-squares slope of live bytes over time;
//! * `r2`: the coefficient of determination of that line (0 for a flat window: there is
//!   no trend to explain);
//! * `monotonicity`: the fraction of bucket-to-bucket steps that do not decrease (1 for
//!   a window of one bucket).
//!
//! The **score** is `max(0, slope) × window duration × r2 × monotonicity`: the bytes the
//! trend line gained over the window, discounted by how badly a line (r2) and a
//! never-shrinking sequence (monotonicity) describe the site. Steady churn scores about
//! 0 (flat, or noisy around a level: small slope, small r2), a warm-up buffer that fills
//! early and stays scores little (a step is a poor line), a steadily filling cache
//! scores about its size. Sites are ranked by score, then by peak live bytes. A site is a
//! **suspect** when its score is positive, `r2 >= 0.8` and `monotonicity >= 0.9`.

use heaptape_format::Timestamp;

/// Most buckets of a series.
pub const MAX_BUCKETS: usize = 128;
/// Width of the buckets when an image starts, in nanoseconds (doubles as needed).
pub const INITIAL_BUCKET_NS: u64 = 1 << 10;
const INITIAL_SHIFT: u32 = INITIAL_BUCKET_NS.trailing_zeros();
/// A site's last maximum must lie in this final share of the series for the drop after
/// it to count as teardown.
pub const TEARDOWN_SHARE: f64 = 0.25;
/// Smallest `r2` of a suspect.
pub const SUSPECT_R2: f64 = 0.8;
/// Smallest monotonicity of a suspect.
pub const SUSPECT_MONOTONICITY: f64 = 0.9;

/// The bucket clock of one image (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    start: Timestamp,
    shift: u32,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(0)
    }
}

impl Clock {
    /// A clock for an image that starts at `start`.
    pub fn new(start: Timestamp) -> Self {
        Clock {
            start,
            shift: INITIAL_SHIFT,
        }
    }

    /// The bucket `ts` falls in, widening the buckets first if needed.
    pub fn advance(&mut self, ts: Timestamp) -> usize {
        let offset = ts.saturating_sub(self.start);
        while self.shift < 63 && (offset >> self.shift) >= MAX_BUCKETS as u64 {
            self.shift += 1;
        }
        ((offset >> self.shift) as usize).min(MAX_BUCKETS - 1)
    }

    /// log2 of the bucket width.
    pub(crate) fn shift(&self) -> u32 {
        self.shift
    }

    /// This clock with buckets `1 << shift` wide.
    pub(crate) fn with_shift(self, shift: u32) -> Clock {
        Clock { shift, ..self }
    }

    /// Width of a bucket, in nanoseconds.
    pub fn bucket_ns(&self) -> u64 {
        1u64 << self.shift
    }

    /// When the image started.
    pub fn start(&self) -> Timestamp {
        self.start
    }
}

/// A site's live bytes at the end of each bucket (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    shift: u32,
    pub(crate) values: Vec<u64>,
}

impl Series {
    /// Brings the series to `clock`'s width and up to `bucket`, given that the site held
    /// `live` bytes since it was last touched.
    pub(crate) fn sync(&mut self, clock: &Clock, bucket: usize, live: u64) {
        if self.values.is_empty() {
            self.shift = clock.shift;
        }
        while self.shift < clock.shift {
            let v = &mut self.values;
            let n = v.len().div_ceil(2);
            for i in 0..n {
                v[i] = *v.get(2 * i + 1).unwrap_or(&v[2 * i]);
            }
            v.truncate(n);
            self.shift += 1;
        }
        if let Some(last) = self.values.last_mut() {
            *last = live;
        }
        while self.values.len() <= bucket {
            self.values.push(live);
        }
    }

    /// The values, oldest bucket first.
    pub fn values(&self) -> &[u64] {
        &self.values
    }
}

/// The fit of one series (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fit {
    /// Least-squares slope over the window, bytes per second.
    pub slope_bytes_per_sec: f64,
    /// Coefficient of determination of that line (0 for a flat window).
    pub r2: f64,
    /// Fraction of the window's steps that do not decrease.
    pub monotonicity: f64,
    /// Buckets in the window (from the first).
    pub window: usize,
    /// Whether a final teardown was left out of the window.
    pub teardown_excluded: bool,
    /// The ranking score, in bytes.
    pub score: f64,
}

impl Fit {
    /// Whether the site is a leak suspect (see the module docs).
    pub fn suspect(&self) -> bool {
        self.score > 0.0 && self.r2 >= SUSPECT_R2 && self.monotonicity >= SUSPECT_MONOTONICITY
    }
}

/// Fits `series`, whose buckets are `bucket_ns` wide (see the module docs).
pub fn fit(series: &[u64], bucket_ns: u64) -> Fit {
    let n = series.len();
    if n == 0 {
        return Fit::default();
    }
    let max = series.iter().copied().max().unwrap_or(0);
    let last_max = series.iter().rposition(|&v| v == max).unwrap_or(0);
    let tail_start = ((n - 1) as f64 * (1.0 - TEARDOWN_SHARE)).floor() as usize;
    let teardown = series[n - 1] < max && last_max >= tail_start && last_max > 0;
    let window = if teardown { last_max + 1 } else { n };
    let w = &series[..window];
    let steps = window.saturating_sub(1);
    let monotonicity = if steps == 0 {
        1.0
    } else {
        w.windows(2).filter(|p| p[1] >= p[0]).count() as f64 / steps as f64
    };
    let dt = bucket_ns as f64 / 1e9;
    let k = window as f64;
    let mean_x = (k - 1.0) / 2.0 * dt;
    let mean_y = w.iter().map(|&v| v as f64).sum::<f64>() / k;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (i, &v) in w.iter().enumerate() {
        let dx = i as f64 * dt - mean_x;
        let dy = v as f64 - mean_y;
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let r2 = if sxx > 0.0 && syy > 0.0 {
        (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let duration = steps as f64 * dt;
    let score = slope.max(0.0) * duration * r2 * monotonicity;
    Fit {
        slope_bytes_per_sec: slope,
        r2,
        monotonicity,
        window,
        teardown_excluded: teardown,
        score,
    }
}

/// One call site's growth, ready to report.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteGrowth {
    /// Index of the call site in the list it was computed from.
    pub site: usize,
    /// Live bytes at the end of the first bucket.
    pub live_bytes_start: u64,
    /// Live bytes when the image ended.
    pub live_bytes_end: u64,
    /// The most the site held at any moment.
    pub peak_live_bytes: u64,
    /// The fit.
    pub fit: Fit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_doubles_and_series_compacts_to_bucket_ends() {
        let mut c = Clock::new(1000);
        let mut s = Series::default();
        assert_eq!(c.advance(1000), 0);
        s.sync(&c, 0, 0);
        // bucket 3 at 1 µs width
        let b = c.advance(1000 + 3 * 1024 + 5);
        assert_eq!(b, 3);
        s.sync(&c, b, 10);
        assert_eq!(s.values(), &[10, 10, 10, 10]);
        // far away: width doubles until the offset fits in 128 buckets
        let b = c.advance(1000 + 1024 * 300);
        assert_eq!(c.bucket_ns(), 4096);
        assert_eq!(b, 75);
        s.sync(&c, b, 20);
        assert_eq!(s.values().len(), 76);
        assert_eq!(&s.values()[..2], &[20, 20]);
        assert_eq!(s.values()[75], 20);
        // an event out of order counts in the latest bucket
        assert_eq!(c.advance(0), 0);
    }

    #[test]
    fn compaction_keeps_the_later_value() {
        let c1 = Clock::new(0);
        let mut s = Series::default();
        s.sync(&c1, 0, 0);
        s.sync(&c1, 1, 1); // values [1, 1]: bucket 0 ended with 1
        s.sync(&c1, 2, 2); // [1, 2, 2]
        let mut c2 = c1;
        c2.shift += 1;
        s.sync(&c2, 1, 3); // pairs: [2, 2] then last = 3
        assert_eq!(s.values(), &[2, 3]);
    }

    #[test]
    fn a_rising_cache_freed_at_the_end_is_a_suspect() {
        let mut series: Vec<u64> = (0..100).map(|i| i * 1000).collect();
        series.push(0);
        let f = fit(&series, 1_000_000_000);
        assert!(f.teardown_excluded);
        assert_eq!(f.window, 100);
        assert!((f.slope_bytes_per_sec - 1000.0).abs() < 1e-6);
        assert!((f.r2 - 1.0).abs() < 1e-9);
        assert_eq!(f.monotonicity, 1.0);
        assert!((f.score - 99_000.0).abs() < 1e-6);
        assert!(f.suspect());
    }

    #[test]
    fn flat_and_early_steps_are_not_suspects() {
        let flat = vec![4096u64; 100];
        let f = fit(&flat, 1000);
        assert_eq!((f.slope_bytes_per_sec, f.r2, f.score), (0.0, 0.0, 0.0));
        assert_eq!(f.monotonicity, 1.0);
        assert!(!f.suspect());
        // warm-up: full after 2 buckets, then flat
        let mut step = vec![0u64, 5000];
        step.extend(std::iter::repeat_n(10_000, 98));
        let f = fit(&step, 1000);
        assert!(!f.teardown_excluded);
        assert!(f.r2 < 0.2, "{f:?}");
        assert!(!f.suspect());
        // churn: alternating levels
        let churn: Vec<u64> = (0..100)
            .map(|i| if i % 2 == 0 { 100 } else { 200 })
            .collect();
        let f = fit(&churn, 1000);
        assert!(f.monotonicity < 0.6);
        assert!(!f.suspect());
        // an early spike then back down: the maximum is not in the final quarter
        let mut spike = vec![0u64; 100];
        spike[10] = 1 << 20;
        assert!(!fit(&spike, 1000).teardown_excluded);
        assert!(fit(&[], 1000) == Fit::default());
        assert_eq!(fit(&[7], 1000).monotonicity, 1.0);
    }
}
