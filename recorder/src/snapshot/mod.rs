//! The reachability snapshot taken when a process exits (memory still intact, every
//! thread stopped).
//!
//! Leak classes (definitely / indirectly / possibly lost, still reachable) depend on who
//! points at a block when the program ends. That can only be seen while the process's
//! memory exists, i.e. at PTRACE_EVENT_EXIT, but the classification itself is analysis
//! and belongs offline. So the recorder stores just the pointer graph: for every root
//! region (registers, stacks, writable memory that is not heap) and every live block, the
//! aligned words whose values point into a live block. Never raw memory: a trace must not
//! carry the program's secrets, and the graph is far smaller than the heap.
//!
//! To know the live blocks, the recorder mirrors the allocator events it writes
//! ([`LiveBlocks`]), and it remembers every page that ever held a block, so freed heap
//! memory (with stale pointers in it) is never mistaken for a root.

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::Range;

use heaptape_format::{Pointer, Record, RootKind};

use crate::maps::{self, MapEntry};
use crate::sys::{self, Regs, Tid};

/// Pointers per record at most (keeps every record far below the format's size limit).
const POINTERS_PER_RECORD: usize = 1 << 18;
/// Bytes read per batch of process_vm_readv.
const BATCH_BYTES: usize = 16 << 20;
const PAGE: u64 = 4096;

/// The blocks a process has live, as the trace says, and the pages heap blocks have used.
#[derive(Clone, Debug, Default)]
pub struct LiveBlocks {
    blocks: HashMap<u64, u64>,
    heap_pages: HashSet<u64>,
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

    /// Number of live blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is live.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Live blocks sorted by address, for "does this word point into a block?".
///
/// Every word of every root and live block is looked up, so the lookup must not be a
/// binary search over millions of blocks (a cache miss per step). Blocks are grouped by
/// 4 GiB region (heaps, mmap'd blocks and thread arenas live far apart); each region's
/// span is cut into buckets of about one block each, and `buckets[b]` is the index of the
/// first block starting at or after bucket b's start. A lookup binary-searches the few
/// regions, then the few blocks of one bucket: never worse than a plain binary search.
struct BlockIndex {
    starts: Vec<u64>,
    ends: Vec<u64>,
    sizes: Vec<u64>,
    lo: u64,
    hi: u64,
    regions: Vec<Region4G>,
    buckets: Vec<u32>,
}

/// One 4 GiB region of the address space that holds blocks.
struct Region4G {
    /// `address >> 32` of the region.
    key: u64,
    /// Lowest block start in the region.
    lo: u64,
    /// log2 of the bucket size.
    shift: u32,
    /// Where this region's buckets start in `BlockIndex::buckets`.
    first_bucket: usize,
    /// Number of buckets.
    len: usize,
    /// Index of the region's first block (the answer before its first bucket).
    first_block: usize,
}

impl BlockIndex {
    fn new(live: &LiveBlocks) -> BlockIndex {
        let mut v: Vec<(u64, u64)> = live.blocks.iter().map(|(&a, &s)| (a, s)).collect();
        v.sort_unstable();
        let starts: Vec<u64> = v.iter().map(|b| b.0).collect();
        let ends: Vec<u64> = v.iter().map(|b| b.0.saturating_add(b.1.max(1))).collect();
        let sizes: Vec<u64> = v.iter().map(|b| b.1).collect();
        let lo = starts.first().copied().unwrap_or(u64::MAX);
        let hi = ends.iter().copied().max().unwrap_or(0);
        let mut regions = Vec::new();
        let mut buckets: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < starts.len() {
            let key = starts[i] >> 32;
            let j = starts[i..].partition_point(|&s| s >> 32 == key) + i;
            let (rlo, rhi) = (starts[i], starts[j - 1] + 1);
            let want = ((j - i) as u64).max(1);
            let span = rhi - rlo;
            let shift = (64 - (span / want).max(1).leading_zeros()).max(4);
            let len = (span >> shift) as usize + 1;
            let first_bucket = buckets.len();
            let mut k = i;
            for b in 0..=len {
                let at = rlo + ((b as u64) << shift);
                while k < j && starts[k] < at {
                    k += 1;
                }
                buckets.push(k as u32);
            }
            regions.push(Region4G {
                key,
                lo: rlo,
                shift,
                first_bucket,
                len,
                first_block: i,
            });
            i = j;
        }
        BlockIndex {
            starts,
            ends,
            sizes,
            lo,
            hi,
            regions,
            buckets,
        }
    }

