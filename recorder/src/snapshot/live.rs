//! The blocks a process has live, mirrored from the allocator records the tracer writes;
//! the memory that held blocks before (freed heap memory is never a snapshot root); and
//! the memory the allocator mapped for itself (neither a root nor a block).

use heaptape_format::{AllocFamily, AllocFn, Record};

use super::ranges::Ranges;
use super::PAGE;
use crate::addr_map::{AddrMap, AddrSet};

/// The blocks a process has live, as the trace says, the memory heap blocks have used,
/// and what its allocator mapped for itself.
#[derive(Clone, Debug, Default)]
pub struct LiveBlocks {
    /// Live blocks: start to size, and in the top bits ([`TAG_SHIFT`]) the family of
    /// the function that allocated it and whether that entry point was shared by
    /// several families (see [`LiveBlocks::release`]).
    pub(super) blocks: AddrMap<u64, u64>,
    /// Pages (address / [`PAGE`]) that ever held a block (not kept when `partial`).
    pub(super) heap_pages: AddrSet<u64>,
    /// Blocks allocated before the recording began may be live (the recording attached
    /// to a running process): memory between the known blocks may hold such blocks, so
    /// the snapshot leaves out only the known blocks and `freed`, not whole pages.
    pub(super) partial: bool,
    /// When `partial`: blocks freed since the recording began, start to size (the
    /// largest freed there). Their memory holds stale words, or what the allocator put
    /// there since; a block it handed out again is a known block.
    pub(super) freed: AddrMap<u64, u64>,
    /// Memory the allocator mapped for itself since the recording began (its calls to
    /// mmap from inside an allocator call, or from its own code): its metadata, caches
    /// and the regions it hands blocks out of.
    pub(super) allocator: Ranges,
    /// Live blocks that a replacement allocator's own code allocated through its public
    /// entry points (see [`LiveBlocks::alloc_by`]): the only blocks its static data can
    /// own.
    pub(super) own: AddrSet<u64>,
}

impl LiveBlocks {
    /// The mirror of a process the recording attached to: blocks allocated before the
    /// attach are unknown (see [`LiveBlocks::partial`]).
    pub fn attached() -> LiveBlocks {
        LiveBlocks {
            partial: true,
            ..LiveBlocks::default()
        }
    }

    /// A successful allocation of `size` bytes at `addr` (by the malloc family).
    pub fn alloc(&mut self, addr: u64, size: u64) {
        self.alloc_tagged(addr, size, 0);
    }

    /// A successful allocation, with its tag (see [`tag`]).
    fn alloc_tagged(&mut self, addr: u64, size: u64, tag: u64) {
        if addr == 0 {
            return;
        }
        let size = size.min(SIZE_MASK);
        self.blocks.insert(addr, size | tag << TAG_SHIFT);
        if self.partial {
            return;
        }
        let first = addr / PAGE;
        let last = addr.saturating_add(size.max(1) - 1) / PAGE;
        // A big block reused at the same place has its pages marked already.
        if last - first > 64 && self.heap_pages.contains(&first) && self.heap_pages.contains(&last)
        {
            return;
        }
        for page in first..=last {
            self.heap_pages.insert(page);
        }
    }

    /// A successful allocation, `by_allocator` when the call came from a replacement
    /// allocator's own code (its module calling its own malloc or operator new).
    pub fn alloc_by(&mut self, addr: u64, size: u64, by_allocator: bool) {
        self.alloc(addr, size);
        if by_allocator && addr != 0 {
            self.own.insert(addr);
        }
    }

    /// The size of the live block at `addr`.
    #[cfg(test)]
    pub fn size_of(&self, addr: u64) -> Option<u64> {
        self.blocks.get(&addr).map(|&v| v & SIZE_MASK)
    }

