//! The ring event source: allocator calls that did not stop.
//!
//! In ring mode every `jmp`-hooked allocator function's entry jumps to a ring entry
//! trampoline ([`crate::tracee::ring`]), which writes one event per call into its
//! thread's ring in the probe memory and never stops. This file is the tracer's side:
//!
//! - a thread gets a ring at its first hooked call, which stops on the stop path (its
//!   thread pointer is not in the ring table yet): the tracer reads its thread pointer,
//!   registers it, and sends the thread back to the ring trampoline, so that call is
//!   recorded once, by the ring ([`Tracer::try_ring_redirect`]);
//! - the rings of every address space are drained between stops and before each stop is
//!   handled ([`Tracer::drain_rings`]): a [`Merger`] hands the events over in the
//!   allocator's order (sequence numbers), and each becomes a [`CallEvent`] for the
//!   [`crate::events`] pipeline, exactly like a stop's;
//! - a thread's ring is drained and released at its exit, and a process's rings are
//!   drained to the end before its snapshot, exec or detach.

use heaptape_format::{Record, StackId};

use super::model::Proc;
use super::Tracer;
use crate::addr_map::AddrMap;
use crate::events::unwind::{EntryRegs, StackUnwinder};
use crate::events::{realloc_moved, realloc_release, AllocCall, CallEvent, Pipeline};
use crate::hooks::catalogue::{CallKind, HookSpec};
use crate::hooks::patch::{Hook, HookKind};
use crate::procfs;
use crate::sys::{self, Tid};
use crate::tracee::ring::{Ordered, Part};
use crate::tracer::TracerStats;

/// Converts time stamp counter readings to trace time: calibrated against the monotonic
/// clock at the start and again as the recording goes on.
pub(super) struct TscClock {
    tsc0: u64,
    mono0: u64,
    ns_per_tick: f64,
    last_fit: u64,
    /// The latest trace time handed out (ring events never go back in time).
    last_ts: u64,
}

impl TscClock {
    /// A clock calibrated over 100 microseconds (0.1% with clock readings ~30 ns
    /// apart), refitted over the whole run as it goes ([`TscClock::refit`]): the first
    /// calibration spins while the program waits to start.
    pub(super) fn new() -> TscClock {
        let (tsc0, mono0) = paired_reading();
        while sys::monotonic_ns() < mono0 + 100_000 {}
        let (tsc1, mono1) = paired_reading();
        let ticks = tsc1.saturating_sub(tsc0).max(1);
        TscClock {
            tsc0,
            mono0,
            ns_per_tick: (mono1 - mono0) as f64 / ticks as f64,
            last_fit: mono1,
            last_ts: 0,
        }
    }

    /// Refits the rate over the whole time since the start (at most every 10 ms).
    fn refit(&mut self) {
        if sys::monotonic_ns() < self.last_fit + 10_000_000 {
            return;
        }
        let (tsc, mono) = paired_reading();
        let ticks = tsc.saturating_sub(self.tsc0);
        if ticks > 0 {
            self.ns_per_tick = (mono - self.mono0) as f64 / ticks as f64;
        }
        self.last_fit = mono;
    }

    /// Nanoseconds in `ticks` of the counter.
    fn ticks_ns(&self, ticks: u64) -> u64 {
        (ticks as f64 * self.ns_per_tick) as u64
    }

    /// Trace time (nanoseconds since `t0`) of counter reading `tsc`.
    fn trace_ns(&mut self, tsc: u64, t0: u64) -> u64 {
        let mono = self.mono0 as f64 + (tsc as f64 - self.tsc0 as f64) * self.ns_per_tick;
        let ts = (mono.max(0.0) as u64).saturating_sub(t0).max(self.last_ts);
        self.last_ts = ts;
        ts
    }
}

/// A reading of the time stamp counter and of the monotonic clock taken together: of a
/// few tries, the one whose two counter readings around the clock's are closest. A
/// thread preempted between the two reads would pair the clock with a counter reading
/// milliseconds away; on a busy machine that made the 100 us calibration 50 times off,
/// and once refitted, every later event was held at the time stamp of the earliest
/// ones (trace times never go back).
fn paired_reading() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..5 {
        let before = sys::tsc();
        let mono = sys::monotonic_ns();
        let width = sys::tsc().wrapping_sub(before);
        if width < best.0 {
            best = (width, before + width / 2, mono);
        }
    }
    (best.1, best.2)
}

/// What a drain found.
#[derive(Clone, Copy, Default)]
pub(super) struct Drained {
    /// Events handed over.
    pub(super) events: usize,
    /// How full the fullest ring was, in 1/1024 of its size.
    pub(super) fullest: u32,
}

