//! Leak classification: memcheck's verdicts from a reachability snapshot.
//!
//! At a snapshot the recorder scans the process's roots (registers, stacks, writable
//! module data, TLS, anonymous mappings) and every live heap block for aligned words
//! whose value points into a live block, and writes those words ([`Pointer`]s) into
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
//!   heuristic come out possibly lost. [`header_heuristics`] computes the verdicts
//!   from a block's header words; [`NoHeuristicData`] accepts nothing.
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
//! Blocks live in an address-sorted array with a bucket index per 4 GiB region (a
//! lookup touches two or three cache lines, where a binary search over millions of
//! starts touched twenty-odd); pointer targets are resolved to block indices in
//! parallel and the edges laid out as a flat adjacency array (CSR). The two marking passes (reachable, then reached at all) are
//! breadth-first walks that expand large frontiers in parallel and small ones on one
//! thread; the clique phase is sequential by definition (it depends on address order)
//! and linear.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use heaptape_format::{AllocFn, Pointer, StackId};
use rayon::prelude::*;

/// The four classes of a live block, in memcheck's order (the order its loss records
/// break ties by).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeakKind {
    /// A pointer to its start (or one a heuristic accepts) was found along a path of
    /// such pointers from a root.
    StillReachable,
    /// Reached from a root, but only through some interior pointer.
    PossiblyLost,
    /// Not reached from any root, but reached from a definitely lost block.
    IndirectlyLost,
    /// Not reached from any root; the leader of its clique.
    DefinitelyLost,
}

impl LeakKind {
    /// Every class, most severe first (the order of reports).
    pub const ALL: [LeakKind; 4] = [
        LeakKind::DefinitelyLost,
        LeakKind::IndirectlyLost,
        LeakKind::PossiblyLost,
        LeakKind::StillReachable,
    ];

    /// The JSON name: `definitely_lost`, `indirectly_lost`, `possibly_lost`,
    /// `still_reachable`.
    pub fn name(self) -> &'static str {
        match self {
            LeakKind::DefinitelyLost => "definitely_lost",
            LeakKind::IndirectlyLost => "indirectly_lost",
            LeakKind::PossiblyLost => "possibly_lost",
            LeakKind::StillReachable => "still_reachable",
        }
    }

    /// The words memcheck uses: `definitely lost`, `indirectly lost`, `possibly
    /// lost`, `still reachable`.
    pub fn words(self) -> &'static str {
        match self {
            LeakKind::DefinitelyLost => "definitely lost",
            LeakKind::IndirectlyLost => "indirectly lost",
            LeakKind::PossiblyLost => "possibly lost",
            LeakKind::StillReachable => "still reachable",
        }
    }
}

impl fmt::Display for LeakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.words())
    }
}

/// One of memcheck's interior-pointer heuristics (`--leak-check-heuristics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Heuristic {
    /// A pointer 3 words into a block laid out as `length, capacity, refcount,
    /// chars[capacity + 1]` (the pre-C++11 libstdc++ `std::string` rep), with
    /// `length <= capacity` and `size == 3 * 8 + capacity + 1`.
    StdString,
    /// A pointer 8 bytes into a block whose first 64-bit word is non-zero and equals
    /// `size - 8` (sqlite's memory accounting).
    Length64,
    /// A pointer 1 word into a block whose first word `n` is non-zero and divides
    /// `size - 8` (the element count `new[]` stores before an array of objects with a
    /// destructor).
    NewArray,
    /// A word-aligned pointer into a block where both the block's first word and the
    /// word the pointer points at are vtable addresses (a base-class subobject of a
    /// C++ object with multiple inheritance).
    MultipleInheritance,
}

impl Heuristic {
    /// Every heuristic, in memcheck's order.
    pub const ALL: [Heuristic; 4] = [
        Heuristic::StdString,
        Heuristic::Length64,
        Heuristic::NewArray,
        Heuristic::MultipleInheritance,
    ];

    /// memcheck's name: `stdstring`, `length64`, `newarray`, `multipleinheritance`.
    pub fn name(self) -> &'static str {
        match self {
            Heuristic::StdString => "stdstring",
            Heuristic::Length64 => "length64",
            Heuristic::NewArray => "newarray",
            Heuristic::MultipleInheritance => "multipleinheritance",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn bit(self) -> u8 {
        1 << self.index()
    }
}

/// A set of [`Heuristic`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeuristicSet(u8);

impl HeuristicSet {
    /// No heuristic.
    pub const NONE: HeuristicSet = HeuristicSet(0);
    /// All four: memcheck's default (`--leak-check-heuristics=all`).
    pub const ALL: HeuristicSet = HeuristicSet(0b1111);

    /// The set holding `h` alone.
    pub fn only(h: Heuristic) -> Self {
        HeuristicSet(h.bit())
    }

    /// This set plus `h`.
    pub fn with(self, h: Heuristic) -> Self {
        HeuristicSet(self.0 | h.bit())
    }

    /// The set whose bits are `bits` in the recorder's encoding
    /// ([`heaptape_format::Record::SnapshotHeuristic`]'s `matched`): 1 stdstring,
    /// 2 length64, 4 newarray, 8 multipleinheritance. Other bits are ignored.
    pub fn from_bits(bits: u8) -> Self {
        HeuristicSet(bits & Self::ALL.0)
    }

