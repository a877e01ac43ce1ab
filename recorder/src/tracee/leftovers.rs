//! What an attached session leaves in a process, and taking it away once nothing uses it.
//!
//! A detach removes every breakpoint and `jmp` patch, but the probe memory (the memfd
//! mapping: return shims, thread areas, rings) and the trampoline pages near each module
//! can still be in use: a thread stopped inside a hooked function returns through a
//! trampoline or a shim and then writes its ring entry or return cell. Unmapping them
//! under such a thread would crash the program, so they are removed only when no
//! thread can be inside them ([`removable`]): at the detach itself when possible, or else
//! at the next attach (which recognises an earlier session's mappings: the probe by
//! its memfd name, trampoline pages by [`TRAMPOLINE_MAGIC`] at their start). Either way
//! a process attached to any number of times keeps at most one session's mappings.
//!
//! "Cannot be inside" is decided with every thread of the address space stopped:
//! - no thread's instruction pointer lies in the code ([`Ours::code`]);
//! - no word of any thread's stack, from its stack pointer to the end of that mapping,
//!   points into the code (a return address into a trampoline or shim, a signal frame's
//!   saved instruction pointer);
//! - no thread area of the probe (ring or stop path) has a hooked call in flight (its
//!   level word), which also covers a thread interrupted in a hooked call by a signal
//!   whose handler runs on an alternate stack.

use std::ops::Range;

use super::probe::{self, AREAS, AREAS_OFF, AREA_BYTES, A_LEVEL, RING_OFF, TOTAL_LEN};
use super::ring::{self, RingLayout};
use crate::procfs::maps::{self, MapEntry};
use crate::sys::{self, ProcMem, Tid};

/// The first bytes of every trampoline page: how a later session recognises one. The
/// address of the probe memory its trampolines use follows (8 bytes), then the code,
/// from [`TRAMPOLINE_HEADER`] on.
pub(crate) const TRAMPOLINE_MAGIC: [u8; 16] = *b"heaptape-tramps\0";
/// Bytes at the start of a trampoline page before its first trampoline.
pub(crate) const TRAMPOLINE_HEADER: u64 = 32;

/// The header of a trampoline page whose trampolines use the probe at `probe`.
pub(crate) fn trampoline_header(probe: u64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..16].copy_from_slice(&TRAMPOLINE_MAGIC);
    h[16..].copy_from_slice(&probe.to_le_bytes());
    h
}

/// The name the probe's memfd shows in `/proc/PID/maps`.
const PROBE_NAME: &str = "/memfd:heaptape-probe";
/// The name of a fork child's own rings (`inject::install_rings`).
const RINGS_NAME: &str = "/memfd:heaptape-rings";

/// The recorder's mappings in one address space.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Ours {
    /// Probe memory: where each one starts (its code part; `TOTAL_LEN` bytes each).
    pub(crate) probes: Vec<u64>,
    /// Trampoline pages, with the probe memory their trampolines use.
    pub(crate) trampolines: Vec<(Range<u64>, u64)>,
}

impl Ours {
    /// Whether there is nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.probes.is_empty() && self.trampolines.is_empty()
    }

    /// Ranges holding code a thread can execute or return into.
    fn code(&self) -> Vec<Range<u64>> {
        self.probes
            .iter()
            .map(|&b| b..b + probe::CODE_LEN as u64)
            .chain(self.trampolines.iter().map(|(r, _)| r.clone()))
            .collect()
    }

    /// Every range to unmap.
    fn ranges(&self) -> Vec<Range<u64>> {
        self.probes
            .iter()
            .map(|&b| b..b + TOTAL_LEN as u64)
            .chain(self.trampolines.iter().map(|(r, _)| r.clone()))
            .collect()
    }
}

/// The recorder's mappings (this session's and earlier ones') in the address space of
/// `threads` (every thread of it, all stopped) that none of them can be inside: see the
/// module doc. Reads the maps once.
pub(crate) fn removable(threads: &[Tid], mem: &ProcMem) -> Ours {
    let Some(maps) = threads.first().and_then(|&t| maps::read_maps(t).ok()) else {
        return Ours::default();
    };
    let ours = find_in(&maps, mem);
    if ours.is_empty() {
        return ours;
    }
    not_in_use(threads, mem, &maps, &ours)
}