    /// Index of the last block starting at or before `v` (`v` in [lo, hi)).
    #[inline]
    fn last_start_at_or_before(&self, v: u64) -> Option<usize> {
        let key = v >> 32;
        let r = self
            .regions
            .partition_point(|r| r.key <= key)
            .checked_sub(1)?;
        let region = &self.regions[r];
        if key != region.key || v < region.lo {
            // Before this region's first block (or in a region with none): the last
            // block of the regions before it.
            let first = if key != region.key {
                region.first_block + self.region_len(r)
            } else {
                region.first_block
            };
            return first.checked_sub(1);
        }
        let b = (((v - region.lo) >> region.shift) as usize).min(region.len);
        let from = self.buckets[region.first_bucket + b] as usize;
        let to = self.buckets[region.first_bucket + (b + 1).min(region.len)] as usize;
        let to = to.max(from);
        let i = from + self.starts[from..to].partition_point(|&s| s <= v);
        i.checked_sub(1)
    }

    fn region_len(&self, r: usize) -> usize {
        let next = self
            .regions
            .get(r + 1)
            .map(|n| n.first_block)
            .unwrap_or(self.starts.len());
        next - self.regions[r].first_block
    }

    #[inline]
    fn contains(&self, v: u64) -> bool {
        if v < self.lo || v >= self.hi {
            return false;
        }
        self.last_start_at_or_before(v)
            .is_some_and(|i| v < self.ends[i])
    }

    /// The start and size of the block containing `v`, if any.
    #[inline]
    fn block_of(&self, v: u64) -> Option<(u64, u64)> {
        if v < self.lo || v >= self.hi {
            return None;
        }
        let i = self.last_start_at_or_before(v)?;
        (v < self.ends[i]).then(|| (self.starts[i], self.sizes[i]))
    }

    /// Appends the pointers found in `bytes` (which start at an 8-aligned address).
    fn scan(&self, bytes: &[u8], base_offset: u64, out: &mut Vec<Pointer>) {
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            if self.contains(v) {
                out.push(Pointer {
                    offset: base_offset + i as u64 * 8,
                    target: v,
                });
            }
        }
    }
}

/// A thread of the process at the snapshot, with its registers when it is stopped.
pub struct ThreadState {
    /// The thread.
    pub tid: Tid,
    /// Its registers (None if it could not be stopped).
    pub regs: Option<Regs>,
    /// Whether this is the thread whose exit triggered the snapshot: its registers are
    /// not roots (memcheck's rule: the exiting thread's registers are dead).
    pub exiting: bool,
}

/// What a snapshot covered.
#[derive(Clone, Copy, Debug, Default)]
pub struct SnapshotStats {
    /// Live blocks.
    pub blocks: u64,
    /// Bytes of memory read and scanned.
    pub scanned_bytes: u64,
    /// Pointer words written.
    pub pointers: u64,
}

struct Region {
    kind: RootKind,
    range: Range<u64>,
}

/// What the tracer knows about a process's memory besides its threads and live blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SnapshotContext<'a> {
    /// Ranges that belong to the recorder (the probe area): never scanned.
    pub exclude: &'a [Range<u64>],
    /// Paths of the modules that define the hooked `malloc`.
    pub allocator_modules: &'a [String],
    /// Final stack pointers of threads that exited.
    pub dead_stacks: &'a [u64],
}