impl Tracer {
    /// Drains the rings of every address space; with `flush`, also hands over the events
    /// held back for order (for the end: no thread can publish any more).
    pub(super) fn drain_rings(&mut self, flush: bool) -> Drained {
        self.stats.ring_passes += 1;
        (0..self.spaces.len())
            .map(|s| self.drain_space(s, flush))
            .fold(Drained::default(), |a, b| Drained {
                events: a.events + b.events,
                fullest: a.fullest.max(b.fullest),
            })
    }

    /// Drains the rings of address space `space_id` (see [`Tracer::drain_rings`]).
    pub(super) fn drain_space(&mut self, space_id: usize, flush: bool) -> Drained {
        let Some(space) = self.spaces.get_mut(space_id).and_then(|s| s.as_mut()) else {
            return Drained::default();
        };
        let Some(ring) = space.ring.as_mut() else {
            return Drained::default();
        };
        self.tsc.refit();
        let mut sink = Sink {
            tids: &ring.tids,
            moving: &mut ring.moving,
            hooks: &space.hooks,
            allocator_code: &space.allocator_code,
            unwinder: &mut space.unwinder,
            events: &mut self.events,
            procs: &mut self.procs,
            stats: &mut self.stats,
            clock: &mut self.tsc,
            t0: self.t0,
            measure: self.cfg.measure_time,
        };
        let (round, broken) = ring.merger.round(&ring.region, |o| sink.emit(o));
        let mut n = round.emitted;
        if flush {
            n += ring.merger.flush(|o| sink.emit(o));
        }
        self.stats.ring_held_max = self.stats.ring_held_max.max(round.held as u64);
        for b in broken {
            eprintln!("heaptape: warning: {b}: the program wrote over its ring; events lost");
        }
        Drained {
            events: n,
            fullest: round.fullest,
        }
    }

    /// At a hooked allocator call that stopped (its thread has no ring yet): gives the
    /// thread a ring and sends it back to the function's ring trampoline, which records
    /// the call. `stop_area`: the thread area whose entry the stop took (fast path).
    /// Returns whether the thread was sent back (then nothing else is to be done).
    pub(super) fn try_ring_redirect(
        &mut self,
        tid: Tid,
        space_id: usize,
        entry: u64,
        stop_area: Option<u32>,
    ) -> bool {
        let Some(task) = self.tasks.get(&tid) else {
            return false;
        };
        if task.ring_tp.is_some() || task.ring_refused || !task.armed.is_empty() {
            return false;
        }
        let recording = self.procs.get(&task.pid).is_some_and(|p| p.recording);
        let Some(space) = self.spaces.get_mut(space_id).and_then(|s| s.as_mut()) else {
            return false;
        };
        let Some(ring_entry) = space.hooks.get(&entry).and_then(|h| h.ring_entry) else {
            return false;
        };
        let Some(ring) = space.ring.as_mut().filter(|_| recording) else {
            return false;
        };
        let Ok(mut regs) = sys::get_regs(tid) else {
            return false;
        };
        // The trampoline keys on fs:[0], the thread control block's self-pointer.
        let mut w = [0u8; 8];
        if regs.fs_base == 0 || space.mem.read(regs.fs_base, &mut w).is_err() {
            // No thread pointer yet (the dynamic linker's early calls): next time.
            return false;
        }
        let tp = u64::from_le_bytes(w);
        let top = if tid == task.pid {
            procfs::start_stack(tid)
        } else {
            task.first_rsp.or(Some(tp))
        };
        let stack = procfs::frames_range(tid, regs.rsp, top).unwrap_or(0..0);
        let Some(area) = ring.region.register_thread(tp, stack) else {
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.ring_refused = true;
            }
            return false;
        };
        ring.tids.insert(area, (tid, task.pid));
        if let (Some(a), Some(probe)) = (stop_area, space.probe.as_ref()) {
            if let Some(mask) = probe.borrow().abort_entry(a) {
                let _ = sys::set_sigmask(tid, mask);
            }
        }
        // At the stop every register is as at the function's entry (the stop
        // trampoline's fast path restores them, r11 aside, which is scratch).
        regs.rip = ring_entry;
        if sys::set_regs(tid, &regs).is_err() {
            return false;
        }
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.ring_tp = Some(tp);
        }
        self.stats.ring_threads += 1;
        true
    }

    /// Takes `tid`'s ring back (it exits or leaves its address space), after draining its
    /// address space's rings.
    pub(super) fn release_ring(&mut self, tid: Tid) {
        let Some(task) = self.tasks.get_mut(&tid) else {
            return;
        };
        let Some(tp) = task.ring_tp.take() else {
            return;
        };
        let Some(space_id) = self.procs.get(&task.pid).map(|p| p.space) else {
            return;
        };
        self.drain_space(space_id, false);
        if let Some(ring) = self
            .spaces
            .get_mut(space_id)
            .and_then(|s| s.as_mut())
            .and_then(|s| s.ring.as_mut())
        {
            if let Some(area) = ring.region.area_of(tp) {
                self.stats.ring_waits += ring.region.waits(area);
            }
            ring.region.unregister_thread(tp);
        }
    }
}