/// Probe memory of this build's layout and trampoline pages, in `maps` (and memory).
fn find_in(maps: &[MapEntry], mem: &ProcMem) -> Ours {
    let mut ours = Ours::default();
    for (i, m) in maps.iter().enumerate() {
        if m.path_without_deleted() == PROBE_NAME
            && m.offset == 0
            && m.exec
            && !m.write
            && m.len() == probe::CODE_LEN as u64
        {
            // The code part, then the data part of the same memfd (in a fork child, with
            // its own rings mapped over the ring region): together the layout this build
            // makes, contiguous (another layout is left alone).
            let end = m.start + TOTAL_LEN as u64;
            let mut at = m.end;
            for d in &maps[i + 1..] {
                let name = d.path_without_deleted();
                if at >= end || d.start != at || (name != PROBE_NAME && name != RINGS_NAME) {
                    break;
                }
                at = d.end;
            }
            if at == end {
                ours.probes.push(m.start);
            }
        } else if m.path.is_empty() && m.exec && !m.write && !m.shared {
            ours.trampolines.extend(trampoline_blocks(m, mem));
        }
    }
    ours
}

/// The trampoline blocks in anonymous executable mapping `m`: each starts with a page
/// holding [`TRAMPOLINE_MAGIC`] and runs to the next one or the mapping's end (the
/// kernel merges adjacent pages of several blocks, several sessions' even, into one
/// mapping). A large mapping not starting with one (a JIT's code) is not read through.
fn trampoline_blocks(m: &MapEntry, mem: &ProcMem) -> Vec<(Range<u64>, u64)> {
    let header = |page: u64| {
        let mut h = [0u8; 24];
        (mem.read(page, &mut h).is_ok() && h[..16] == TRAMPOLINE_MAGIC)
            .then(|| u64::from_le_bytes(h[16..].try_into().expect("8 bytes")))
    };
    if header(m.start).is_none() && m.len() > 4 << 20 {
        return Vec::new();
    }
    let mut blocks: Vec<(Range<u64>, u64)> = Vec::new();
    for page in (m.start..m.end).step_by(4096) {
        if let Some(probe) = header(page) {
            if let Some(last) = blocks.last_mut() {
                last.0.end = page;
            }
            blocks.push((page..m.end, probe));
        }
    }
    blocks
}