    /// The set's bits in the recorder's encoding (see [`HeuristicSet::from_bits`]).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether `h` is in the set.
    pub fn contains(self, h: Heuristic) -> bool {
        self.0 & h.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The heuristics in both sets.
    pub fn intersect(self, other: HeuristicSet) -> Self {
        HeuristicSet(self.0 & other.0)
    }

    /// The first member in memcheck's order.
    pub fn first(self) -> Option<Heuristic> {
        Heuristic::ALL.into_iter().find(|&h| self.contains(h))
    }

    /// The members, in memcheck's order.
    pub fn iter(self) -> impl Iterator<Item = Heuristic> {
        Heuristic::ALL
            .into_iter()
            .filter(move |&h| self.contains(h))
    }

    /// Parses memcheck's option syntax: `all`, `none`, or a comma-separated list of
    /// heuristic names.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => return Ok(Self::ALL),
            "none" => return Ok(Self::NONE),
            _ => {}
        }
        let mut set = Self::NONE;
        for part in s.split(',') {
            let part = part.trim();
            match Heuristic::ALL.into_iter().find(|h| h.name() == part) {
                Some(h) => set = set.with(h),
                None => return Err(format!("unknown leak heuristic `{part}`")),
            }
        }
        Ok(set)
    }
}

/// A live block, as a [`HeuristicSource`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// Its start.
    pub address: u64,
    /// Its requested size.
    pub size: u64,
    /// The function that allocated it.
    pub func: AllocFn,
}

/// Says which heuristics accept an interior pointer (see the module docs). It is
/// asked once per interior pointer, from several threads.
pub trait HeuristicSource: Sync {
    /// The heuristics that accept a pointer `offset` bytes (0 < offset < size) into
    /// `block`.
    fn matching(&self, block: &BlockRef, offset: u64) -> HeuristicSet;
}

/// The source for traces that carry no heuristic data: nothing is accepted.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHeuristicData;

impl HeuristicSource for NoHeuristicData {
    fn matching(&self, _: &BlockRef, _: u64) -> HeuristicSet {
        HeuristicSet::NONE
    }
}

impl<F> HeuristicSource for F
where
    F: Fn(&BlockRef, u64) -> HeuristicSet + Sync,
{
    fn matching(&self, block: &BlockRef, offset: u64) -> HeuristicSet {
        self(block, offset)
    }
}

/// Heuristic verdicts computed by the recorder, which can read the memory: for each
/// (block start, interior offset) that some pointer targets, the heuristics that
/// accept it. Pairs not listed match nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeuristicMatches {
    map: HashMap<(u64, u64), HeuristicSet>,
}

impl HeuristicMatches {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a pointer `offset` bytes into the block at `address` is accepted
    /// by `set` (added to what is already recorded for it).
    pub fn insert(&mut self, address: u64, offset: u64, set: HeuristicSet) {
        let e = self.map.entry((address, offset)).or_default();
        *e = HeuristicSet(e.0 | set.0);
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl HeuristicSource for HeuristicMatches {
    fn matching(&self, block: &BlockRef, offset: u64) -> HeuristicSet {
        self.map
            .get(&(block.address, offset))
            .copied()
            .unwrap_or_default()
    }
}

/// The memory a heuristic reads, as the recorder would store it for one block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockHeader {
    /// The block's first two words (`None`: beyond the block or unreadable).
    pub words: [Option<u64>; 2],
    /// Whether the first word is a vtable address (see [`Heuristic::MultipleInheritance`]).
    pub first_word_is_vtable: bool,
}

/// memcheck's exact tests of the first three heuristics on a block's header words, and
/// of the fourth given whether the word the pointer points at is a vtable address
/// (`target_word_is_vtable`, which only the recorder can tell). Word size is 8.
pub fn header_heuristics(
    block: &BlockRef,
    offset: u64,
    header: &BlockHeader,
    target_word_is_vtable: bool,
) -> HeuristicSet {
    const W: u64 = 8;
    let mut set = HeuristicSet::NONE;
    let size = block.size;
    if offset == 3 * W {
        if let (Some(length), Some(capacity)) = (header.words[0], header.words[1]) {
            // memcheck computes in size_t: wrapping.
            if (3 * W).wrapping_add(capacity).wrapping_add(1) == size && length <= capacity {
                set = set.with(Heuristic::StdString);
            }
        }
    }
    if offset == W {
        if let Some(n) = header.words[0] {
            if n > 0 && size.wrapping_sub(W) == n {
                set = set.with(Heuristic::Length64);
            }
            if n > 0 && size.wrapping_sub(W) % n == 0 {
                set = set.with(Heuristic::NewArray);
            }
        }
    }
    if offset % W == 0 && target_word_is_vtable && header.first_word_is_vtable {
        set = set.with(Heuristic::MultipleInheritance);
    }
    set
}

/// A block live at the snapshot (from the replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBlock {
    /// Its start.
    pub address: u64,
    /// Its requested size.
    pub size: u64,
    /// Where it was allocated.
    pub stack: StackId,
    /// The function that allocated it.
    pub func: AllocFn,
}

/// A block count and a byte count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Blocks.
    pub blocks: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.blocks += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// memcheck's LEAK SUMMARY for one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeakSummary {
    /// Definitely lost blocks (clique leaders).
    pub definitely_lost: Count,
    /// Indirectly lost blocks.
    pub indirectly_lost: Count,
    /// Possibly lost blocks.
    pub possibly_lost: Count,
    /// Still reachable blocks.
    pub still_reachable: Count,
    /// The part of `still_reachable` credited to each heuristic, indexed in
    /// [`Heuristic::ALL`] order.
    pub reachable_via_heuristic: [Count; 4],
}

