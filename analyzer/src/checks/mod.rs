//! What the replay checks a program for, each kept per process image:
//!
//! * [`leaks`]: memcheck's leak classes from a reachability snapshot, and `--fail-on`;
//! * [`bad_frees`]: double, invalid and mismatched frees;
//! * [`resources`]: descriptors and mappings left open;
//! * [`timeline`]: the live heap beside the resident set over time, and what their
//!   shapes say (leak, fragmentation, stable).
//!
//! The replay feeds them; the reports render them. None of them knows the replay.

pub(crate) mod bad_frees;
pub(crate) mod leaks;
pub(crate) mod resources;
pub(crate) mod timeline;

pub use bad_frees::{Finding, FindingKind, Findings, Occurrence};
pub use leaks::LeakCheck;
pub use resources::{Mapping, OpenFd, Resources};
pub use timeline::{GrowingSite, Timeline, TimelinePoint, Verdict, VerdictKind};
