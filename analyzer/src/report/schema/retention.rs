//! Who holds an image's reachable memory: the dominator tree of its last snapshot
//! (see `checks::retention`).

use serde::Serialize;

use super::{Count, Frame, Stack};

/// The retention of the image's last complete snapshot. Its lists hold at most 100
/// entries each (fewer with `--top`): each root or block listed costs a path search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// The reachable blocks (still reachable and possibly lost), all retained by the
    /// roots or shared.
    pub reachable: Count,
    /// How many roots retain at least one block.
    pub root_count: usize,
    /// The roots that retain the most, most first.
    pub roots: Vec<Retainer>,
    /// Blocks no single root retains (two or more roots reach them).
    pub shared: Count,
    /// The blocks no single root retains that retain the most, most first.
    pub shared_blocks: Vec<SharedBlock>,
    /// The allocation stacks whose blocks retain the most, most first.
    pub sites: Vec<SiteRetention>,
}

/// A root and what it retains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Retainer {
    /// Its largest children in the dominator tree, largest first, each with the
    /// shortest path from the root.
    pub held: Vec<Held>,
    /// What would be freed if it let go.
    pub retained: Count,
    /// The root.
    pub root: Root,
}

/// A block several roots reach (no single one retains it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SharedBlock {
    /// Its largest children in the dominator tree, largest first, each with the
    /// shortest path from the block.
    pub held: Vec<Held>,
    /// The root nearest to it (fewest hops), one of those that reach it.
    pub nearest_root: Option<Root>,
    /// The shortest path from that root: its last hop is the block.
    pub path: Vec<Hop>,
    /// What it retains, itself included.
    pub retained: Count,
}

/// What holds a root pointer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Root {
    /// The variable's address (`global`), the mapping's start (`anonymous`), `"0x…"`;
    /// `null` otherwise.
    pub address: Option<String>,
    /// The frame's depth on its thread's stack, 0 innermost (`frame`).
    pub depth: Option<u32>,
    /// The root in words, as the text report names it.
    pub description: String,
    /// The frame's function (`frame`).
    pub frame: Option<Frame>,
    /// `global`, `module_data`, `frame`, `stack`, `registers`, `tls` or `anonymous`.
    pub kind: &'static str,
    /// The mapping's length (`anonymous`).
    pub len: Option<u64>,
    /// The module's path (`global`, `module_data`).
    pub module: Option<String>,
    /// The variable's name (`global`).
    pub name: Option<String>,
    /// The thread's name (`frame`, `stack`, `registers`, `tls`), `""` when unknown.
    pub thread: Option<String>,
    /// The thread (`frame`, `stack`, `registers`, `tls`).
    pub tid: Option<u32>,
}

/// A block a root holds directly in the dominator tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Held {
    /// The shortest path from the root: its last hop is the block.
    pub path: Vec<Hop>,
    /// What the block retains, itself included.
    pub retained: Count,
}

/// One hop of a path: a block and the pointer that reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// The block's start, `"0x…"`.
    pub address: String,
    /// For the first hop from a global variable: the offset in the variable of the
    /// word that points at the block; `null` otherwise.
    pub field: Option<u64>,
    /// Where in the block the pointer points, for an interior pointer; `null` for a
    /// pointer to its start.
    pub interior_offset: Option<u64>,
    /// The block's size.
    pub size: u64,
    /// Where it was allocated.
    pub stack: Stack,
    /// The allocation stack's trie id.
    pub stack_id: u32,
    /// `start`, `interior`, or `heuristic` (an interior pointer an enabled heuristic
    /// accepts).
    pub via: &'static str,
}

/// The memory the blocks of one allocation stack retain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteRetention {
    /// The roots that hold it, most first, with the bytes each holds; `root` is
    /// `null` for the part no single root retains.
    pub held_by: Vec<SiteRoot>,
    /// What its blocks retain (a block dominated by another block of the stack is
    /// counted once, in the other's).
    pub retained: Count,
    /// The allocation stack.
    pub stack: Stack,
    /// Its trie id.
    pub stack_id: u32,
}

/// A root holding part of a site's retained memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteRoot {
    /// The bytes it holds.
    pub bytes: u64,
    /// The root; `null` for memory shared by several roots.
    pub root: Option<Root>,
}

/// One snapshot of the image: when, why, its leak classes and largest roots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Its leak classes (suppressions applied).
    pub leaks: SnapshotLeaks,
    /// How long the process was stopped for it; `null` in traces before format 4.
    pub pause_ns: Option<u64>,
    /// Its three largest roots (by retained bytes).
    pub roots: Vec<SnapshotRoot>,
    /// When it was taken.
    pub time_ns: u64,
    /// `exit`, `periodic`, `signal` or `detach`; `null` in traces before format 4.
    pub trigger: Option<&'static str>,
}

/// A snapshot's leak classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotLeaks {
    /// Definitely lost blocks.
    pub definitely_lost: Count,
    /// Indirectly lost blocks.
    pub indirectly_lost: Count,
    /// Possibly lost blocks.
    pub possibly_lost: Count,
    /// Still reachable blocks.
    pub still_reachable: Count,
    /// Blocks of suppressed loss records.
    pub suppressed: Count,
}

/// One of a snapshot's largest roots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotRoot {
    /// The root in words.
    pub description: String,
    /// Its kind (see [`Root::kind`]).
    pub kind: &'static str,
    /// What it retains.
    pub retained: Count,
}

/// A block definitely lost at the last snapshot, and the two snapshots between which
/// it became unreachable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostBetween {
    /// The block's address, `"0x…"`.
    pub address: String,
    /// When it was allocated.
    pub allocated_ns: u64,
    /// The snapshot where it was first found lost.
    pub lost_ns: u64,
    /// The last time it was known reachable: the snapshot before `lost_ns`, or its
    /// allocation when that came later.
    pub reachable_ns: u64,
    /// Its size.
    pub size: u64,
    /// Where it was allocated.
    pub stack: Stack,
    /// The allocation stack's trie id.
    pub stack_id: u32,
}