impl LeakSummary {
    /// The count of one class.
    pub fn get(&self, kind: LeakKind) -> Count {
        match kind {
            LeakKind::DefinitelyLost => self.definitely_lost,
            LeakKind::IndirectlyLost => self.indirectly_lost,
            LeakKind::PossiblyLost => self.possibly_lost,
            LeakKind::StillReachable => self.still_reachable,
        }
    }

    fn get_mut(&mut self, kind: LeakKind) -> &mut Count {
        match kind {
            LeakKind::DefinitelyLost => &mut self.definitely_lost,
            LeakKind::IndirectlyLost => &mut self.indirectly_lost,
            LeakKind::PossiblyLost => &mut self.possibly_lost,
            LeakKind::StillReachable => &mut self.still_reachable,
        }
    }
}

/// The blocks of one class allocated at one place (memcheck's loss record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossRecord {
    /// memcheck's number: records are numbered from 1 in ascending order of size, so
    /// the largest is number `n` of `n`.
    pub number: usize,
    /// The class.
    pub kind: LeakKind,
    /// Where the blocks were allocated.
    pub stack: StackId,
    /// The allocating function.
    pub func: AllocFn,
    /// How many blocks.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// For definitely lost records: the bytes of the blocks their cliques hold
    /// (indirectly lost because of them). Zero otherwise.
    pub indirect_bytes: u64,
}

/// The verdict on one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockVerdict {
    /// The block.
    pub block: LiveBlock,
    /// Its class.
    pub kind: LeakKind,
    /// For an indirectly lost block: the start of the definitely lost block whose
    /// clique holds it.
    pub leader: Option<u64>,
    /// For a definitely lost block: the bytes of the other blocks of its clique.
    pub indirect_bytes: u64,
    /// For a still reachable block: the heuristic it is credited to, if any.
    pub heuristic: Option<Heuristic>,
}

/// What the snapshot's pointer graph looked like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Live blocks classified.
    pub blocks: u64,
    /// Root words pointing into live blocks.
    pub root_pointers: u64,
    /// Words inside blocks pointing into live blocks.
    pub block_pointers: u64,
    /// Pointers whose target lies in no live block the replay knows (the trace and
    /// the replay disagree; they are ignored).
    pub stray_pointers: u64,
    /// Pointers found in a "block" whose address is no live block's start (ignored).
    pub unknown_source_pointers: u64,
}

/// The classification of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakReport {
    /// The four classes.
    pub summary: LeakSummary,
    /// Loss records, largest first (memcheck prints the same records smallest first).
    pub loss_records: Vec<LossRecord>,
    /// The graph's figures.
    pub stats: GraphStats,
    /// The heuristics that were enabled.
    pub heuristics: HeuristicSet,
    blocks: Vec<LiveBlock>,
    kinds: Vec<LeakKind>,
    leaders: Vec<u32>,
    indirect: Vec<u64>,
    heuristic_of: Vec<u8>,
}

const NO_LEADER: u32 = u32::MAX;
const NO_HEURISTIC: u8 = u8::MAX;

impl LeakReport {
    /// How many blocks were classified.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether there were no live blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The verdict on the `i`-th block in address order.
    pub fn block(&self, i: usize) -> Option<BlockVerdict> {
        let block = *self.blocks.get(i)?;
        let leader = self.leaders[i];
        let h = self.heuristic_of[i];
        Some(BlockVerdict {
            block,
            kind: self.kinds[i],
            leader: (leader != NO_LEADER).then(|| self.blocks[leader as usize].address),
            indirect_bytes: self.indirect[i],
            heuristic: Heuristic::ALL.get(h as usize).copied(),
        })
    }

    /// The verdict on the block starting at `address`.
    pub fn find(&self, address: u64) -> Option<BlockVerdict> {
        let i = self
            .blocks
            .binary_search_by_key(&address, |b| b.address)
            .ok()?;
        self.block(i)
    }

    /// Every verdict, in address order.
    pub fn verdicts(&self) -> impl Iterator<Item = BlockVerdict> + '_ {
        (0..self.blocks.len()).filter_map(|i| self.block(i))
    }
}

/// Why a process has no leak verdicts when the trace holds no snapshot of it.
pub const NO_SNAPSHOT: &str =
    "no reachability snapshot was recorded for this process (recorded with --no-snapshot, \
     or the recorder could not take one)";

/// The leak check of one process image: done, or impossible and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeakCheck {
    /// The classification of the image's last complete snapshot.
    Done(Box<LeakReport>),
    /// No complete snapshot: nothing can be said about leaks (see the reason).
    Unavailable(String),
}

impl Default for LeakCheck {
    fn default() -> Self {
        LeakCheck::Unavailable(NO_SNAPSHOT.into())
    }
}

impl LeakCheck {
    /// The classification, when there is one.
    pub fn report(&self) -> Option<&LeakReport> {
        match self {
            LeakCheck::Done(r) => Some(r),
            LeakCheck::Unavailable(_) => None,
        }
    }

