//! The JSON documents as types: [`Report`] (`heaptape analyze --json`, and the data of
//! the HTML page) and [`DiffReport`] (`heaptape diff --json`), one struct per kind of
//! JSON object. The builders in `report` fill them; serde writes them.
//!
//! The documents are a contract with scripts and CI jobs:
//!
//! * every key is always present, `null` when unknown (an `Option` here), with one
//!   exception: the HTML page leaves out the processes' `modules`;
//! * counts are numbers, addresses are `"0x…"` strings (JSON numbers lose precision
//!   past 2^53), times are nanoseconds since the trace started;
//! * the keys of every object are in byte order, as the documents built from
//!   `serde_json` maps always had them: the fields of each struct are declared in that
//!   order (serde writes them in declaration order), and a map's keys are sorted.
//!
//! This module holds data only: it imports nothing of the crate.

mod diff;
mod document;
mod frame;
mod leaks;
mod resources;
mod retention;
mod sites;
mod stack;

pub use diff::{Delta, DiffReport, DiffSite, DiffTotals, Figures};
pub use document::{
    Exit, Image, Module, Process, Report, Totals, Trace, Truncation, SCHEMA_VERSION,
};
pub use frame::Frame;
pub use leaks::{BadFreeBlock, Count, InvalidFree, LeakSummary, LossRecord, SnapshotStats};
pub use resources::{FdLeak, MmapLeak, TimelinePoint, Verdict, VerdictSite};
pub use retention::{
    Held, Hop, LostBetween, Retainer, Retention, Root, SharedBlock, SiteRetention, SiteRoot,
    Snapshot, SnapshotLeaks, SnapshotRoot,
};
pub use sites::{GrowthSite, SiteAtPeak, SiteLiveAtExit};
pub(crate) use stack::StackMaker;
pub use stack::{inline_stacks, Stack};