/// Where drained events go: the pipeline, with what it needs to unwind and account.
struct Sink<'a> {
    tids: &'a AddrMap<u32, (Tid, Tid)>,
    moving: &'a mut AddrMap<u64, StackId>,
    hooks: &'a AddrMap<u64, Hook>,
    /// The replacement allocators' modules: calls from there are the allocator's own.
    allocator_code: &'a [std::ops::Range<u64>],
    unwinder: &'a mut StackUnwinder,
    events: &'a mut Pipeline,
    procs: &'a mut AddrMap<Tid, Proc>,
    stats: &'a mut TracerStats,
    clock: &'a mut TscClock,
    t0: u64,
    /// Time the unwinding and interning (`--stats`).
    measure: bool,
}

impl Sink<'_> {
    /// One event part in the allocator's order. A realloc that moved its block is written
    /// as two records, each at its own number: the release of the old block (numbered
    /// before the call, so before another thread can be handed that address) and the new
    /// block (numbered after the return, so after its previous owner released it). Any
    /// other realloc is one record, at its first part.
    fn emit(&mut self, o: Ordered<'_>) {
        let ev = o.event;
        if o.part == Part::Alloc && !self.moving.contains_key(&ev.seq) {
            return;
        }
        let Some(&(tid, pid)) = self.tids.get(&ev.area) else {
            return;
        };
        let Some(HookKind::Alloc(spec)) = self.hooks.get(&ev.entry).map(|h| &h.kind) else {
            return;
        };
        let spec = *spec;
        let Some(proc_) = self.procs.get_mut(&pid).filter(|p| p.recording) else {
            return;
        };
        let ts = self.clock.trace_ns(ev.tsc, self.t0);
        let call = CallEvent {
            ts,
            tid,
            regs: EntryRegs {
                rip: ev.entry,
                rsp: ev.rsp,
                rbp: ev.rbp,
            },
            args: [ev.args[0], ev.args[1], ev.args[2], ev.args[3], 0, 0],
            stack: ev.stack,
        };
        let result = ev.result.unwrap_or(0);
        if o.part == Part::Alloc {
            // The second part of a moved realloc: its stack was unwound at the first.
            let stack = self.moving.remove(&ev.seq).unwrap_or_default();
            if let (AllocCall::Realloc { func, size, .. }, _) =
                self.events.alloc_entry(&call, spec, stack)
            {
                if result == 0 {
                    // realloc(p, 0): the release was all of it.
                    return;
                }
                let rec = Record::Alloc {
                    ts,
                    tid: tid as u32,
                    func,
                    address: result,
                    size,
                    align: 0,
                    stack,
                };
                proc_.live.apply(&rec);
                self.events.buf().push(rec);
            }
            return;
        }
        // Past the copy the stack has moved on: an unwind that needs more is cut there.
        let mut cut = false;
        // Timed by the time stamp counter: two clock_gettime calls per event cost 6% of
        // the recorder's time on redis-server.
        let t = if self.measure { sys::tsc() } else { 0 };
        let stack = self.events.stack(&call, self.unwinder, &mut |_| {
            cut = true;
            None
        });
        if self.measure {
            self.stats.unwind_ns += self.clock.ticks_ns(sys::tsc().saturating_sub(t));
        }
        if cut {
            self.stats.ring_cut_stacks += 1;
        }
        self.stats.ring_stack_bytes += ev.stack.len() as u64;
        // Shared entry points come with replacement allocators (tcmalloc, mimalloc).
        let spec = match spec.kind {
            CallKind::Free { ptr_arg } if spec.shared || !self.allocator_code.is_empty() => {
                HookSpec {
                    func: proc_
                        .live
                        .release(call.args[ptr_arg], spec.func, spec.shared),
                    ..spec
                }
            }
            _ => spec,
        };
        let (alloc, _) = self.events.alloc_entry(&call, spec, stack);
        self.stats.recorded_calls += 1;
        self.stats.ring_events += 1;
        if let AllocCall::Realloc { func, old, size } = alloc {
            if o.part == Part::Free && realloc_moved(old, result, size) {
                self.moving.insert(ev.seq, stack);
                proc_.live.free(old);
                self.events
                    .buf()
                    .push(realloc_release(ts, tid, stack, func, old));
                return;
            }
        }
        let rec = alloc.record(ts, tid, stack, result, ev.out.unwrap_or(0));
        match rec {
            Some(rec) => {
                let caller = call.return_address();
                let by_allocator = self.allocator_code.iter().any(|r| r.contains(&caller));
                proc_.live.apply_by(&rec, by_allocator, spec.shared);
                self.events.buf().push(rec);
            }
            None => {
                // A free: written by alloc_entry.
                if let AllocCall::Free { address } = alloc {
                    proc_.live.free(address);
                }
            }
        }
    }
}
