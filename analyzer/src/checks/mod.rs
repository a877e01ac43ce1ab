//! What the replay checks a program for, each kept per process image:
//!
//! * [`leaks`]: memcheck's leak classes from a reachability snapshot, and `--fail-on`;
//! * [`suppressions`]: loss records hidden by their allocation stack (valgrind's and
//!   LeakSanitizer's formats, and the default list of the runtimes' own blocks);
//! * [`bad_frees`]: double, invalid and mismatched frees;
//! * [`resources`]: descriptors and mappings left open;
//! * [`retention`]: who holds the reachable memory (dominator tree, retained sizes,
//!   paths from the roots);
//! * [`snapshots`]: the snapshots before the last, and when lost blocks became
//!   unreachable;
//! * [`timeline`]: the live heap beside the resident set over time, and what their
//!   shapes say (leak, fragmentation, stable).
//!
//! The replay feeds them; the reports render them. None of them knows the replay.

pub(crate) mod bad_frees;
pub(crate) mod leaks;
pub(crate) mod resources;
pub(crate) mod retention;
pub(crate) mod snapshots;
pub(crate) mod suppressions;
pub(crate) mod timeline;

pub use bad_frees::{BadFreeBlock, Finding, FindingKind, Findings, Occurrence};
pub use leaks::LeakCheck;
pub use resources::{Mapping, OpenFd, Resources};
pub use suppressions::{Suppression, SuppressionError, Suppressions, DEFAULT_SUPPRESSIONS};
pub use timeline::{GrowingSite, Timeline, TimelinePoint, Verdict, VerdictKind};