/// The part of `ours` that none of `threads` can be inside, each mapping judged on its
/// own: a thread inside a trampoline page keeps that page, and its session's probe
/// memory, where its area's level word is set. When in doubt (a thread's registers or
/// stack cannot be read), nothing is.
fn not_in_use(threads: &[Tid], mem: &ProcMem, maps: &[MapEntry], ours: &Ours) -> Ours {
    let code = ours.code();
    let mut used = vec![false; code.len()];
    let mut mark = |addr: u64| {
        if let Some(i) = code.iter().position(|r| r.contains(&addr)) {
            used[i] = true;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    for &tid in threads {
        let Ok(regs) = sys::get_regs(tid) else {
            return Ours::default();
        };
        mark(regs.rip);
        let Some(stack) = maps.iter().find(|m| m.contains(regs.rsp)) else {
            return Ours::default();
        };
        if scan_stack(mem, regs.rsp & !7, stack.end, &mut buf, &mut mark).is_none() {
            return Ours::default();
        }
    }
    let (probes, trampolines) = used.split_at(ours.probes.len());
    // A thread inside a trampoline page (even before its call is in flight, while it
    // looks its ring up) needs the probe memory the page's trampolines use.
    let needed: Vec<u64> = ours
        .trampolines
        .iter()
        .zip(trampolines)
        .filter(|&(_, &used)| used)
        .map(|((_, probe), _)| *probe)
        .collect();
    Ours {
        probes: ours
            .probes
            .iter()
            .zip(probes)
            .filter(|&(&base, &used)| {
                !used && !needed.contains(&base) && !calls_in_flight(mem, base)
            })
            .map(|(&base, _)| base)
            .collect(),
        trampolines: ours
            .trampolines
            .iter()
            .zip(trampolines)
            .filter(|&(_, &used)| !used)
            .map(|(t, _)| t.clone())
            .collect(),
    }
}

/// Hands every word in `[from, to)` to `each`, read through `buf` (None: the stack is
/// unreadable).
fn scan_stack(
    mem: &ProcMem,
    from: u64,
    to: u64,
    buf: &mut [u8],
    each: &mut impl FnMut(u64),
) -> Option<()> {
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        mem.read(at, &mut buf[..n]).ok()?;
        for w in buf[..n].chunks_exact(8) {
            each(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        at += n as u64;
    }
    Some(())
}

/// Whether a thread area of the probe at `base` has a hooked call in flight (a ring
/// area or a stop-path area with its level word set). Unreadable counts as in flight.
fn calls_in_flight(mem: &ProcMem, base: u64) -> bool {
    let layout = RingLayout::default();
    let ring_base = base + RING_OFF as u64;
    let ring_levels =
        (0..layout.areas).map(|a| ring_base + layout.area_off(a) as u64 + ring::H_LEVEL as u64);
    let stop_levels =
        (0..AREAS).map(|a| base + (AREAS_OFF + a as usize * AREA_BYTES + A_LEVEL) as u64);
    ring_levels.chain(stop_levels).any(|addr| {
        let mut w = [0u8; 4];
        mem.read(addr, &mut w).is_err() || u32::from_le_bytes(w) != 0
    })
}

/// Unmaps `ours` from the address space of `tid` (stopped, and every other thread of
/// it too), running `munmap` in `tid` from a stub at its instruction pointer. Signals
/// that arrive meanwhile go to `held`. Returns how many ranges were unmapped.
pub(crate) fn remove(tid: Tid, mem: &ProcMem, ours: &Ours, held: &mut Vec<i32>) -> usize {
    ours.ranges()
        .into_iter()
        .filter(|r| {
            super::inject::syscall_at_pc(
                tid,
                mem,
                libc::SYS_munmap,
                [r.start, r.end - r.start, 0, 0, 0, 0],
                held,
            )
            .is_ok()
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_recognised_by_name_layout_and_size() {
        let code = probe::CODE_LEN as u64;
        let base = 0x7f00_0000_0000u64;
        let text = format!(
            "{:x}-{:x} r-xs 00000000 00:01 42 /memfd:heaptape-probe (deleted)\n\
             {:x}-{:x} rw-s {:08x} 00:01 42 /memfd:heaptape-probe (deleted)\n\
             7f10-7f20 r-xs 00000000 00:01 43 /memfd:heaptape-probe (deleted)\n",
            base,
            base + code,
            base + code,
            base + TOTAL_LEN as u64,
            code
        );
        let maps = maps::parse_maps(&text);
        let mem = ProcMem::open(std::process::id() as Tid).unwrap();
        let ours = find_in(&maps, &mem);
        // The lone code part (another layout) is not taken.
        assert_eq!(ours.probes, vec![base]);
        assert!(ours.trampolines.is_empty());
        // A fork child's: its own rings split the data part.
        let rings = base + probe::RING_OFF as u64;
        let text = format!(
            "{:x}-{:x} r-xs 00000000 00:01 42 /memfd:heaptape-probe (deleted)\n\
             {:x}-{:x} rw-s {:08x} 00:01 42 /memfd:heaptape-probe (deleted)\n\
             {:x}-{:x} rw-s 00000000 00:01 44 /memfd:heaptape-rings (deleted)\n",
            base,
            base + code,
            base + code,
            rings,
            code,
            rings,
            base + TOTAL_LEN as u64,
        );
        assert_eq!(find_in(&maps::parse_maps(&text), &mem).probes, vec![base]);
    }
}