    /// The live blocks: start and size.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.blocks.iter().map(|(&a, &v)| (a, v & SIZE_MASK))
    }

    /// The function a free of `addr` through an entry point `func` is recorded as: when
    /// that entry point is shared by several families (`shared`), or the block was
    /// allocated through such an entry point, the release its block's allocation calls
    /// for (the allocator cannot tell them apart, so neither can a mismatch be told);
    /// otherwise `func`.
    pub fn release(&self, addr: u64, func: AllocFn, shared: bool) -> AllocFn {
        let Some(&v) = self.blocks.get(&addr) else {
            return func;
        };
        let tag = v >> TAG_SHIFT;
        if !shared && tag & TAG_SHARED == 0 {
            return func;
        }
        match tag & 3 {
            1 => AllocFn::Delete,
            2 => AllocFn::DeleteArray,
            _ => AllocFn::Free,
        }
    }

    /// A free (or the release half of a realloc).
    pub fn free(&mut self, addr: u64) {
        let size = self.blocks.remove(&addr).map(|v| v & SIZE_MASK);
        if !self.own.is_empty() {
            self.own.remove(&addr);
        }
        if let (true, Some(size)) = (self.partial, size) {
            let f = self.freed.entry(addr).or_insert(0);
            *f = (*f).max(size);
        }
    }

    /// realloc(old, size) returned `new`.
    pub fn realloc(&mut self, old: u64, new: u64, size: u64) {
        if new != 0 {
            let own = old != 0 && self.own.contains(&old);
            if old != 0 {
                self.free(old);
            }
            self.alloc_by(new, size, own);
        } else if size == 0 && old != 0 {
            self.free(old);
        }
    }

    /// Mirrors an allocator record: an allocation, a resize or a free (other records
    /// change nothing).
    pub fn apply(&mut self, rec: &Record) {
        self.apply_by(rec, false, false);
    }

    /// [`LiveBlocks::apply`], for a call from a replacement allocator's own code when
    /// `by_allocator` (see [`LiveBlocks::alloc_by`]), through an entry point several
    /// families share when `shared` ([`LiveBlocks::release`]).
    pub fn apply_by(&mut self, rec: &Record, by_allocator: bool, shared: bool) {
        match *rec {
            Record::Alloc {
                address,
                size,
                func,
                ..
            } => {
                self.alloc_tagged(address, size, tag(func, shared));
                if by_allocator && address != 0 {
                    self.own.insert(address);
                }
            }
            Record::Realloc {
                old_address,
                new_address,
                size,
                ..
            } => self.realloc(old_address, new_address, size),
            Record::Free { address, .. } => self.free(address),
            _ => {}
        }
    }

    /// The allocator mapped `len` bytes at `addr` for itself.
    pub fn allocator_mapped(&mut self, addr: u64, len: u64) {
        self.allocator
            .insert(addr..addr.saturating_add(page_up(len)));
    }

    /// `len` bytes at `addr` were unmapped (by anyone).
    pub fn unmapped(&mut self, addr: u64, len: u64) {
        if !self.allocator.is_empty() {
            self.allocator
                .remove(addr..addr.saturating_add(page_up(len)));
        }
    }

    /// mremap moved (or resized) `old_len` bytes at `old` to `new_len` bytes at `new`:
    /// the allocator's memory stays the allocator's.
    pub fn remapped(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) {
        let old_range = old..old.saturating_add(page_up(old_len));
        let was = !old_range.is_empty() && self.allocator.covers(&old_range);
        self.unmapped(old, old_len);
        if was {
            self.allocator_mapped(new, new_len);
        }
    }

    /// Number of live blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is live.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Where a block's tag starts in its [`LiveBlocks::blocks`] value.
const TAG_SHIFT: u32 = 61;
/// The size bits of a [`LiveBlocks::blocks`] value.
const SIZE_MASK: u64 = (1 << TAG_SHIFT) - 1;
/// Tag bit: allocated through an entry point shared by several families.
const TAG_SHARED: u64 = 4;

/// A block's tag: its allocating function's family (0 malloc, 1 new, 2 new[]) and
/// [`TAG_SHARED`].
fn tag(func: AllocFn, shared: bool) -> u64 {
    let family = match func.family() {
        AllocFamily::Malloc => 0,
        AllocFamily::New => 1,
        AllocFamily::NewArray => 2,
    };
    family | if shared { TAG_SHARED } else { 0 }
}

