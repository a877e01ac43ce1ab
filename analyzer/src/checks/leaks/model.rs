//! The leak check's vocabulary: memcheck's four classes ([`LeakKind`]), the blocks
//! classified ([`LiveBlock`]), the LEAK SUMMARY ([`LeakSummary`], [`Count`]), loss
//! records ([`LossRecord`]), the verdict on each block ([`BlockVerdict`]), the
//! classification of a snapshot ([`LeakReport`]) and an image's leak check
//! ([`LeakCheck`]: done, or unavailable and why).

use std::fmt;

use heaptape_format::{AllocFn, StackId, Timestamp};

use super::heuristics::{Heuristic, HeuristicSet};
use super::pointers::PointerGraph;

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
    /// When it was allocated (with `address`, what tells it from a later block at the
    /// same address).
    pub ts: Timestamp,
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
    pub(crate) fn add(&mut self, bytes: u64) {
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
    /// Blocks of suppressed loss records, whatever their class (memcheck's
    /// "suppressed"); the four classes above leave them out.
    pub suppressed: Count,
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

    /// The summary of `records` (each counted in its class, or as suppressed when a
    /// suppression hides it), without the heuristic tallies, which need the blocks.
    pub fn of_records<'a>(records: impl IntoIterator<Item = &'a LossRecord>) -> LeakSummary {
        let mut s = LeakSummary::default();
        for r in records {
            let c = match r.suppressed {
                Some(_) => &mut s.suppressed,
                None => s.get_mut(r.kind),
            };
            c.blocks += r.blocks;
            c.bytes = c.bytes.saturating_add(r.bytes);
        }
        s
    }

    pub(super) fn get_mut(&mut self, kind: LeakKind) -> &mut Count {
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
    /// The suppression that hides the record (its index in the analysis's
    /// [`Suppressions`](crate::Suppressions)), if one does: a suppressed record is
    /// counted in [`LeakSummary::suppressed`], not in its class, and not reported.
    pub suppressed: Option<usize>,
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
    /// The blocks, in address order.
    pub(super) blocks: Vec<LiveBlock>,
    /// Each block's class.
    pub(super) kinds: Vec<LeakKind>,
    /// Each indirectly lost block's clique leader (an index), else [`NO_LEADER`].
    pub(super) leaders: Vec<u32>,
    /// Each definitely lost block's indirect bytes.
    pub(super) indirect: Vec<u64>,
    /// Each block's heuristic credit (an index into [`Heuristic::ALL`]), else
    /// [`NO_HEURISTIC`].
    pub(super) heuristic_of: Vec<u8>,
    /// The pointer graph, for the retention analysis.
    pub(super) graph: PointerGraph,
}

/// `LeakReport::leaders` of a block that is not indirectly lost.
pub(super) const NO_LEADER: u32 = u32::MAX;
/// `LeakReport::heuristic_of` of a block credited to no heuristic.
pub(super) const NO_HEURISTIC: u8 = u8::MAX;

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

    /// Every verdict, in address order (suppressed blocks keep their class here).
    pub fn verdicts(&self) -> impl Iterator<Item = BlockVerdict> + '_ {
        (0..self.blocks.len()).filter_map(|i| self.block(i))
    }

    /// The snapshot's pointer graph, over the blocks in address order.
    pub fn graph(&self) -> &PointerGraph {
        &self.graph
    }

    /// The block at index `i` (address order).
    pub fn live_block(&self, i: usize) -> &LiveBlock {
        &self.blocks[i]
    }

    /// The loss records no suppression hides, largest first (what reports list).
    pub fn reported_records(&self) -> impl Iterator<Item = &LossRecord> + '_ {
        self.loss_records.iter().filter(|r| r.suppressed.is_none())
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