    /// Why there is no classification, when there is none.
    pub fn unavailable_reason(&self) -> Option<&str> {
        match self {
            LeakCheck::Done(_) => None,
            LeakCheck::Unavailable(r) => Some(r),
        }
    }
}

/// What makes an analysis fail (`--fail-on`): leak classes and bad frees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailOn {
    /// Any definitely lost block.
    pub definite: bool,
    /// Any indirectly lost block.
    pub indirect: bool,
    /// Any possibly lost block.
    pub possible: bool,
    /// Any still reachable block.
    pub reachable: bool,
    /// Any double, invalid or mismatched free.
    pub invalid_free: bool,
}

impl FailOn {
    /// The names [`FailOn::parse`] accepts, in order.
    pub const NAMES: [&'static str; 5] = [
        "definite",
        "indirect",
        "possible",
        "reachable",
        "invalid-free",
    ];

    /// Parses a comma-separated list of `definite`, `indirect`, `possible`,
    /// `reachable`, `invalid-free`, or `all` / `none`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = FailOn::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "definite" => f.definite = true,
                "indirect" => f.indirect = true,
                "possible" => f.possible = true,
                "reachable" => f.reachable = true,
                "invalid-free" => f.invalid_free = true,
                "all" => {
                    f = FailOn {
                        definite: true,
                        indirect: true,
                        possible: true,
                        reachable: true,
                        invalid_free: true,
                    }
                }
                "none" => f = FailOn::default(),
                other => {
                    return Err(format!(
                        "unknown --fail-on item `{other}` (expected {}, all or none)",
                        Self::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(f)
    }

    /// Whether blocks of class `kind` make the analysis fail.
    pub fn kind(&self, kind: LeakKind) -> bool {
        match kind {
            LeakKind::DefinitelyLost => self.definite,
            LeakKind::IndirectlyLost => self.indirect,
            LeakKind::PossiblyLost => self.possible,
            LeakKind::StillReachable => self.reachable,
        }
    }

    /// Whether any leak class is selected.
    pub fn any_leak_kind(&self) -> bool {
        LeakKind::ALL.into_iter().any(|k| self.kind(k))
    }
}

/// The pointer graph of one snapshot, built record by record, then classified.
#[derive(Clone, Debug, Default)]
pub struct SnapshotGraph {
    blocks: Vec<LiveBlock>,
    roots: Vec<u64>,
    runs: Vec<Run>,
    targets: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    source: u64,
    start: usize,
    end: usize,
}

// Edge encoding after resolution: target block index in the low 32 bits, kind above.
const KIND_SHIFT: u32 = 32;
const K_STRAY: u64 = 0;
const K_START: u64 = 1;
const K_INTERIOR: u64 = 2;
/// K_HEUR + heuristic index.
const K_HEUR: u64 = 3;

#[inline]
fn edge_target(e: u64) -> usize {
    (e & 0xffff_ffff) as usize
}

#[inline]
fn edge_kind(e: u64) -> u64 {
    e >> KIND_SHIFT
}

/// Sets `bits` in `flag` and returns the previous value (skipping the write when
/// they are set already, as they mostly are in dense graphs).
#[inline]
fn set_bits(flag: &AtomicU8, bits: u8) -> u8 {
    let old = flag.load(Ordering::Relaxed);
    if old & bits == bits {
        old
    } else {
        flag.fetch_or(bits, Ordering::Relaxed)
    }
}

// Mark flags.
const F_DEFINITE: u8 = 1;
const F_ANY: u8 = 2;
const F_START_FROM_DEFINITE: u8 = 4;

/// Frontiers at least this long are expanded in parallel.
const PAR_FRONTIER: usize = 4096;

impl SnapshotGraph {
    /// A graph over the blocks live at the snapshot (any order; duplicates of an
    /// address are dropped, keeping the first).
    pub fn new(mut blocks: Vec<LiveBlock>) -> Self {
        blocks.par_sort_by_key(|b| b.address);
        blocks.dedup_by_key(|b| b.address);
        SnapshotGraph {
            blocks,
            ..Default::default()
        }
    }

    /// How many live blocks the graph covers.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Adds the pointers found in a root region (a `SnapshotRoot` record; a region
    /// split over several records is simply added several times).
    pub fn add_root(&mut self, pointers: &[Pointer]) {
        self.roots.extend(pointers.iter().map(|p| p.target));
    }

    /// Adds the pointers found inside the block at `address` (a `SnapshotBlock`
    /// record; split blocks are merged).
    pub fn add_block(&mut self, address: u64, pointers: &[Pointer]) {
        if pointers.is_empty() {
            return;
        }
        let start = self.targets.len();
        self.targets.extend(pointers.iter().map(|p| p.target));
        self.runs.push(Run {
            source: address,
            start,
            end: self.targets.len(),
        });
    }

    /// Classifies every block. `source` answers the heuristics in `enabled` (pass
    /// [`HeuristicSet::NONE`] to turn them off, as `--leak-check-heuristics=none`).
    ///
    /// Fails only when the snapshot has more than `u32::MAX - 1` live blocks.
    pub fn classify(
        self,
        source: &dyn HeuristicSource,
        enabled: HeuristicSet,
    ) -> Result<LeakReport, String> {
        let SnapshotGraph {
            blocks,
            mut roots,
            mut runs,
            mut targets,
        } = self;
        let n = blocks.len();
        if n >= NO_LEADER as usize {
            return Err(format!(
                "{n} live blocks are more than the leak checker handles"
            ));
        }
        let mut stats = GraphStats {
            blocks: n as u64,
            root_pointers: roots.len() as u64,
            block_pointers: targets.len() as u64,
            ..Default::default()
        };
        let index = BlockIndex::new(&blocks);
        let resolver = Resolver {
            blocks: &blocks,
            index: &index,
            source,
            enabled,
        };

        // Resolve every target in place.
        roots.par_iter_mut().for_each(|t| *t = resolver.edge(*t));
        targets.par_iter_mut().for_each(|t| *t = resolver.edge(*t));
        stats.stray_pointers = roots
            .par_iter()
            .chain(targets.par_iter())
            .filter(|&&e| edge_kind(e) == K_STRAY)
            .count() as u64;

        // Runs: source address -> block index (u64::MAX: unknown), then CSR.
        runs.par_iter_mut().for_each(|r| {
            r.source = match index.block_at(r.source) {
                Some(i) if index.spans[i].0 == r.source => i as u64,
                _ => u64::MAX,
            };
        });
        let mut unknown = 0u64;
        runs.retain(|r| {
            let keep = r.source != u64::MAX;
            if !keep {
                unknown += (r.end - r.start) as u64;
            }
            keep
        });
        stats.unknown_source_pointers = unknown;
        runs.par_sort_by_key(|r| r.source);
        let graph = Csr::build(n, &runs, &targets);
        drop(targets);
        drop(runs);

        // Marking: definite reachability (noting, for the heuristic credit, which
        // blocks a start pointer or an accepted interior pointer from a definite source
        // reaches), then reachability at all.
        let flags: Vec<AtomicU8> = (0..n).map(|_| AtomicU8::new(0)).collect();
        let heur_seen: Vec<AtomicU8> = (0..n).map(|_| AtomicU8::new(0)).collect();
        let definite = |e: u64| -> Option<u32> {
            let t = edge_target(e);
            let bits = match edge_kind(e) {
                K_START => F_DEFINITE | F_START_FROM_DEFINITE,
                k if k >= K_HEUR => {
                    set_bits(&heur_seen[t], 1 << (k - K_HEUR));
                    F_DEFINITE
                }
                _ => return None,
            };
            (set_bits(&flags[t], bits) & F_DEFINITE == 0).then_some(t as u32)
        };
        let any = |e: u64| -> Option<u32> {
            let t = edge_target(e);
            (edge_kind(e) != K_STRAY && set_bits(&flags[t], F_ANY) & F_ANY == 0).then_some(t as u32)
        };
        let seeds: Vec<u32> = roots.iter().filter_map(|&e| definite(e)).collect();
        graph.reach(seeds, &definite);
        let seeds: Vec<u32> = roots.iter().filter_map(|&e| any(e)).collect();
        graph.reach(seeds, &any);
        drop(roots);

        let mut kinds: Vec<LeakKind> = flags
            .par_iter()
            .map(|f| {
                let f = f.load(Ordering::Relaxed);
                if f & F_DEFINITE != 0 {
                    LeakKind::StillReachable
                } else if f & F_ANY != 0 {
                    LeakKind::PossiblyLost
                } else {
                    LeakKind::DefinitelyLost // unreached, for now
                }
            })
            .collect();
        let heuristic_of: Vec<u8> = (0..n)
            .into_par_iter()
            .map(|b| {
                let f = flags[b].load(Ordering::Relaxed);
                if f & F_DEFINITE == 0 || f & F_START_FROM_DEFINITE != 0 {
                    return NO_HEURISTIC;
                }
                HeuristicSet(heur_seen[b].load(Ordering::Relaxed))
                    .first()
                    .map_or(NO_HEURISTIC, |h| h.index() as u8)
            })
            .collect();
        drop(flags);
        drop(heur_seen);

        // Cliques, in ascending address order (memcheck's second pass).
        let mut indirect = vec![0u64; n];
        let mut leaders = vec![NO_LEADER; n];
        let mut stack: Vec<u32> = Vec::new();
        for leader in 0..n {
            if kinds[leader] != LeakKind::DefinitelyLost {
                continue;
            }
            stack.push(leader as u32);
            while let Some(top) = stack.pop() {
                for &e in graph.edges(top as usize) {
                    let t = edge_target(e);
                    if kinds[t] != LeakKind::DefinitelyLost || t == leader {
                        continue;
                    }
                    // Unreached: joins this clique (a former leader brings its own).
                    indirect[leader] = indirect[leader]
                        .saturating_add(blocks[t].size)
                        .saturating_add(indirect[t]);
                    indirect[t] = 0;
                    kinds[t] = LeakKind::IndirectlyLost;
                    leaders[t] = leader as u32;
                    stack.push(t as u32);
                }
            }
        }
        // A former leader's members point at it: resolve to the final leader.
        for i in 0..n {
            let mut l = leaders[i];
            if l == NO_LEADER {
                continue;
            }
            while leaders[l as usize] != NO_LEADER {
                l = leaders[l as usize];
            }
            let mut j = i;
            while leaders[j] != NO_LEADER && leaders[j] != l {
                let next = leaders[j] as usize;
                leaders[j] = l;
                j = next;
            }
        }

        let (summary, loss_records) = tally(&blocks, &kinds, &indirect, &heuristic_of);
        Ok(LeakReport {
            summary,
            loss_records,
            stats,
            heuristics: enabled,
            blocks,
            kinds,
            leaders,
            indirect,
            heuristic_of,
        })
    }
}

struct Resolver<'a> {
    blocks: &'a [LiveBlock],
    index: &'a BlockIndex,
    source: &'a dyn HeuristicSource,
    enabled: HeuristicSet,
}

impl Resolver<'_> {
    /// The encoded edge for a pointer to `target`.
    #[inline]
    fn edge(&self, target: u64) -> u64 {
        let Some(b) = self.index.block_at(target) else {
            return K_STRAY << KIND_SHIFT;
        };
        let offset = target - self.index.spans[b].0;
        let kind = if offset == 0 {
            K_START
        } else if self.enabled.is_empty() {
            K_INTERIOR
        } else {
            let block = &self.blocks[b];
            let r = BlockRef {
                address: block.address,
                size: block.size,
                func: block.func,
            };
            match self
                .source
                .matching(&r, offset)
                .intersect(self.enabled)
                .first()
            {
                Some(h) => K_HEUR + h.index() as u64,
                None => K_INTERIOR,
            }
        };
        (kind << KIND_SHIFT) | b as u64
    }
}

