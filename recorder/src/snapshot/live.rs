//! The blocks a process has live, mirrored from the allocator records the tracer writes,
//! and the pages that ever held one (freed heap memory is never a snapshot root).

use heaptape_format::Record;

use crate::addr_map::{AddrMap, AddrSet};

use super::PAGE;

/// The blocks a process has live, as the trace says, and the pages heap blocks have used.
#[derive(Clone, Debug, Default)]
pub struct LiveBlocks {
    /// Live blocks: start to size.
    pub(super) blocks: AddrMap<u64, u64>,
    /// Pages (address / [`PAGE`]) that ever held a block.
    pub(super) heap_pages: AddrSet<u64>,
}

impl LiveBlocks {
    /// A successful allocation of `size` bytes at `addr`.
    pub fn alloc(&mut self, addr: u64, size: u64) {
        if addr == 0 {
            return;
        }
        self.blocks.insert(addr, size);
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

    /// A free (or the release half of a realloc).
    pub fn free(&mut self, addr: u64) {
        self.blocks.remove(&addr);
    }

    /// realloc(old, size) returned `new`.
    pub fn realloc(&mut self, old: u64, new: u64, size: u64) {
        if new != 0 {
            if old != 0 {
                self.free(old);
            }
            self.alloc(new, size);
        } else if size == 0 && old != 0 {
            self.free(old);
        }
    }

    /// Mirrors an allocator record: an allocation, a resize or a free (other records
    /// change nothing).
    pub fn apply(&mut self, rec: &Record) {
        match *rec {
            Record::Alloc { address, size, .. } => self.alloc(address, size),
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
    }
}
