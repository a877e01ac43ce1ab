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

mod heuristics;
mod live;

pub(crate) use live::LiveBlocks;

use std::io;
use std::ops::Range;

use heaptape_format::heuristics::BlockIndex;
use heaptape_format::{Pointer, Record, RootKind};

use crate::procfs::maps::{self, MapEntry};
use crate::sys::{self, Regs, Tid};

/// Pointers per record at most (keeps every record far below the format's size limit).
const POINTERS_PER_RECORD: usize = 1 << 18;
/// Bytes read per batch of process_vm_readv.
const BATCH_BYTES: usize = 16 << 20;
/// Page size.
const PAGE: u64 = 4096;

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
    } = *ctx;
    let index = BlockIndex::new(live.blocks.iter().map(|(&a, &s)| (a, s)).collect());
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
            let from = t
                .live_from
                .filter(|&f| f >= sp && f < m.end)
                .map_or(sp, |f| f & !7);
            stack_maps.push(m.range());
            regions.push(Region {
                kind: RootKind::Stack { tid: t.tid as u32 },
                range: from..m.end,
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

/// Mappings that are never roots: kernel pseudo-mappings and the recorder's probe.
fn is_special(m: &MapEntry) -> bool {
    matches!(m.path.as_str(), "[vvar]" | "[vsyscall]" | "[vdso]")
        || m.path.starts_with("/memfd:heaptape")
}

/// Reads `ranges` into `buf`; unreadable parts stay zero. Returns the bytes read.
pub(super) fn read_all(pid: Tid, ranges: &[(u64, usize)], buf: &mut [u8]) -> usize {
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