/// Finds the block holding an address in O(1) expected time: the blocks' (start, end)
/// in address order, and per 4 GiB region of the address space (addresses sharing
/// their high 32 bits) a table of equal-width buckets over the region's starts, at most
/// one per block, each holding the index of the first block starting in or after it.
/// A lookup reads one bucket pair and searches the few starts between them, so it
/// costs two or three cache misses where a binary search over millions of starts costs
/// twenty-odd; bucket ranges are searched by bisection, so a skewed layout is never
/// worse than a binary search.
struct BlockIndex {
    /// (start, end) of each block (end: start + size, at least start + 1).
    spans: Vec<(u64, u64)>,
    /// The regions holding some block's start, in address order.
    regions: Vec<Region>,
    /// The regions' bucket tables, one after the other (each `buckets + 1` long).
    firsts: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Region {
    /// The high 32 bits of its addresses.
    hi: u64,
    /// Its lowest start.
    base: u64,
    /// log2 of the bucket width.
    shift: u32,
    /// How many buckets.
    buckets: u64,
    /// Where its table starts in `firsts`.
    table: usize,
    /// One past its last block.
    end: u32,
}

impl BlockIndex {
    /// Indexes `blocks` (sorted by address, distinct).
    fn new(blocks: &[LiveBlock]) -> BlockIndex {
        let spans: Vec<(u64, u64)> = blocks
            .par_iter()
            .map(|b| (b.address, b.address.saturating_add(b.size.max(1))))
            .collect();
        let mut regions = Vec::new();
        let mut firsts = Vec::with_capacity(spans.len() + 64);
        let mut i = 0;
        while i < spans.len() {
            let hi = spans[i].0 >> 32;
            let first = i;
            let len = spans[first..].partition_point(|s| s.0 >> 32 == hi);
            let end = first + len;
            let base = spans[first].0;
            let span = spans[end - 1].0 - base;
            // The narrowest buckets with at most one per block.
            let mut shift = 0;
            while (span >> shift) >= len as u64 {
                shift += 1;
            }
            let buckets = (span >> shift) + 1;
            let table = firsts.len();
            let mut b = first;
            for k in 0..=buckets {
                let from = base.saturating_add(k << shift);
                while b < end && spans[b].0 < from {
                    b += 1;
                }
                firsts.push(b as u32);
            }
            regions.push(Region {
                hi,
                base,
                shift,
                buckets,
                table,
                end: end as u32,
            });
            i = end;
        }
        BlockIndex {
            spans,
            regions,
            firsts,
        }
    }

