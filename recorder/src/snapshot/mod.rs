//! The reachability snapshot taken when a process exits (memory still intact, every
//! thread stopped).
//!
//! Leak classes (definitely / indirectly / possibly lost, still reachable) depend on who
//! points at a block when the program ends. That can only be seen while the process's
//! memory exists, i.e. at PTRACE_EVENT_EXIT, but the classification itself is analysis
//! and belongs offline. So the recorder stores just the pointer graph: for every root
//! region (registers, stacks, writable memory that is not heap, RELRO data) and every live block, the
//! aligned words whose values point into a live block. Never raw memory: a trace must not
//! carry the program's secrets, and the graph is far smaller than the heap.
//!
//! To know the live blocks, the recorder mirrors the allocator events it writes
//! ([`LiveBlocks`]), and it remembers every page that ever held a block, so freed heap
//! memory (with stale pointers in it) is never mistaken for a root.
//!
//! The allocator's own memory is neither a root nor a block: what it mapped for itself
//! (seen as the mmap calls it makes from inside its calls, or from its own code), the
//! brk heap when a replacement allocator (jemalloc, tcmalloc, mimalloc...) is in use,
//! and a replacement allocator's static data (`.data`, `.bss`), which owns only the
//! blocks its own code allocated. Their metadata and caches hold pointers to blocks
//! that are free, or were free once and are live again (jemalloc's extent records point
//! at each slab's first region, tcmalloc's central caches keep stale pointers to the
//! objects they handed out): as roots, they would keep lost blocks reachable.
//!
//! After an attach, blocks allocated before it are unknown and may lie anywhere between
//! the known ones: there, only the known blocks and the blocks freed since the attach
//! are left out of the roots (not whole pages), and only what the allocator mapped
//! since the attach is known to be its own.

mod heuristics;
mod live;
mod parallel;
mod ranges;

pub(crate) use live::LiveBlocks;
use ranges::RangeIndex;

use std::io;
use std::ops::Range;

use heaptape_format::heuristics::BlockIndex;
use heaptape_format::{Pointer, Record, RootKind};

use crate::procfs::maps::{self, MapEntry};
use crate::sys::{self, Regs, Tid};

/// Pointers per record at most (keeps every record far below the format's size limit).
const POINTERS_PER_RECORD: usize = 1 << 18;
/// Bytes read and scanned per piece of work (a part of a root region, a batch of
/// blocks).
const PIECE_BYTES: usize = 4 << 20;
/// Page size.
const PAGE: u64 = 4096;
/// Snapshots of fewer bytes are scanned on the recorder's thread alone.
const PARALLEL_BYTES: u64 = 8 << 20;
/// Blocks at most this far apart are read as one span (see [`BlockBatch`]).
const SPAN_GAP: u64 = 4096;

/// A thread of the process at the snapshot, with its registers when it is stopped.
pub struct ThreadState {
    /// The thread.
    pub tid: Tid,
    /// Its registers (None if it could not be stopped).
    pub regs: Option<Regs>,
    /// Whether this is the thread whose exit triggered the snapshot: its registers are
    /// not roots (memcheck's rule: the exiting thread's registers are dead).
    pub exiting: bool,
    /// Where its stack root starts when not at its stack pointer: for a thread inside
    /// `exit()`, the frame of `exit`'s caller (see `tracer::exit_frames`).
    pub live_from: Option<u64>,
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
    /// A replacement allocator's static data: only pointers to the blocks its own code
    /// allocated count.
    allocator_data: bool,
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
    /// Where the modules' `PT_GNU_RELRO` data lies: read-only once relocated, but
    /// roots all the same.
    pub relro: &'a [Range<u64>],
    /// The writable data (`.data` and `.bss`, their `PT_LOAD` segments' whole memory
    /// size) of the replacement allocators in use (shared libraries other than the C
    /// library that define the hooked `malloc`), with their paths.
    pub allocator_data: &'a [(String, Range<u64>)],
}