/// Takes the snapshot of `pid` and appends its records to `out`.
///
/// In `ctx`, `exclude` lists ranges that belong to the recorder (the probe area), and
/// `dead_stacks` are the stack pointers of threads at their exit: glibc keeps their
/// stacks mapped for reuse, with stale pointers below that point. Like memcheck, only the
/// part from the final stack pointer up (the exit path's frames, the thread descriptor
/// and its TLS) is a root; the rest of such a mapping is not.
///
/// `allocator_modules` are the paths of the modules that define the hooked `malloc`
/// (libc, or a static executable): their writable data holds glibc's arena, whose
/// pointers to chunk boundaries are the allocator's bookkeeping, not the program's (see
/// [`is_glibc_chunk_boundary`]).
pub fn take(
    pid: Tid,
    ts: u64,
    threads: &[ThreadState],
    live: &LiveBlocks,
    ctx: &SnapshotContext<'_>,
    out: &mut Vec<Record>,
) -> io::Result<SnapshotStats> {
    let SnapshotContext {
        exclude,
        allocator_modules,
        dead_stacks,
    } = *ctx;
    let index = BlockIndex::new(live);
    let mut stats = SnapshotStats {
        blocks: live.len() as u64,
        ..Default::default()
    };
    out.push(Record::SnapshotBegin {
        ts,
        pid: pid as u32,
    });
    // Registers of the other threads.
    for t in threads {
        let (Some(r), false) = (&t.regs, t.exiting) else {
            continue;
        };
        let values = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15,
        ];
        let pointers: Vec<Pointer> = values
            .iter()
            .enumerate()
            .filter(|(_, &v)| index.contains(v))
            .map(|(i, &v)| Pointer {
                offset: i as u64 * 8,
                target: v,
            })
            .collect();
        stats.pointers += pointers.len() as u64;
        out.push(Record::SnapshotRoot(Box::new(
            heaptape_format::SnapshotRoot {
                pid: pid as u32,
                kind: RootKind::Registers { tid: t.tid as u32 },
                start: 0,
                len: values.len() as u64 * 8,
                pointers,
            },
        )));
    }
    // Root regions: live stacks, then writable memory that is neither heap nor ours.
    let maps = maps::read_maps(pid)?;
    let mut regions: Vec<Region> = Vec::new();
    let mut stack_maps: Vec<Range<u64>> = Vec::new();
    for t in threads {
        let Some(r) = &t.regs else { continue };
        let sp = r.rsp & !7;
        if let Some(m) = maps.iter().find(|m| m.contains(sp)) {
            stack_maps.push(m.range());
            regions.push(Region {
                kind: RootKind::Stack { tid: t.tid as u32 },
                range: sp..m.end,
            });
        }
    }
    for m in &maps {
        if !m.read || !m.write || is_special(m) {
            continue;
        }
        if stack_maps.iter().any(|s| s.start == m.start)
            || exclude.iter().any(|e| e.start < m.end && m.start < e.end)
        {
            continue;
        }
        if let Some(&sp) = dead_stacks.iter().filter(|&&sp| m.contains(sp)).min() {
            regions.push(Region {
                kind: RootKind::Anonymous,
                range: (sp & !7)..m.end,
            });
            continue;
        }
        let kind = if m.is_file_backed() {
            RootKind::ModuleData {
                path: m.path_without_deleted().to_string(),
            }
        } else {
            RootKind::Anonymous
        };
        // Pages that ever held a heap block are not roots (only live blocks are scanned).
        let mut run_start: Option<u64> = None;
        let mut page = m.start;
        while page <= m.end {
            let heap = page < m.end && live.heap_pages.contains(&(page / PAGE));
            let end_of_run = page == m.end || heap;
            match (run_start, end_of_run) {
                (None, false) => run_start = Some(page),
                (Some(s), true) => {
                    regions.push(Region {
                        kind: kind.clone(),
                        range: s..page,
                    });
                    run_start = None;
                }
                _ => {}
            }
            page += PAGE;
        }
    }
    // Scan the roots.
    let mut buf = Vec::new();
    for region in &regions {
        scan_range(
            pid,
            &region.range,
            &index,
            &mut buf,
            &mut stats,
            |mut pointers| {
                if let RootKind::ModuleData { path } = &region.kind {
                    if allocator_modules.iter().any(|m| m == path) {
                        pointers.retain(|p| {
                            !index.block_of(p.target).is_some_and(|(start, size)| {
                                is_glibc_chunk_boundary(start, size, p.target)
                            })
                        });
                    }
                }
                out.push(Record::SnapshotRoot(Box::new(
                    heaptape_format::SnapshotRoot {
                        pid: pid as u32,
                        kind: region.kind.clone(),
                        start: region.range.start,
                        len: region.range.end - region.range.start,
                        pointers,
                    },
                )));
            },
        )?;
    }
    // Scan the live blocks, many per system call.
    let mut blocks: Vec<(u64, u64)> = live.blocks.iter().map(|(&a, &s)| (a, s)).collect();
    blocks.sort_unstable();
    let mut i = 0;
    let mut ptrs = Vec::new();
    while i < blocks.len() {
        let mut ranges = Vec::new();
        let mut total = 0usize;
        while i < blocks.len() && (ranges.is_empty() || total + blocks[i].1 as usize <= BATCH_BYTES)
        {
            let (addr, size) = blocks[i];
            let len = (size & !7) as usize;
            if len > 0 && size <= (1 << 40) {
                ranges.push((addr, len));
                total += len;
            }
            i += 1;
            if total >= BATCH_BYTES {
                break;
            }
        }
        if ranges.is_empty() {
            continue;
        }
        if buf.len() < total {
            buf.resize(total, 0);
        }
        let got = read_all(pid, &ranges, &mut buf[..total]);
        stats.scanned_bytes += got as u64;
        let mut off = 0;
        for &(addr, len) in &ranges {
            ptrs.clear();
            index.scan(&buf[off..off + len], 0, &mut ptrs);
            off += len;
            if ptrs.is_empty() {
                continue;
            }
            stats.pointers += ptrs.len() as u64;
            for part in ptrs.chunks(POINTERS_PER_RECORD) {
                out.push(Record::SnapshotBlock {
                    pid: pid as u32,
                    address: addr,
                    pointers: part.to_vec(),
                });
            }
        }
    }
    heuristics(pid, &index, &maps, out);
    out.push(Record::SnapshotEnd {
        pid: pid as u32,
        blocks: stats.blocks,
        scanned_bytes: stats.scanned_bytes,
    });
    Ok(stats)
}

