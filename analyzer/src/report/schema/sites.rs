//! An image's call sites: at its heap peak, live when it ended, and growing. A site is
//! one stack, or a group of stacks with the same innermost `--call-site-depth` frames.

use serde::Serialize;

use super::Stack;

/// A call site holding memory at the image's heap peak.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteAtPeak {
    /// Its live blocks at the peak.
    pub peak_blocks: u64,
    /// Its live bytes at the peak.
    pub peak_bytes: u64,
    /// Its frames, innermost first.
    pub stack: Stack,
    /// The trie id of the stack that represents it (the smallest of its group).
    pub stack_id: u32,
    /// How many distinct stacks it groups.
    pub stacks: usize,
}

/// A call site ranked by growth: its live bytes over time and the fit of a line to
/// them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrowthSite {
    /// Live bytes when the image ended.
    pub live_bytes_end: u64,
    /// Live bytes at the end of the first bucket.
    pub live_bytes_start: u64,
    /// The fraction of the window's steps that do not decrease.
    pub monotonicity: f64,
    /// The most bytes it held at any moment.
    pub peak_live_bytes: u64,
    /// The coefficient of determination of the fitted line.
    pub r2: f64,
    /// The ranking score, in bytes.
    pub score: f64,
    /// Live bytes at the end of each bucket, oldest first.
    pub series: Vec<u64>,
    /// The fitted line's slope over the window.
    pub slope_bytes_per_sec: f64,
    /// Its frames, innermost first.
    pub stack: Stack,
    /// The trie id of the stack that represents it.
    pub stack_id: u32,
    /// How many distinct stacks it groups.
    pub stacks: usize,
    /// Whether it is a leak suspect.
    pub suspect: bool,
    /// Whether a final teardown was left out of the window.
    pub teardown_excluded: bool,
    /// Buckets in the window (from the first).
    pub window_buckets: usize,
}

/// A call site holding memory when the image ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteLiveAtExit {
    /// Bytes its allocations requested.
    pub allocated_bytes: u64,
    /// Successful allocations made from it.
    pub allocations: u64,
    /// Its blocks that were released.
    pub frees: u64,
    /// Its blocks inherited from the parent at fork.
    pub inherited_blocks: u64,
    /// Its bytes inherited from the parent at fork.
    pub inherited_bytes: u64,
    /// Its blocks live when the image ended.
    pub live_at_exit_blocks: u64,
    /// Its bytes live when the image ended.
    pub live_at_exit_bytes: u64,
    /// Its live blocks at the image's heap peak.
    pub peak_blocks: u64,
    /// Its live bytes at the image's heap peak.
    pub peak_bytes: u64,
    /// Its frames, innermost first.
    pub stack: Stack,
    /// The trie id of the stack that represents it.
    pub stack_id: u32,
    /// How many distinct stacks it groups.
    pub stacks: usize,
    /// Its allocations freed before their thread's next allocation.
    pub temporary_allocations: u64,
}
