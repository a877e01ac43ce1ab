//! Invalid and mismatched frees, collected during replay.
//!
//! A free of an address that is not a live block (a double free, a wild pointer) or a
//! block released by the wrong family (`new` then `free`) is a bug in the recorded
//! program, not in the trace: the replay must carry on, and the report must say where
//! it happened, and, as memcheck does, which block the address fell in when it was
//! freed ([`BadFreeBlock`]: a live block it lay inside, or a recently freed one, with the
//! stacks that allocated and freed it). Findings are grouped like valgrind groups its errors: one entry per
//! distinct (kind, freeing function and stack, allocating function and stack), with a count and
//! the first occurrence. A program that double-frees in a loop therefore costs one entry,
//! and memory stays bounded by call sites.

use heaptape_format::{AllocFn, StackId, Timestamp};

use crate::hash::FastMap;

/// What is wrong with a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    /// The address was a block that had already been freed (and not allocated again).
    DoubleFree,
    /// The address was never a live block as far as the trace shows.
    InvalidFree,
    /// A live block released by a function of another family (`new` → `free`,
    /// `new[]` → `delete`, `malloc` → `delete`, `new` → `realloc`). The block is still
    /// released and the free counted.
    MismatchedFree,
}

impl FindingKind {
    /// The name used in reports: `double_free`, `invalid_free`, `mismatched_free`.
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::DoubleFree => "double_free",
            FindingKind::InvalidFree => "invalid_free",
            FindingKind::MismatchedFree => "mismatched_free",
        }
    }
}

/// One group of identical findings (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What is wrong.
    pub kind: FindingKind,
    /// The releasing function (`free`, `operator delete`, `realloc`...).
    pub free_fn: AllocFn,
    /// Stack of the release.
    pub free_stack: StackId,
    /// The function that allocated the block, when known.
    pub alloc_fn: Option<AllocFn>,
    /// Stack of that allocation, when known.
    pub alloc_stack: Option<StackId>,
    /// When the address fell in a freed block (a double free, or a stale pointer into
    /// the block): the stack of the block's earlier, valid free.
    pub previous_free_stack: Option<StackId>,
    /// How many times this happened.
    pub count: u64,
    /// The first time it happened.
    pub first: Occurrence,
}

/// Where and when one finding happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    /// The address passed to the releasing function.
    pub address: u64,
    /// The releasing thread.
    pub tid: u32,
    /// Timestamp of the release.
    pub ts: Timestamp,
    /// Size of the block concerned, when known.
    pub size: Option<u64>,
    /// The block the address fell in, when it fell in one the replay knows.
    pub block: Option<BadFreeBlock>,
}

/// The heap block a released address fell in, as it was at the moment of the release
/// (memcheck's "Address 0x… is 8 bytes inside a block of size 64 alloc'd").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadFreeBlock {
    /// The block's start.
    pub address: u64,
    /// Its requested size.
    pub size: u64,
    /// How far past the block's start the address was (0: the start itself).
    pub offset: u64,
    /// Whether the block had been freed already (a double free, or a stale pointer
    /// into it); otherwise it was live.
    pub freed: bool,
}

type Key = (
    FindingKind,
    AllocFn,
    StackId,
    Option<AllocFn>,
    Option<StackId>,
    Option<StackId>,
);

/// The findings of one process image, in order of first occurrence.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    list: Vec<Finding>,
    index: FastMap<Key, usize>,
}

impl Findings {
    /// Adds one occurrence, merging it into its group.
    pub(crate) fn add(&mut self, finding: Finding) {
        let key = (
            finding.kind,
            finding.free_fn,
            finding.free_stack,
            finding.alloc_fn,
            finding.alloc_stack,
            finding.previous_free_stack,
        );
        match self.index.get(&key) {
            Some(&i) => self.list[i].count = self.list[i].count.saturating_add(finding.count),
            None => {
                self.index.insert(key, self.list.len());
                self.list.push(finding);
            }
        }
    }

    /// Every group, in order of first occurrence.
    pub fn list(&self) -> &[Finding] {
        &self.list
    }

    /// Total occurrences of `kind`.
    pub fn count(&self, kind: FindingKind) -> u64 {
        self.list
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.count)
            .sum()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: FindingKind, free_stack: StackId, address: u64) -> Finding {
        Finding {
            kind,
            free_fn: AllocFn::Free,
            free_stack,
            alloc_fn: None,
            alloc_stack: None,
            previous_free_stack: None,
            count: 1,
            first: Occurrence {
                address,
                tid: 1,
                ts: 0,
                size: None,
                block: None,
            },
        }
    }

    #[test]
    fn identical_findings_are_grouped() {
        let mut fs = Findings::default();
        fs.add(f(FindingKind::InvalidFree, 3, 0x10));
        fs.add(f(FindingKind::InvalidFree, 3, 0x20));
        fs.add(f(FindingKind::DoubleFree, 3, 0x30));
        fs.add(f(FindingKind::InvalidFree, 4, 0x40));
        assert_eq!(fs.list().len(), 3);
        assert_eq!(fs.list()[0].count, 2);
        assert_eq!(fs.list()[0].first.address, 0x10);
        assert_eq!(fs.count(FindingKind::InvalidFree), 3);
        assert_eq!(fs.count(FindingKind::DoubleFree), 1);
        assert_eq!(fs.count(FindingKind::MismatchedFree), 0);
    }
}
