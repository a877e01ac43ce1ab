//! The document of `heaptape diff --json`.

use serde::Serialize;

use super::Frame;

/// The comparison of two traces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// Frames per key (`--call-site-depth`).
    pub call_site_depth: usize,
    /// Sites in both traces with some figure changed.
    pub changed_sites: usize,
    /// The `--fail-if` conditions that failed, with why.
    pub failed_conditions: Vec<String>,
    /// Sites only in NEW.
    pub new_sites: usize,
    /// Every site that is not unchanged, most changed first.
    pub sites: Vec<DiffSite>,
    /// The totals of both traces.
    pub totals: DiffTotals,
    /// Sites in both traces with the same figures.
    pub unchanged_sites: usize,
    /// Sites only in OLD.
    pub vanished_sites: usize,
}

/// The totals of both traces, over every image of every process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffTotals {
    /// NEW minus OLD.
    pub delta: Delta,
    /// NEW's.
    pub new: Figures,
    /// OLD's.
    pub old: Figures,
}

/// One matched (or unmatched) call site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffSite {
    /// NEW minus OLD (a missing side counts 0).
    pub delta: Delta,
    /// Its key (NEW's when both sides have it).
    pub key: String,
    /// NEW's figures; `null` when only OLD has it.
    pub new: Option<Figures>,
    /// OLD's figures; `null` when only NEW has it.
    pub old: Option<Figures>,
    /// Its frames, innermost first, at most `call_site_depth`.
    pub stack: Vec<Frame>,
    /// `new`, `vanished` or `changed`.
    pub status: &'static str,
}

/// A site's (or a trace's) figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Figures {
    /// Bytes the allocations requested.
    pub allocated_bytes: u64,
    /// Successful allocations.
    pub allocations: u64,
    /// Bytes live when the images ended by an exit, reachable or not.
    pub in_use_at_exit_bytes: u64,
    /// Bytes definitely and indirectly lost at the images' exit snapshots.
    pub leaked_bytes: u64,
    /// Bytes live at the images' heap peaks.
    pub peak_bytes: u64,
}

/// The change of each figure of [`Figures`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Delta {
    /// Of `allocated_bytes`.
    pub allocated_bytes: i64,
    /// Of `allocations`.
    pub allocations: i64,
    /// Of `in_use_at_exit_bytes`.
    pub in_use_at_exit_bytes: i64,
    /// Of `leaked_bytes`.
    pub leaked_bytes: i64,
    /// Of `peak_bytes`.
    pub peak_bytes: i64,
}
