//! Leak classification: memcheck's verdicts from a reachability snapshot.
//!
//! At a snapshot the recorder scans the process's roots (registers, stacks, writable
//! module data, TLS, anonymous mappings) and every live heap block for aligned words
//! whose value points into a live block, and writes those words
//! ([`Pointer`](heaptape_format::Pointer)s) into
//! the trace. No raw memory is kept. This module turns that pointer graph, plus the
//! replay's live blocks (addresses, sizes, allocation stacks), into valgrind memcheck's
//! four classes, with memcheck's rules (3.19 defaults):
//!
//! * A **start pointer** holds a block's first address; an **interior pointer** any
//!   other address inside it (a zero-sized block covers one address, its start).
//! * **Still reachable**: reached from a root through start pointers only, every block
//!   on the way reachable too. An interior pointer accepted by one of the enabled
//!   [`Heuristic`]s counts as a start pointer (memcheck's `--leak-check-heuristics`,
//!   all four enabled by default); such blocks are tallied under
//!   [`LeakSummary::reachable_via_heuristic`] as well.
//! * **Possibly lost**: reached from a root, but only along a path with at least one
//!   plain interior pointer.
//! * The rest is lost. Lost blocks are grouped into *cliques* the way memcheck does it:
//!   the unreached blocks are visited in ascending address order; each one still
//!   unreached when visited becomes a clique leader and is **definitely lost**, and
//!   every block reachable from it (through any pointer) that is still unreached joins
//!   its clique as **indirectly lost**, its size added to the leader's
//!   `indirect_bytes`. A block claimed by an earlier clique is not visited again. A
//!   former leader reached from a later leader joins the later clique, bringing its
//!   indirect bytes with it (memcheck merges cliques this way), so a lost tree always
//!   has its root as the one definitely lost block, whatever the addresses; in a lost
//!   cycle nobody is the root and the lowest-addressed block leads.
//!
//! # Differences from memcheck
//!
//! * Memcheck only considers *defined* words (its V bits); the recorder has no V bits,
//!   so an uninitialised word that happens to hold a heap address counts as a pointer
//!   here. The same holds for the header words the heuristics read.
//! * Memcheck decides the heuristics by reading the block's memory during the scan.
//!   The trace holds no raw memory, so the heuristics are an input: a
//!   [`HeuristicSource`] says which heuristics accept an interior pointer at a given
//!   offset of a given block. The recorder evaluates memcheck's conditions on the
//!   memory and writes its verdicts (`SnapshotHeuristic` records) inside the snapshot;
//!   the replay collects them into a [`HeuristicMatches`] table
//!   ([`HeuristicSet::from_bits`] decodes them). A trace without verdicts classifies
//!   as with no heuristic enabled: blocks memcheck would call reachable via a
//!   heuristic come out possibly lost. The rules themselves (memcheck's tests on a
//!   block's header words) live once, in [`heaptape_format::heuristics::evaluate`],
//!   which the recorder calls; [`NoHeuristicData`] accepts nothing.
//! * Which heuristic a reachable block is credited to: memcheck keeps the last
//!   heuristic that matched while it scanned, which depends on scan order. Here a
//!   still-reachable block is credited to a heuristic when no start pointer from a root
//!   or a reachable block reaches it and a heuristic-accepted interior pointer from one
//!   does; among several, the first in memcheck's order (stdstring, length64,
//!   newarray, multipleinheritance). The four class totals are unaffected.
//! * Loss records are keyed by (class, allocation stack, allocating function); memcheck
//!   keys them by class and allocation context, whose innermost frame is the
//!   allocator, which is the same grouping. Ties in memcheck's ordering are broken by
//!   stack id here (memcheck uses the context's address).
//!
//! # Performance
//!
//! Blocks live in an address-sorted array with a bucket index per 4 GiB region
//! ([`heaptape_format::heuristics::BlockIndex`], shared with the recorder's snapshot; a
//! lookup touches two or three cache lines, where a binary search over millions of
//! starts touched twenty-odd); pointer targets are resolved to block indices in
//! parallel and the edges laid out as a flat adjacency array (CSR). The two marking passes (reachable, then reached at all) are
//! breadth-first walks that expand large frontiers in parallel and small ones on one
//! thread; the clique phase is sequential by definition (it depends on address order)
//! and linear.

mod fail_on;
mod graph;
mod heuristics;
mod model;
mod pointers;
mod suppress;
mod tally;

pub use fail_on::FailOn;
pub use graph::SnapshotGraph;
pub use heuristics::{
    BlockRef, Heuristic, HeuristicMatches, HeuristicSet, HeuristicSource, NoHeuristicData,
};
pub use model::{
    BlockVerdict, Count, GraphStats, LeakCheck, LeakKind, LeakReport, LeakSummary, LiveBlock,
    LossRecord, NO_SNAPSHOT,
};
pub use pointers::{PointerGraph, PointerKind, RootWord};