/// Takes the snapshot of `pid` and appends its records to `out`.
///
/// In `ctx`, `exclude` lists ranges that belong to the recorder (the probe area), and
/// `dead_stacks` are the stack pointers of threads at their exit: glibc keeps their
/// stacks mapped for reuse, with stale pointers below that point. Like memcheck, only the
/// part from the final stack pointer up (the exit path's frames, the thread descriptor
/// and its TLS) is a root; the rest of such a mapping is not.
///
/// `relro` are the modules' RELRO ranges: data the loader made read-only after
/// relocating it. Pointers stored there before that (a static executable's start-up
/// code keeps the loader's search paths and object-lookup table there) are roots like
/// the rest of a module's data, so the read-only mappings they cover are scanned too.
///
/// `allocator_modules` are the paths of the modules that define the hooked `malloc`
/// (libc, or a static executable): their writable data holds glibc's arena, whose
/// pointers to chunk boundaries are the allocator's bookkeeping, not the program's (see
/// [`is_glibc_chunk_boundary`]).
///
/// The allocator's own memory is not scanned (see the module doc): `live`'s allocator
/// mappings, the brk heap when `allocator_data` is not empty (a replacement allocator's
/// sbrk memory) and the mirror is complete, and in `allocator_data` only the pointers to
/// blocks the allocator's own code allocated count. When `live` is partial (an attach),
/// root words inside known blocks and blocks freed since the attach are left out instead
/// of the pages that held blocks.
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
        relro,
        allocator_data,
    } = *ctx;
    let index = BlockIndex::new(live.iter().collect());
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
    // Memory that is neither a root nor a block: what the allocator mapped for itself
    // and, with a replacement allocator (tcmalloc grows the brk heap) and a complete
    // mirror, the brk heap.
    let mut allocator_mem = live.allocator.clone();
    if !live.partial && !allocator_data.is_empty() {
        for m in maps.iter().filter(|m| m.path == "[heap]") {
            allocator_mem.insert(m.range());
        }
    }
    // After an attach: root words inside known blocks, or blocks freed since, are not
    // roots (the pages around them may hold blocks allocated before the attach).
    let stale = if live.partial {
        RangeIndex::new(
            live.freed
                .iter()
                .map(|(&a, &s)| (a, a.saturating_add(s.max(1))))
                .collect(),
        )
    } else {
        RangeIndex::default()
    };
    let mut regions: Vec<Region> = Vec::new();
    let mut stack_maps: Vec<Range<u64>> = Vec::new();
    for t in threads {
        let Some(r) = &t.regs else { continue };
        let sp = r.rsp & !7;
        if let Some(m) = maps.iter().find(|m| m.contains(sp)) {
            let from = t
                .live_from
                .filter(|&f| f >= sp && f < m.end)
                .map_or(sp, |f| f & !7);
            stack_maps.push(m.range());
            regions.push(Region {
                kind: RootKind::Stack { tid: t.tid as u32 },
                range: from..m.end,
                allocator_data: false,
            });
        }
    }
    for m in &maps {
        if m.read && !m.write && m.is_file_backed() && !is_special(m) {
            regions.extend(
                relro
                    .iter()
                    .filter(|r| r.start < m.end && m.start < r.end)
                    .map(|r| Region {
                        kind: RootKind::ModuleData {
                            path: m.path_without_deleted().to_string(),
                        },
                        range: r.start.max(m.start)..r.end.min(m.end),
                        allocator_data: false,
                    }),
            );
            continue;
        }
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
                allocator_data: false,
            });
            continue;
        }
        // The allocator's own mappings are not roots; a replacement allocator's data
        // is its own kind of root.
        for piece in allocator_mem.outside(m.range()) {
            for (part, data_of) in split_by(piece, allocator_data) {
                let kind = match data_of {
                    Some(path) => RootKind::ModuleData { path: path.clone() },
                    None if m.is_file_backed() => RootKind::ModuleData {
                        path: m.path_without_deleted().to_string(),
                    },
                    None => RootKind::Anonymous,
                };
                push_root_runs(&mut regions, kind, part, data_of.is_some(), live);
            }
        }
    }
    // Scan the roots and the live blocks in pieces, on every CPU (the process is
    // stopped), then write the records in the same order as one thread would.
    let batches = block_batches(live);
    let mut jobs: Vec<Job> = Vec::new();
    for (r, region) in regions.iter().enumerate() {
        let mut at = region.range.start & !7;
        loop {
            let end = region.range.end.min(at.saturating_add(PIECE_BYTES as u64));
            jobs.push(Job::Root {
                region: r,
                range: at..end,
            });
            if end >= region.range.end {
                break;
            }
            at = end;
        }
    }
    jobs.extend(batches.iter().map(Job::Blocks));
    let bytes: u64 = regions
        .iter()
        .map(|r| r.range.end - r.range.start)
        .sum::<u64>()
        + batches.iter().map(|b| b.total as u64).sum::<u64>();
    let parallel = bytes >= PARALLEL_BYTES;
    let scanned = parallel::map_with(&jobs, parallel, Vec::new, |buf, job| match job {
        Job::Root { region, range } => {
            let base = regions[*region].range.start;
            Scanned {
                region: Some(*region),
                ..scan_root_piece(pid, range, base, &index, buf)
            }
        }
        Job::Blocks(batch) => scan_blocks(pid, batch, &index, buf),
    });
    let mut pieces = scanned.into_iter().peekable();
    for (r, region) in regions.iter().enumerate() {
        let mut pointers = Vec::new();
        while let Some(piece) = pieces.next_if(|p| p.region == Some(r)) {
            stats.scanned_bytes += piece.scanned_bytes;
            pointers.extend(piece.pointers);
        }
        if let RootKind::ModuleData { path } = &region.kind {
            if allocator_modules.iter().any(|m| m == path) {
                pointers.retain(|p| {
                    !index
                        .block_of(p.target)
                        .is_some_and(|(start, size)| is_glibc_chunk_boundary(start, size, p.target))
                });
            }
        }
        if region.allocator_data {
            pointers.retain(|p| {
                index
                    .block_of(p.target)
                    .is_some_and(|(start, _)| live.own.contains(&start))
            });
        }
        if live.partial {
            let base = region.range.start;
            pointers.retain(|p| {
                let at = base.wrapping_add(p.offset);
                index.block_of(at).is_none() && !stale.contains(at)
            });
        }
        stats.pointers += pointers.len() as u64;
        let root = |pointers: Vec<Pointer>| {
            Record::SnapshotRoot(Box::new(heaptape_format::SnapshotRoot {
                pid: pid as u32,
                kind: region.kind.clone(),
                start: region.range.start,
                len: region.range.end - region.range.start,
                pointers,
            }))
        };
        if pointers.is_empty() {
            out.push(root(Vec::new()));
        }
        out.extend(
            pointers
                .chunks(POINTERS_PER_RECORD)
                .map(|p| root(p.to_vec())),
        );
    }
    for piece in pieces {
        stats.scanned_bytes += piece.scanned_bytes;
        for (address, pointers) in piece.blocks {
            stats.pointers += pointers.len() as u64;
            out.extend(
                pointers
                    .chunks(POINTERS_PER_RECORD)
                    .map(|part| Record::SnapshotBlock {
                        pid: pid as u32,
                        address,
                        pointers: part.to_vec(),
                    }),
            );
        }
    }
    heuristics::evaluate_targets(pid, &index, &maps, out);
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