    /// The index of the block holding `address`, if any.
    #[inline]
    fn block_at(&self, address: u64) -> Option<usize> {
        // How many blocks start at or below `address`.
        let hi = address >> 32;
        let r = self.regions.partition_point(|r| r.hi <= hi);
        if r == 0 {
            return None;
        }
        let region = &self.regions[r - 1];
        let count = if region.hi < hi {
            region.end as usize
        } else if address < region.base {
            // The first block of this region starts above: the previous one, if any.
            self.firsts[region.table] as usize
        } else {
            let k = (address - region.base) >> region.shift;
            if k >= region.buckets {
                region.end as usize
            } else {
                let t = region.table + k as usize;
                let (lo, up) = (self.firsts[t] as usize, self.firsts[t + 1] as usize);
                lo + self.spans[lo..up].partition_point(|s| s.0 <= address)
            }
        };
        let b = count.checked_sub(1)?;
        (address < self.spans[b].1).then_some(b)
    }
}

/// Adjacency of the blocks: the edges of block `b` are `adj[offsets[b]..offsets[b+1]]`.
struct Csr {
    offsets: Vec<usize>,
    adj: Vec<u64>,
}

impl Csr {
    fn build(n: usize, runs: &[Run], targets: &[u64]) -> Csr {
        let mut offsets = vec![0usize; n + 1];
        for r in runs {
            let live = targets[r.start..r.end]
                .iter()
                .filter(|&&e| edge_kind(e) != K_STRAY)
                .count();
            offsets[r.source as usize + 1] += live;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut adj = Vec::with_capacity(offsets[n]);
        // Runs are sorted by source, so appending in run order fills the CSR order.
        for r in runs {
            adj.extend(
                targets[r.start..r.end]
                    .iter()
                    .filter(|&&e| edge_kind(e) != K_STRAY),
            );
        }
        Csr { offsets, adj }
    }

    #[inline]
    fn edges(&self, b: usize) -> &[u64] {
        &self.adj[self.offsets[b]..self.offsets[b + 1]]
    }

    /// Walks from `frontier` (already visited): `visit` marks the target of an edge
    /// and returns it if the walk goes on from there.
    fn reach<F>(&self, mut frontier: Vec<u32>, visit: &F)
    where
        F: Fn(u64) -> Option<u32> + Sync,
    {
        while !frontier.is_empty() {
            if frontier.len() >= PAR_FRONTIER {
                frontier = frontier
                    .par_iter()
                    .flat_map_iter(|&b| self.edges(b as usize).iter().filter_map(|&e| visit(e)))
                    .collect();
            } else {
                // Depth-first on this thread until the work is worth sharing.
                while let Some(b) = frontier.pop() {
                    frontier.extend(self.edges(b as usize).iter().filter_map(|&e| visit(e)));
                    if frontier.len() >= 4 * PAR_FRONTIER {
                        break;
                    }
                }
            }
        }
    }
}

type RecordKey = (LeakKind, StackId, AllocFn);

#[derive(Default, Clone, Copy)]
struct Acc {
    blocks: u64,
    bytes: u64,
    indirect: u64,
}

fn tally(
    blocks: &[LiveBlock],
    kinds: &[LeakKind],
    indirect: &[u64],
    heuristic_of: &[u8],
) -> (LeakSummary, Vec<LossRecord>) {
    let (summary, groups) = (0..blocks.len())
        .into_par_iter()
        .fold(
            || (LeakSummary::default(), HashMap::<RecordKey, Acc>::new()),
            |(mut s, mut g), i| {
                let b = &blocks[i];
                let kind = kinds[i];
                s.get_mut(kind).add(b.size);
                if let Some(c) = s.reachable_via_heuristic.get_mut(heuristic_of[i] as usize) {
                    c.add(b.size);
                }
                let a = g.entry((kind, b.stack, b.func)).or_default();
                a.blocks += 1;
                a.bytes = a.bytes.saturating_add(b.size);
                a.indirect = a.indirect.saturating_add(indirect[i]);
                (s, g)
            },
        )
        .reduce(
            || (LeakSummary::default(), HashMap::new()),
            |(mut s1, mut g1), (s2, g2)| {
                for k in LeakKind::ALL {
                    let c = s2.get(k);
                    let t = s1.get_mut(k);
                    t.blocks += c.blocks;
                    t.bytes = t.bytes.saturating_add(c.bytes);
                }
                for (t, c) in s1
                    .reachable_via_heuristic
                    .iter_mut()
                    .zip(s2.reachable_via_heuristic)
                {
                    t.blocks += c.blocks;
                    t.bytes = t.bytes.saturating_add(c.bytes);
                }
                for (k, a) in g2 {
                    let t = g1.entry(k).or_default();
                    t.blocks += a.blocks;
                    t.bytes = t.bytes.saturating_add(a.bytes);
                    t.indirect = t.indirect.saturating_add(a.indirect);
                }
                (s1, g1)
            },
        );
    let mut records: Vec<LossRecord> = groups
        .into_iter()
        .map(|((kind, stack, func), a)| LossRecord {
            number: 0,
            kind,
            stack,
            func,
            blocks: a.blocks,
            bytes: a.bytes,
            indirect_bytes: a.indirect,
        })
        .collect();
    // memcheck's order: total size, then class, then block count, then context.
    records.sort_by_key(|r| {
        (
            r.bytes.saturating_add(r.indirect_bytes),
            r.kind,
            r.blocks,
            r.stack,
            r.func,
        )
    });
    for (i, r) in records.iter_mut().enumerate() {
        r.number = i + 1;
    }
    records.reverse();
    (summary, records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blk(address: u64, size: u64) -> LiveBlock {
        LiveBlock {
            address,
            size,
            stack: 1,
            func: AllocFn::Malloc,
        }
    }

    fn p(target: u64) -> Pointer {
        Pointer { offset: 0, target }
    }

    #[test]
    fn header_tests_follow_memcheck() {
        let b = |size| BlockRef {
            address: 0x1000,
            size,
            func: AllocFn::New,
        };
        let h = |w0, w1| BlockHeader {
            words: [Some(w0), Some(w1)],
            first_word_is_vtable: false,
        };
        // std::string rep: length 5, capacity 8, size 24 + 8 + 1.
        assert_eq!(
            header_heuristics(&b(33), 24, &h(5, 8), false),
            HeuristicSet::only(Heuristic::StdString)
        );
        assert_eq!(
            header_heuristics(&b(33), 24, &h(9, 8), false),
            HeuristicSet::NONE
        );
        // length64: first word = size - 8, also a new[] count dividing size - 8.
        assert_eq!(
            header_heuristics(&b(40), 8, &h(32, 0), false),
            HeuristicSet::only(Heuristic::Length64).with(Heuristic::NewArray)
        );
        // new[] of 3 elements of 4 bytes.
        assert_eq!(
            header_heuristics(&b(20), 8, &h(3, 0), false),
            HeuristicSet::only(Heuristic::NewArray)
        );
        assert_eq!(
            header_heuristics(&b(20), 8, &h(0, 0), false),
            HeuristicSet::NONE
        );
        let mut mi = h(0x4000, 0);
        mi.first_word_is_vtable = true;
        assert_eq!(
            header_heuristics(&b(48), 16, &mi, true),
            HeuristicSet::only(Heuristic::MultipleInheritance)
        );
        assert_eq!(header_heuristics(&b(48), 12, &mi, true), HeuristicSet::NONE);
        assert_eq!(
            header_heuristics(&b(48), 16, &mi, false),
            HeuristicSet::NONE
        );
    }

    #[test]
    fn heuristic_set_parses_memcheck_syntax() {
        assert_eq!(HeuristicSet::parse("all"), Ok(HeuristicSet::ALL));
        assert_eq!(HeuristicSet::parse("none"), Ok(HeuristicSet::NONE));
        assert_eq!(
            HeuristicSet::parse("newarray,stdstring"),
            Ok(HeuristicSet::only(Heuristic::NewArray).with(Heuristic::StdString))
        );
        assert!(HeuristicSet::parse("bogus").is_err());
    }

    #[test]
    fn merged_clique_resolves_to_final_leader() {
        // 0x100 -> 0x200; 0x300 -> 0x100. 0x100 leads first, then 0x300 absorbs it.
        let mut g = SnapshotGraph::new(vec![blk(0x300, 8), blk(0x100, 8), blk(0x200, 8)]);
        g.add_block(0x100, &[p(0x200)]);
        g.add_block(0x300, &[p(0x100)]);
        let r = g.classify(&NoHeuristicData, HeuristicSet::ALL).unwrap();
        assert_eq!(
            r.summary.definitely_lost,
            Count {
                blocks: 1,
                bytes: 8
            }
        );
        assert_eq!(
            r.summary.indirectly_lost,
            Count {
                blocks: 2,
                bytes: 16
            }
        );
        assert_eq!(r.find(0x300).unwrap().indirect_bytes, 16);
        assert_eq!(r.find(0x100).unwrap().indirect_bytes, 0);
        assert_eq!(r.find(0x100).unwrap().leader, Some(0x300));
        assert_eq!(r.find(0x200).unwrap().leader, Some(0x300));
        assert_eq!(r.find(0x300).unwrap().kind, LeakKind::DefinitelyLost);
    }

    #[test]
    fn stray_and_unknown_pointers_are_counted_and_ignored() {
        let mut g = SnapshotGraph::new(vec![blk(0x100, 8)]);
        g.add_root(&[p(0x5000)]);
        g.add_block(0x900, &[p(0x100)]);
        let r = g.classify(&NoHeuristicData, HeuristicSet::ALL).unwrap();
        assert_eq!(r.stats.stray_pointers, 1);
        assert_eq!(r.stats.unknown_source_pointers, 1);
        assert_eq!(
            r.summary.definitely_lost,
            Count {
                blocks: 1,
                bytes: 8
            }
        );
    }

    #[test]
    fn zero_sized_block_is_reached_by_its_start() {
        let mut g = SnapshotGraph::new(vec![blk(0x100, 0), blk(0x101, 4)]);
        g.add_root(&[p(0x100), p(0x101)]);
        let r = g.classify(&NoHeuristicData, HeuristicSet::ALL).unwrap();
        assert_eq!(
            r.summary.still_reachable,
            Count {
                blocks: 2,
                bytes: 4
            }
        );
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    /// The index agrees with a linear search on layouts with several 4 GiB regions,
    /// gaps, zero-sized blocks and a block crossing a region boundary.
    #[test]
    fn block_index_matches_linear_search() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..50 {
            let mut blocks = Vec::new();
            let mut addr = 0x5555_0000_0000u64 + (next() % 4096);
            let n = 1 + next() % 300;
            for _ in 0..n {
                let size = match next() % 5 {
                    0 => 0,
                    1 => next() % 100_000,
                    _ => next() % 64,
                };
                blocks.push(LiveBlock {
                    address: addr,
                    size,
                    stack: 1,
                    func: AllocFn::Malloc,
                });
                addr += size.max(1)
                    + match next() % 20 {
                        0 => 1 << 32,
                        1 => next() % (1 << 30),
                        _ => next() % 64,
                    };
            }
            // A block crossing into the next 4 GiB region, and one right after.
            let last = blocks.last().unwrap();
            let cross = ((last.address + last.size + 1) | 0xffff_ffff) - 15;
            blocks.push(LiveBlock {
                address: cross,
                size: 64,
                stack: 1,
                func: AllocFn::Malloc,
            });
            blocks.push(LiveBlock {
                address: cross + 64 + round,
                size: 8,
                stack: 1,
                func: AllocFn::Malloc,
            });
            let index = BlockIndex::new(&blocks);
            let linear = |a: u64| {
                blocks
                    .iter()
                    .position(|b| a >= b.address && a < b.address + b.size.max(1))
            };
            let mut probes = vec![0, u64::MAX, 1 << 32];
            for b in &blocks {
                for d in [0, 1, b.size.saturating_sub(1), b.size, b.size + 1] {
                    probes.push(b.address + d);
                }
                probes.push(b.address - 1);
                probes.push(b.address + next() % (1 << 31));
            }
            for a in probes {
                assert_eq!(index.block_at(a), linear(a), "round {round}: {a:#x}");
            }
        }
    }
}