/// `len` rounded up to whole pages (what mmap and munmap act on).
fn page_up(len: u64) -> u64 {
    len.saturating_add(PAGE - 1) & !(PAGE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realloc_semantics_match_the_analyzer() {
        let mut live = LiveBlocks::default();
        live.realloc(0, 0x100, 10); // realloc(NULL, 10)
        live.realloc(0x100, 0x200, 20); // moved
        assert_eq!(live.len(), 1);
        live.realloc(0x200, 0, 1 << 40); // failed: block stays
        assert_eq!(live.len(), 1);
        live.realloc(0x200, 0, 0); // realloc(p, 0) frees
        assert!(live.is_empty());
        assert!(live.heap_pages.contains(&0));
        assert!(
            live.freed.is_empty(),
            "freed ranges are kept only when attached"
        );
    }

    #[test]
    fn attached_mirror_keeps_freed_blocks_not_pages() {
        let mut live = LiveBlocks::attached();
        live.alloc(0x1000, 100);
        live.alloc(0x2000, 40);
        live.free(0x1000);
        live.free(0x9000); // allocated before the attach: size unknown
        assert!(live.heap_pages.is_empty());
        assert_eq!(live.freed.get(&0x1000), Some(&100));
        assert_eq!(live.freed.len(), 1);
        live.alloc(0x1000, 50);
        live.free(0x1000);
        assert_eq!(live.freed.get(&0x1000), Some(&100), "the largest stays");
    }

    #[test]
    fn allocator_mappings_follow_mmap_munmap_and_mremap() {
        let mut live = LiveBlocks::default();
        live.allocator_mapped(0x10000, 0x4000);
        live.unmapped(0x11000, 1); // one page
        let r: Vec<_> = live.allocator.iter().collect();
        assert_eq!(r, vec![0x10000..0x11000, 0x12000..0x14000]);
        live.remapped(0x12000, 0x2000, 0x40000, 0x3000);
        let r: Vec<_> = live.allocator.iter().collect();
        assert_eq!(r, vec![0x10000..0x11000, 0x40000..0x43000]);
        // A mapping that was not the allocator's stays not the allocator's.
        live.remapped(0x80000, 0x1000, 0x90000, 0x1000);
        assert!(!live.allocator.contains(0x90000));
    }

    #[test]
    fn releases_through_shared_entry_points_match_their_blocks() {
        let alloc = |func| Record::Alloc {
            ts: 0,
            tid: 1,
            func,
            address: 0,
            size: 8,
            align: 0,
            stack: 0,
        };
        let at = |rec: Record, address| match rec {
            Record::Alloc { func, .. } => Record::Alloc {
                ts: 0,
                tid: 1,
                func,
                address,
                size: 8,
                align: 0,
                stack: 0,
            },
            other => other,
        };
        let mut live = LiveBlocks::default();
        live.apply_by(&at(alloc(AllocFn::New), 0x10), false, false);
        live.apply_by(&at(alloc(AllocFn::NewArray), 0x20), false, true);
        live.apply_by(&at(alloc(AllocFn::Malloc), 0x30), false, false);
        assert_eq!(live.size_of(0x10), Some(8));
        // Not shared: the entry point's own function, a mismatch stays one.
        assert_eq!(live.release(0x10, AllocFn::Free, false), AllocFn::Free);
        // A shared free entry: what the block calls for.
        assert_eq!(live.release(0x10, AllocFn::Free, true), AllocFn::Delete);
        assert_eq!(
            live.release(0x30, AllocFn::DeleteArray, true),
            AllocFn::Free
        );
        // A block from a shared new/new[] entry: any release matches it.
        assert_eq!(
            live.release(0x20, AllocFn::Delete, false),
            AllocFn::DeleteArray
        );
        // Unknown blocks keep the entry's function.
        assert_eq!(live.release(0x99, AllocFn::Delete, true), AllocFn::Delete);
    }

    #[test]
    fn blocks_of_the_allocator_itself() {
        let mut live = LiveBlocks::default();
        live.alloc_by(0x100, 8, true);
        live.alloc_by(0x200, 8, false);
        assert!(live.own.contains(&0x100) && !live.own.contains(&0x200));
        live.realloc(0x100, 0x300, 16);
        assert!(live.own.contains(&0x300) && !live.own.contains(&0x100));
        live.free(0x300);
        assert!(live.own.is_empty());
    }
}