/// `range` cut at the allocator data ranges it crosses: each part with the path of the
/// allocator whose data it is, if any.
fn split_by(
    range: Range<u64>,
    data: &[(String, Range<u64>)],
) -> Vec<(Range<u64>, Option<&String>)> {
    let mut cuts: Vec<(Range<u64>, &String)> = data
        .iter()
        .filter(|(_, d)| d.start < range.end && range.start < d.end)
        .map(|(p, d)| (d.start.max(range.start)..d.end.min(range.end), p))
        .collect();
    if cuts.is_empty() {
        return vec![(range, None)];
    }
    cuts.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::new();
    let mut at = range.start;
    for (r, p) in cuts {
        if r.start < at {
            continue;
        }
        if r.start > at {
            out.push((at..r.start, None));
        }
        at = r.end;
        out.push((r, Some(p)));
    }
    if at < range.end {
        out.push((at..range.end, None));
    }
    out
}

/// Adds `range` as root regions of `kind`: whole when `live` is partial (root words
/// inside known or freed blocks are dropped after the scan), else without the pages
/// that ever held a heap block (only live blocks are scanned there).
fn push_root_runs(
    regions: &mut Vec<Region>,
    kind: RootKind,
    range: Range<u64>,
    allocator_data: bool,
    live: &LiveBlocks,
) {
    if range.start >= range.end {
        return;
    }
    if live.partial {
        regions.push(Region {
            kind,
            range,
            allocator_data,
        });
        return;
    }
    let mut run_start: Option<u64> = None;
    let mut at = range.start;
    while at <= range.end {
        let heap = at < range.end && live.heap_pages.contains(&(at / PAGE));
        let end_of_run = at == range.end || heap;
        match (run_start, end_of_run) {
            (None, false) => run_start = Some(at),
            (Some(s), true) => {
                regions.push(Region {
                    kind: kind.clone(),
                    range: s..at,
                    allocator_data,
                });
                run_start = None;
            }
            _ => {}
        }
        if at == range.end {
            break;
        }
        // The next page boundary (ranges need not start on one).
        at = ((at / PAGE) + 1).saturating_mul(PAGE).min(range.end);
    }
}

/// Mappings that are never roots: kernel pseudo-mappings and the recorder's probe.
fn is_special(m: &MapEntry) -> bool {
    matches!(m.path.as_str(), "[vvar]" | "[vsyscall]" | "[vdso]")
        || m.path.starts_with("/memfd:heaptape")
}

