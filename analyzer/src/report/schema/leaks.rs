//! An image's leak classification (memcheck's LEAK SUMMARY and loss records) and its
//! bad frees.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Stack;

/// memcheck's LEAK SUMMARY of the image's last complete snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeakSummary {
    /// Definitely lost blocks.
    pub definitely_lost: Count,
    /// The interior-pointer heuristics that were enabled, in memcheck's order.
    pub heuristics: Vec<&'static str>,
    /// Indirectly lost blocks.
    pub indirectly_lost: Count,
    /// Possibly lost blocks.
    pub possibly_lost: Count,
    /// The part of `still_reachable` credited to each heuristic, by heuristic name
    /// (every heuristic, enabled or not).
    pub reachable_via_heuristic: BTreeMap<&'static str, Count>,
    /// The snapshot's pointer graph.
    pub snapshot: SnapshotStats,
    /// Still reachable blocks.
    pub still_reachable: Count,
    /// Blocks of the loss records a suppression hides, whatever their class (left out
    /// of the four classes, as memcheck's "suppressed").
    pub suppressed: Count,
}

/// A block count and a byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Count {
    /// Blocks.
    pub blocks: u64,
    /// Bytes.
    pub bytes: u64,
}

/// What the snapshot's pointer graph looked like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotStats {
    /// Words inside blocks pointing into live blocks.
    pub block_pointers: u64,
    /// Live blocks classified.
    pub blocks: u64,
    /// Root words pointing into live blocks.
    pub root_pointers: u64,
    /// Pointers whose target lies in no block the replay knows (ignored).
    pub stray_pointers: u64,
    /// Pointers found in a "block" that is no live block's start (ignored).
    pub unknown_source_pointers: u64,
}

/// The blocks of one class allocated at one place (memcheck's loss record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LossRecord {
    /// The allocating function (`malloc`, `operator new`, ...).
    pub allocator: &'static str,
    /// How many blocks.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// For a definitely lost record: the bytes of the blocks its cliques hold; 0
    /// otherwise.
    pub indirect_bytes: u64,
    /// The class: `definitely_lost`, `indirectly_lost`, `possibly_lost` or
    /// `still_reachable`.
    pub kind: &'static str,
    /// memcheck's number: ascending by size, so the largest is `of` of `of`.
    pub number: usize,
    /// How many loss records the image has.
    pub of: usize,
    /// Where the blocks were allocated, from the allocator's caller, innermost first.
    pub stack: Stack,
    /// The trie id of that stack.
    pub stack_id: u32,
}

/// A group of identical invalid, double or mismatched frees: `stack` is where the
/// first happened, `block` the heap block its address fell in (memcheck's "Address 0x…
/// is 8 bytes inside a block of size 64 alloc'd", in full in `description`),
/// `alloc_stack` where that block was allocated and `free_stack` where it was freed
/// before (a double free, or a stale pointer into a freed block); the `*_stack_id`s are
/// the trie ids of the same stacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvalidFree {
    /// The address freed, `"0x…"`.
    pub address: String,
    /// The function that allocated the block, when known.
    pub alloc_function: Option<&'static str>,
    /// Where the block was allocated, when known.
    pub alloc_stack: Option<Stack>,
    /// The trie id of `alloc_stack`.
    pub alloc_stack_id: Option<u32>,
    /// The block the (first) address fell in, live or freed, when it fell in one.
    pub block: Option<BadFreeBlock>,
    /// How many times it happened.
    pub count: u64,
    /// Where the address was, in memcheck's words: "Address 0x… is 8 bytes inside a
    /// block of size 64 alloc'd" (or "free'd"), "… is in a rw- mapped file /path
    /// segment", "… is not malloc'd or (recently) free'd".
    pub description: String,
    /// Where the block was freed before: a double free, or a stale pointer into a
    /// freed block.
    pub free_stack: Option<Stack>,
    /// The trie id of `free_stack`.
    pub free_stack_id: Option<u32>,
    /// The freeing function (`free`, `operator delete`, ...).
    pub function: &'static str,
    /// `double_free`, `invalid_free` or `mismatched_free`.
    pub kind: &'static str,
    /// The block's size, when known.
    pub size: Option<u64>,
    /// Where the first one happened.
    pub stack: Stack,
    /// The trie id of `stack`.
    pub stack_id: u32,
    /// The thread of the first one.
    pub tid: u32,
    /// When the first one happened.
    pub ts_ns: u64,
}

/// The heap block a bad free's address fell in, as it was then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadFreeBlock {
    /// The block's start, `"0x…"`.
    pub address: String,
    /// How far past the block's start the address was (0: the start itself).
    pub offset: u64,
    /// The block's requested size.
    pub size: u64,
}
