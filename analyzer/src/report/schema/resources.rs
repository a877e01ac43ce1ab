//! An image's descriptors and mappings left open, and its memory timeline with the
//! verdict on its shape.

use serde::Serialize;

use super::Stack;

/// A descriptor the image opened and did not close.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FdLeak {
    /// The descriptor it duplicates (`dup` and friends).
    pub duplicate_of: Option<i32>,
    /// The descriptor.
    pub fd: i32,
    /// `file`, `socket`, `pipe` or `special`.
    pub kind: &'static str,
    /// When it was opened.
    pub opened_ns: u64,
    /// Its path, socket type or other description.
    pub path: String,
    /// Where it was opened, innermost first.
    pub stack: Stack,
    /// The trie id of that stack.
    pub stack_id: u32,
    /// The thread that opened it.
    pub tid: u32,
}

/// A region the image mapped itself and did not unmap (or what is left of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MmapLeak {
    /// Its start, `"0x…"`.
    pub address: String,
    /// Its length.
    pub bytes: u64,
    /// The mapped file's descriptor, -1 for anonymous memory.
    pub fd: i32,
    /// Its `MAP_*` flags.
    pub flags: u32,
    /// When it was mapped.
    pub mapped_ns: u64,
    /// Its `PROT_*` bits.
    pub prot: u32,
    /// Where it was mapped, innermost first.
    pub stack: Stack,
    /// The trie id of that stack.
    pub stack_id: u32,
}

/// One point of the memory timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimelinePoint {
    /// Live heap bytes of the image.
    pub live_heap_bytes: u64,
    /// Bytes the program had mapped itself (its own mmap calls).
    pub mapped_bytes: u64,
    /// Resident set size (VmRSS).
    pub rss: u64,
    /// Anonymous resident memory (RssAnon).
    pub rss_anon: u64,
    /// When.
    pub t_ns: u64,
}

/// What the timeline's shape says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// One sentence with the figures behind it.
    pub explanation: String,
    /// Live heap growth between the first and last quarter after start-up (negative
    /// when it shrank); 0 without a judgement.
    pub heap_growth_bytes: i64,
    /// `mappings`, `fragmentation`, `leak`, `stable` or `unknown`.
    pub kind: &'static str,
    /// Anonymous RSS growth, likewise.
    pub rss_anon_growth_bytes: i64,
    /// RSS samples recorded (before any thinning).
    pub rss_samples: u64,
    /// For a leak: the sites that grew most; for mappings: the sites whose mappings
    /// made after start-up are still mapped (`blocks` counting regions).
    pub sites: Vec<VerdictSite>,
}

/// A site named by the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerdictSite {
    /// Blocks (or regions) made there after start-up and live at the end.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Where, innermost first.
    pub stack: Stack,
    /// The trie id of that stack.
    pub stack_id: u32,
}