/// Reads `ranges` into `buf`; unreadable parts stay zero. Returns the bytes read.
pub(super) fn read_all(pid: Tid, ranges: &[(u64, usize)], buf: &mut [u8]) -> usize {
    match sys::read_memory_vectored(pid, ranges, buf) {
        Ok(n) if n == buf.len() => n,
        _ => {
            // Some range is unreadable: go one by one.
            buf.fill(0);
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

/// A piece of the snapshot's scanning work.
enum Job<'a> {
    /// Part of root region number `region`.
    Root { region: usize, range: Range<u64> },
    /// A batch of live blocks.
    Blocks(&'a BlockBatch),
}

/// What a [`Job`] found.
#[derive(Default)]
struct Scanned {
    /// The root region scanned (None for blocks).
    region: Option<usize>,
    /// Pointers found in a root piece, offsets from the region's start.
    pointers: Vec<Pointer>,
    /// Pointers found in each block of a batch that holds any.
    blocks: Vec<(u64, Vec<Pointer>)>,
    scanned_bytes: u64,
}

/// Live blocks read together: `spans` of memory (blocks less than [`SPAN_GAP`] apart
/// are one span, read with the allocator's headers and free chunks between them: one
/// large read costs far less than many small ones, as process_vm_readv pins the pages
/// of every range), each block at `offsets` in the bytes read.
struct BlockBatch {
    blocks: Vec<(u64, u64)>,
    spans: Vec<(u64, usize)>,
    offsets: Vec<usize>,
    total: usize,
}

/// The live blocks in address order, in batches of at most [`PIECE_BYTES`] (or one
/// larger block).
fn block_batches(live: &LiveBlocks) -> Vec<BlockBatch> {
    let mut blocks: Vec<(u64, u64)> = live
        .iter()
        .filter(|&(_, s)| s & !7 > 0 && s <= (1 << 40))
        .map(|(a, s)| (a, s & !7))
        .collect();
    blocks.sort_unstable();
    let mut batches = Vec::new();
    let mut rest = &blocks[..];
    while !rest.is_empty() {
        let mut spans: Vec<(u64, usize)> = Vec::new();
        let mut offsets = Vec::new();
        let mut total = 0usize;
        let mut taken = 0;
        for &(addr, len) in rest {
            let end = addr + len;
            match spans.last_mut() {
                Some((start, n)) if addr <= *start + *n as u64 + SPAN_GAP => {
                    let grown = (end.max(*start + *n as u64) - *start) as usize;
                    if total - *n + grown > PIECE_BYTES {
                        break;
                    }
                    offsets.push(total - *n + (addr - *start) as usize);
                    total += grown - *n;
                    *n = grown;
                }
                _ => {
                    if !spans.is_empty() && total + len as usize > PIECE_BYTES {
                        break;
                    }
                    spans.push((addr, len as usize));
                    offsets.push(total);
                    total += len as usize;
                }
            }
            taken += 1;
        }
        batches.push(BlockBatch {
            blocks: rest[..taken].to_vec(),
            spans,
            offsets,
            total,
        });
        rest = &rest[taken..];
    }
    batches
}

/// Reads and scans the blocks of `batch`.
fn scan_blocks(pid: Tid, batch: &BlockBatch, index: &BlockIndex, buf: &mut Vec<u8>) -> Scanned {
    let mut found = Scanned::default();
    if buf.len() < batch.total {
        buf.resize(batch.total, 0);
    }
    let buf = &mut buf[..batch.total];
    let whole = matches!(
        sys::read_memory_vectored(pid, &batch.spans, buf),
        Ok(n) if n == batch.total
    );
    if whole {
        found.scanned_bytes = batch.blocks.iter().map(|b| b.1).sum();
    } else {
        // Something between or inside the blocks is unreadable: block by block.
        buf.fill(0);
        for (&(addr, len), &off) in batch.blocks.iter().zip(&batch.offsets) {
            let got = sys::read_memory(pid, addr, &mut buf[off..off + len as usize]);
            found.scanned_bytes += got.unwrap_or(0) as u64;
        }
    }
    let mut ptrs = Vec::new();
    for (&(addr, len), &off) in batch.blocks.iter().zip(&batch.offsets) {
        index.scan(&buf[off..off + len as usize], 0, &mut ptrs);
        if !ptrs.is_empty() {
            found.blocks.push((addr, std::mem::take(&mut ptrs)));
        }
    }
    found
}

/// Reads and scans `range`, part of the root region starting at `base`.
fn scan_root_piece(
    pid: Tid,
    range: &Range<u64>,
    base: u64,
    index: &BlockIndex,
    buf: &mut Vec<u8>,
) -> Scanned {
    let len = (range.end - range.start) as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let got = read_all(pid, &[(range.start, len)], &mut buf[..len]);
    let mut found = Scanned {
        scanned_bytes: got as u64,
        ..Scanned::default()
    };
    index.scan(&buf[..len & !7], range.start - base, &mut found.pointers);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