/// Whether `target` is where glibc's malloc puts the header of the chunk that follows
/// the block at `start` of `size` bytes. glibc lets a block's last 8 bytes overlap the
/// next chunk's header, so for sizes of 1 to 8 bytes mod 16 that header lies inside the
/// block: the arena's `top` and bin pointers (in libc's data) then look like interior
/// pointers to the block, which memcheck, having replaced the allocator, never sees.
pub fn is_glibc_chunk_boundary(start: u64, size: u64, target: u64) -> bool {
    // x86_64: chunk = max(32, round_up(size + 8, 16)); the user pointer is 16 bytes in.
    let chunk = (size.saturating_add(8 + 15) & !15).max(32);
    target == start.wrapping_add(chunk - 16) && target < start.saturating_add(size)
}

/// Heuristic bits, in memcheck's order.
const STDSTRING: u8 = 1;
const LENGTH64: u8 = 2;
const NEWARRAY: u8 = 4;
const MULTIPLE_INHERITANCE: u8 = 8;

/// Evaluates memcheck's interior-pointer heuristics for every distinct (block, offset)
/// that an interior pointer of this snapshot targets, and appends a
/// [`Record::SnapshotHeuristic`] for each match. Only the verdicts go into the trace; the
/// words they are computed from stay in the process.
fn heuristics(pid: Tid, index: &BlockIndex, maps: &[MapEntry], out: &mut Vec<Record>) {
    let mut targets: Vec<(u64, u64, u64)> = Vec::new(); // (block, size, offset)
    {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        for rec in out.iter() {
            let pointers = match rec {
                Record::SnapshotRoot(root) => &root.pointers,
                Record::SnapshotBlock { pointers, .. } => pointers,
                _ => continue,
            };
            for p in pointers {
                if let Some((start, size)) = index.block_of(p.target) {
                    let off = p.target - start;
                    if off != 0 && seen.insert((start, off)) {
                        targets.push((start, size, off));
                    }
                }
            }
        }
    }
    if targets.is_empty() {
        return;
    }
    // Read each block's first two words and the word at the target (when aligned).
    let mut ranges = Vec::with_capacity(targets.len() * 2);
    for &(start, size, off) in &targets {
        ranges.push((start, 16.min(size as usize & !7)));
        if off % 8 == 0 && off + 8 <= size {
            ranges.push((start + off, 8));
        } else {
            ranges.push((start, 0));
        }
    }
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut buf = vec![0u8; total];
    let nonempty: Vec<(u64, usize)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
    read_all(pid, &nonempty, &mut buf);
    let mut vtables: HashMap<u64, bool> = HashMap::new();
    let mut off_in_buf = 0;
    for (i, &(start, size, off)) in targets.iter().enumerate() {
        let head_len = ranges[2 * i].1;
        let word_len = ranges[2 * i + 1].1;
        let word = |k: usize| -> Option<u64> {
            if k * 8 + 8 > head_len {
                return None;
            }
            let b = buf.get(off_in_buf + k * 8..off_in_buf + k * 8 + 8)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        let (w0, w1) = (word(0), word(1));
        let at_target = (word_len == 8).then(|| {
            let b = &buf[off_in_buf + head_len..off_in_buf + head_len + 8];
            u64::from_le_bytes(b.try_into().expect("8 bytes"))
        });
        off_in_buf += head_len + word_len;
        let mut matched = 0u8;
        if let (24, Some(len), Some(cap)) = (off, w0, w1) {
            if len <= cap && cap.checked_add(25) == Some(size) {
                matched |= STDSTRING;
            }
        }
        if let (8, Some(n)) = (off, w0) {
            if n > 0 && n == size - 8 {
                matched |= LENGTH64;
            }
            if n > 0 && (size - 8) % n == 0 {
                matched |= NEWARRAY;
            }
        }
        if let (Some(inner), Some(first)) = (at_target, w0) {
            if is_vtable(pid, inner, maps, &mut vtables)
                && is_vtable(pid, first, maps, &mut vtables)
            {
                matched |= MULTIPLE_INHERITANCE;
            }
        }
        if matched != 0 {
            out.push(Record::SnapshotHeuristic {
                pid: pid as u32,
                address: start,
                offset: off,
                matched,
            });
        }
    }
}

/// memcheck's vtable test: the address lies in a readable file-backed mapping and at
/// least 2 of the first 20 words there point into executable file-backed mappings.
fn is_vtable(pid: Tid, addr: u64, maps: &[MapEntry], cache: &mut HashMap<u64, bool>) -> bool {
    if addr % 8 != 0 || addr < PAGE {
        return false;
    }
    if let Some(&v) = cache.get(&addr) {
        return v;
    }
    let file_map = |a: u64, exec: bool| {
        maps.iter()
            .any(|m| m.contains(a) && m.read && m.is_file_backed() && (!exec || m.exec))
    };
    let mut verdict = false;
    if file_map(addr, false) {
        let mut words = [0u8; 160];
        let n = sys::read_memory(pid, addr, &mut words).unwrap_or(0);
        let code = words[..n & !7]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .filter(|&w| w != 0 && file_map(w, true))
            .count();
        verdict = code >= 2;
    }
    cache.insert(addr, verdict);
    verdict
}

/// Mappings that are never roots: kernel pseudo-mappings and the recorder's probe.
fn is_special(m: &MapEntry) -> bool {
    matches!(m.path.as_str(), "[vvar]" | "[vsyscall]" | "[vdso]")
        || m.path.starts_with("/memfd:heaptape")
}

/// Reads `ranges` into `buf`; unreadable parts stay zero. Returns the bytes read.
fn read_all(pid: Tid, ranges: &[(u64, usize)], buf: &mut [u8]) -> usize {
    buf.fill(0);
    match sys::read_memory_vectored(pid, ranges, buf) {
        Ok(n) if n == buf.len() => n,
        _ => {
            // Some range is unreadable: go one by one.
            let mut off = 0;
            let mut got = 0;
            for &(addr, len) in ranges {
                got += sys::read_memory(pid, addr, &mut buf[off..off + len]).unwrap_or(0);
                off += len;
            }
            got
        }
    }
}

fn scan_range(
    pid: Tid,
    range: &Range<u64>,
    index: &BlockIndex,
    buf: &mut Vec<u8>,
    stats: &mut SnapshotStats,
    mut emit: impl FnMut(Vec<Pointer>),
) -> io::Result<()> {
    let mut pointers = Vec::new();
    let mut addr = range.start & !7;
    while addr < range.end {
        let len = ((range.end - addr) as usize).min(BATCH_BYTES);
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let got = read_all(pid, &[(addr, len)], &mut buf[..len]);
        stats.scanned_bytes += got as u64;
        index.scan(&buf[..len & !7], addr - range.start, &mut pointers);
        addr += len as u64;
    }
    stats.pointers += pointers.len() as u64;
    if pointers.is_empty() {
        emit(Vec::new());
        return Ok(());
    }
    for part in pointers.chunks(POINTERS_PER_RECORD) {
        emit(part.to_vec());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_words_inside_blocks_only() {
        let mut live = LiveBlocks::default();
        live.alloc(0x1000, 16);
        live.alloc(0x2000, 0);
        live.alloc(0x3000, 32);
        live.free(0x3000);
        let idx = BlockIndex::new(&live);
        assert!(idx.contains(0x1000) && idx.contains(0x100f));
        assert!(!idx.contains(0x1010) && !idx.contains(0xfff));
        assert!(idx.contains(0x2000) && !idx.contains(0x2001));
        assert!(!idx.contains(0x3000));
        let mut bytes = Vec::new();
        for w in [0x1008u64, 7, 0x2000, 0x3000] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        let mut out = Vec::new();
        idx.scan(&bytes, 64, &mut out);
        assert_eq!(
            out,
            vec![
                Pointer {
                    offset: 64,
                    target: 0x1008
                },
                Pointer {
                    offset: 80,
                    target: 0x2000
                }
            ]
        );
    }

    #[test]
    fn bucketed_lookup_agrees_with_a_linear_search() {
        // Deterministic pseudo-random layouts: clustered, sparse, zero-sized blocks.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20 {
            let mut live = LiveBlocks::default();
            // Odd rounds spread blocks over several 4 GiB regions, far apart (heap and
            // mmap'd blocks).
            let mut addr = 0x5555_0000_0000u64 + round * 0x1000;
            let far = round % 2 == 1;
            let mut blocks = Vec::new();
            for _ in 0..(50 + round * 40) {
                addr += (16 + (next() % if round % 3 == 0 { 1 << 20 } else { 256 })) & !15;
                let size = if next() % 7 == 0 { 0 } else { 1 + next() % 200 };
                live.alloc(addr, size);
                blocks.push((addr, addr + size.max(1)));
                addr += size;
                if far && next() % 10 == 0 {
                    addr += 0x1_0000_0000 * (1 + next() % 0x2000);
                }
            }
            let idx = BlockIndex::new(&live);
            for _ in 0..2000 {
                let (s, e) = blocks[(next() % blocks.len() as u64) as usize];
                for v in [s, e - 1, e, s.wrapping_sub(1), s + next() % 300] {
                    let expect = blocks.iter().any(|&(a, b)| a <= v && v < b);
                    assert_eq!(idx.contains(v), expect, "round {round} value {v:#x}");
                }
            }
        }
    }

    #[test]
    fn glibc_chunk_boundaries_inside_blocks() {
        // 24-byte block: 32-byte chunk; the next chunk starts 16 bytes in, inside.
        assert!(is_glibc_chunk_boundary(0x1010, 24, 0x1020));
        // 40 bytes: 48-byte chunk, next header 32 bytes in (inside: 32 < 40).
        assert!(is_glibc_chunk_boundary(0x1010, 40, 0x1030));
        // 32 bytes: 48-byte chunk; the boundary (+32) is past the block.
        assert!(!is_glibc_chunk_boundary(0x1010, 32, 0x1030));
        // Other interior offsets are never boundaries.
        assert!(!is_glibc_chunk_boundary(0x1010, 24, 0x1018));
    }

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
