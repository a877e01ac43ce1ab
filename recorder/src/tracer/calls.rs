//! The allocator-call hot path: a stop at a hooked function's entry (handed over by its
//! entry trampoline, or an `int3` and GETREGS) becomes a [`CallEvent`] for the
//! [`crate::events`] pipeline, and the capture of the call's result is armed; at every
//! stop, the results that came back since are swept from the probe memory and written.

use heaptape_format::{AllocFn, Record, StackId};

use super::model::{Pending, PendingKind};
use super::resources::resource_record;
use super::Tracer;
use crate::events::unwind::EntryRegs;
use crate::events::{realloc_moved, realloc_release, AllocCall, CallEvent};
use crate::hooks::catalogue::{CallKind, HookSpec, ResourceCall};
use crate::hooks::patch::HookKind;
use crate::sys::{self, Regs, Tid};
use crate::tracee::probe::{EntryFrame, ReturnRef};

/// What a hooked call is, for the shared part of the hot path.
#[derive(Clone, Copy)]
enum Call {
    Alloc(HookSpec),
    Resource(ResourceCall),
}

/// A hooked call's state at its entry, from GETREGS or from an entry trampoline.
struct EntryState {
    /// The function's entry address.
    entry: u64,
    rsp: u64,
    rbp: u64,
    /// rdi, rsi, rdx, rcx, r8, r9.
    args: [u64; 6],
}

/// How a call's result comes back.
enum ReturnPath<'a> {
    /// Through a slot shim: `rip` is pointed at it (the slow path, then SETREGS).
    Shim(&'a mut Regs),
    /// Through the thread area's return cell (its byte offset in the probe).
    Cell(usize),
}

impl Tracer {
    // -----------------------------------------------------------------------------------
    // Breakpoints
    // -----------------------------------------------------------------------------------

    pub(super) fn on_sigtrap(&mut self, tid: Tid) {
        let Some(task) = self.tasks.get(&tid) else {
            let _ = sys::cont(tid, libc::SIGTRAP);
            return;
        };
        let pid = task.pid;
        let area = task.area;
        let Some(space_id) = self.procs.get(&pid).map(|p| p.space) else {
            let _ = sys::cont(tid, libc::SIGTRAP);
            return;
        };
        // The fast path: an entry trampoline left the call in the thread's area, and the
        // stop costs no register access at all (see `probe::entry_trampoline`).
        if let Some(area) = area {
            let probe = self
                .spaces
                .get(space_id)
                .and_then(|s| s.as_ref())
                .and_then(|s| s.probe.clone());
            let frame = probe.and_then(|p| p.borrow().take_entry(area, &mut self.stack_buf));
            if let Some(frame) = frame {
                // Ring mode: the thread's first call; from now on its calls do not stop.
                if self.try_ring_redirect(tid, space_id, frame.entry, Some(area)) {
                    self.resume(tid, 0);
                    return;
                }
                self.on_fast_call(tid, pid, space_id, &frame);
                self.resume(tid, 0);
                return;
            }
        }
        let Ok(mut regs) = sys::get_regs(tid) else {
            return;
        };
        let bp = regs.rip.wrapping_sub(1);
        let space = self.spaces.get(space_id).and_then(|s| s.as_ref());
        let trap_entry = space.and_then(|s| s.traps.get(&bp)).copied();
        let entry = trap_entry.unwrap_or(bp);
        let hook = space.and_then(|s| s.hooks.get(&entry)).cloned();
        let Some(hook) = hook else {
            // Not ours: the program's own SIGTRAP (raise, int3, kill).
            self.resume(tid, libc::SIGTRAP);
            return;
        };
        if trap_entry.is_some() && regs.r11 != 0 {
            // An entry trampoline's int3 on the fast path whose entry was already taken:
            // the stop that took it was a SIGTRAP sent to the program at that moment.
            // Deliver it now; the thread goes on past the int3.
            self.resume(tid, libc::SIGTRAP);
            return;
        }
        match hook.kind {
            HookKind::DlDebugState => {
                self.rescan(space_id, tid);
                regs.rip = hook.trampoline;
                let _ = sys::set_regs(tid, &regs);
                self.resume(tid, 0);
            }
            HookKind::Alloc(_) | HookKind::Resource(_) => {
                if trap_entry.is_some() && self.try_ring_redirect(tid, space_id, entry, None) {
                    self.resume(tid, 0);
                    return;
                }
                let Some(call) = self.call_of(&hook.kind) else {
                    return;
                };
                // By default the call just runs its displaced first instructions.
                regs.rip = hook.trampoline;
                let st = EntryState {
                    entry,
                    rsp: regs.rsp,
                    rbp: regs.rbp,
                    args: [regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9],
                };
                self.on_call(
                    tid,
                    pid,
                    space_id,
                    &st,
                    None,
                    hook.trampoline,
                    call,
                    &mut ReturnPath::Shim(&mut regs),
                );
                let _ = sys::set_regs(tid, &regs);
                self.resume(tid, 0);
            }
        }
    }

    /// What a hook's stop is, counting allocator stops.
    fn call_of(&mut self, kind: &HookKind) -> Option<Call> {
        match *kind {
            HookKind::Alloc(spec) => {
                self.stats.breakpoint_stops += 1;
                Some(Call::Alloc(spec))
            }
            HookKind::Resource(rc) => Some(Call::Resource(rc)),
            HookKind::DlDebugState => None,
        }
    }

    /// A call handed over by an entry trampoline (its stack copy is in `stack_buf`).
    fn on_fast_call(&mut self, tid: Tid, pid: Tid, space_id: usize, frame: &EntryFrame) {
        let hook = self
            .spaces
            .get(space_id)
            .and_then(|s| s.as_ref())
            .and_then(|s| s.hooks.get(&frame.entry))
            .map(|h| (h.kind.clone(), h.trampoline));
        let Some((kind, trampoline)) = hook else {
            return;
        };
        let Some(call) = self.call_of(&kind) else {
            return;
        };
        if matches!(call, Call::Alloc(_)) {
            self.stats.fast_stops += 1;
        }
        let st = EntryState {
            entry: frame.entry,
            rsp: frame.rsp,
            rbp: frame.rbp,
            args: frame.args,
        };
        self.on_call(
            tid,
            pid,
            space_id,
            &st,
            Some(frame.stack_len),
            trampoline,
            call,
            &mut ReturnPath::Cell(frame.cell),
        );
    }

    /// Records a hooked call at its entry and arms the capture of its result. The stack
    /// from `st.rsp` is in `stack_buf` (`stack_len` bytes) or, if `None`, read here.
    #[allow(clippy::too_many_arguments)]
    fn on_call(
        &mut self,
        tid: Tid,
        pid: Tid,
        space_id: usize,
        st: &EntryState,
        stack_len: Option<usize>,
        trampoline: u64,
        call: Call,
        ret_path: &mut ReturnPath,
    ) {
        let recording = self.procs.get(&pid).is_some_and(|p| p.recording);
        if let Call::Resource(
            rc @ (ResourceCall::Mmap | ResourceCall::Munmap | ResourceCall::Mremap),
        ) = call
        {
            if recording && self.inside_allocator_call(tid, space_id) {
                self.allocator_mapping(tid, pid, space_id, st, stack_len, trampoline, rc, ret_path);
                return;
            }
        }
        let task = self.tasks.get(&tid).expect("caller checked");
        if !task.armed.is_empty() || self.in_ring_call(tid, space_id) {
            // Still inside an earlier hooked call (operator new -> malloc, realloc(NULL)
            // -> malloc, or a signal handler): the outer call is the one recorded. (A
            // ring-recorded outer call shows in its ring area: an `int3`-hooked inner
            // one stops here, as mimalloc's valloc -> mi_valloc does.)
            self.stats.nested_calls += 1;
            return;
        }
        if !recording {
            return;
        }
        let ts = self.now();
        // Stack copy and unwind.
        let n = match stack_len {
            Some(n) => n,
            None => sys::read_memory(tid, st.rsp, &mut self.stack_buf).unwrap_or(0),
        };
        let space = self.spaces[space_id].as_mut().expect("live space");
        let ev = CallEvent {
            ts,
            tid,
            regs: EntryRegs {
                rip: st.entry,
                rsp: st.rsp,
                rbp: st.rbp,
            },
            args: st.args,
            stack: &self.stack_buf[..n],
        };
        let ret = ev.return_address();
        // Deep stacks: read further windows of 16 KiB at a time, not word by word.
        let more = &mut self.more_stack;
        let mut more_start = u64::MAX;
        let mut more_len = 0usize;
        let mut read_more = |addr: u64| -> Option<u64> {
            if addr < more_start || addr + 8 > more_start + more_len as u64 {
                more_start = addr & !7;
                more_len = sys::read_memory(tid, more_start, more).unwrap_or(0);
            }
            let off = addr.checked_sub(more_start)? as usize;
            let w = more.get(off..off + 8)?;
            Some(u64::from_le_bytes(w.try_into().ok()?))
        };
        let t_unwind = if self.cfg.measure_time {
            sys::monotonic_ns()
        } else {
            0
        };
        let stack_id = self.events.stack(&ev, &mut space.unwinder, &mut read_more);
        if self.cfg.measure_time {
            self.stats.unwind_ns += sys::monotonic_ns() - t_unwind;
        }
        // A call from a replacement allocator's own code (its constructor's mmap, its
        // own use of malloc or operator new).
        let by_allocator = self.spaces[space_id]
            .as_ref()
            .is_some_and(|s| s.in_allocator(ret));
        let spec = match call {
            Call::Alloc(spec) => spec,
            Call::Resource(rc) => {
                let args = ev.args;
                let (kind, outptr) = self.resource_entry(tid, pid, ts, rc, &args, stack_id);
                self.arm(
                    tid,
                    space_id,
                    ret_path,
                    ret,
                    trampoline,
                    outptr,
                    ts,
                    stack_id,
                    kind,
                    by_allocator,
                );
                return;
            }
        };
        self.stats.recorded_calls += 1;

        // Shared entry points come with replacement allocators (tcmalloc, mimalloc).
        let replacement = self.spaces[space_id]
            .as_ref()
            .is_some_and(|s| !s.allocator_code.is_empty());
        let spec = match (spec.kind, self.procs.get(&pid)) {
            (CallKind::Free { ptr_arg }, Some(p)) if spec.shared || replacement => HookSpec {
                func: p.live.release(ev.args[ptr_arg], spec.func, spec.shared),
                ..spec
            },
            _ => spec,
        };
        let (call, outptr) = self.events.alloc_entry(&ev, spec, stack_id);
        if let AllocCall::Free { address } = call {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.live.free(address);
            }
        }
        self.arm(
            tid,
            space_id,
            ret_path,
            ret,
            trampoline,
            outptr,
            ts,
            stack_id,
            PendingKind::Alloc(call),
            by_allocator,
        );
    }

    /// Whether `tid` is inside an allocator call: a ring-recorded one (its ring area's
    /// level is set) or, on the stop path, one armed and not returned. A mapping call it
    /// makes now is the allocator's, for itself.
    fn inside_allocator_call(&self, tid: Tid, space_id: usize) -> bool {
        let Some(task) = self.tasks.get(&tid) else {
            return false;
        };
        if let Some(&last) = task.armed.last() {
            return self
                .pending
                .iter()
                .rev()
                .find(|p| p.tid == tid && p.ret == last)
                .is_some_and(|p| matches!(p.kind, PendingKind::Alloc(_)));
        }
        self.in_ring_call(tid, space_id)
    }

    /// Whether `tid` is inside a ring-recorded call (its ring area's level is set).
    fn in_ring_call(&self, tid: Tid, space_id: usize) -> bool {
        let Some(tp) = self.tasks.get(&tid).and_then(|t| t.ring_tp) else {
            return false;
        };
        self.spaces
            .get(space_id)
            .and_then(|s| s.as_ref())
            .and_then(|s| s.ring.as_ref())
            .is_some_and(|ring| {
                ring.region
                    .area_of(tp)
                    .is_some_and(|area| ring.region.in_call(area))
            })
    }

    /// A mapping call an allocator makes for itself from inside one of its calls: no
    /// record (the program did not map anything), but the memory joins the process's
    /// allocator memory when the call returns (an unmap leaves it now).
    #[allow(clippy::too_many_arguments)]
    fn allocator_mapping(
        &mut self,
        tid: Tid,
        pid: Tid,
        space_id: usize,
        st: &EntryState,
        stack_len: Option<usize>,
        trampoline: u64,
        rc: ResourceCall,
        ret_path: &mut ReturnPath,
    ) {
        self.stats.allocator_mappings += 1;
        if rc == ResourceCall::Munmap {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.live.unmapped(st.args[0], st.args[1]);
            }
            return;
        }
        let ret = match stack_len {
            Some(n) if n >= 8 => u64::from_le_bytes(self.stack_buf[..8].try_into().expect("8")),
            _ => {
                let mut w = [0u8; 8];
                match sys::read_memory(tid, st.rsp, &mut w) {
                    Ok(8) => u64::from_le_bytes(w),
                    _ => return,
                }
            }
        };
        let ts = self.now();
        self.arm(
            tid,
            space_id,
            ret_path,
            ret,
            trampoline,
            0,
            ts,
            heaptape_format::EMPTY_STACK,
            PendingKind::AllocatorMapping {
                call: rc,
                args: st.args,
            },
            true,
        );
    }

    /// Arms the capture of the result of the call `tid` is entering, so nested calls
    /// are recognised and the result comes back (see [`crate::tracee::probe`]).
    #[allow(clippy::too_many_arguments)]
    fn arm(
        &mut self,
        tid: Tid,
        space_id: usize,
        ret_path: &mut ReturnPath,
        ret: u64,
        trampoline: u64,
        outptr: u64,
        ts: u64,
        stack_id: StackId,
        kind: PendingKind,
        by_allocator: bool,
    ) {
        let space = self.spaces[space_id].as_mut().expect("live space");
        let Some(probe) = space.probe.clone() else {
            return;
        };
        let armed = match ret_path {
            ReturnPath::Shim(regs) => {
                let slot = probe.borrow_mut().alloc();
                slot.map(|slot| {
                    probe.borrow().arm(slot, ret, trampoline, outptr);
                    regs.rip = probe.borrow().shim_addr(slot);
                    ReturnRef::Slot(slot)
                })
            }
            ReturnPath::Cell(cell) => {
                probe.borrow().arm_cell(*cell, outptr);
                Some(ReturnRef::Cell(*cell))
            }
        };
        let Some(r) = armed else {
            self.stats.slot_exhausted += 1;
            if let PendingKind::Alloc(AllocCall::Alloc {
                func, size, align, ..
            }) = kind
            {
                self.events.buf().push(Record::Alloc {
                    ts,
                    tid: tid as u32,
                    func,
                    address: 0,
                    size,
                    align,
                    stack: stack_id,
                });
            }
            return;
        };
        self.tasks
            .get_mut(&tid)
            .expect("caller checked")
            .armed
            .push(r);
        self.pending.push(Pending {
            tid,
            probe,
            ret: r,
            ts,
            stack: stack_id,
            kind,
            released: false,
            by_allocator,
        });
    }

    /// Writes the records of every call that has returned since the last stop.
    pub(super) fn sweep(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.pending.len() {
            let res = {
                let p = &self.pending[i];
                p.probe.borrow().result_of(p.ret)
            };
            if res.is_some() {
                let p = self.pending.swap_remove(i);
                self.done_buf.push(p);
            } else {
                i += 1;
            }
        }
        if self.done_buf.is_empty() {
            return;
        }
        // Among calls that were in flight together, resizes release memory that a
        // concurrent allocation may have received: write them first; otherwise by entry.
        self.done_buf.sort_by_key(|p| {
            (
                !matches!(p.kind, PendingKind::Alloc(AllocCall::Realloc { .. })),
                p.ts,
            )
        });
        let mut done = std::mem::take(&mut self.done_buf);
        // The releases of the reallocs among them first: a block one of them gave up may
        // have gone to another (a realloc's new block included).
        for p in done.iter_mut() {
            let (rax, _) = p.probe.borrow().result_of(p.ret).unwrap_or((0, 0));
            if let PendingKind::Alloc(AllocCall::Realloc { old, size, .. }) = p.kind {
                if !p.released && realloc_moved(old, rax, size) {
                    self.write_release(p);
                }
            }
        }
        for p in &done {
            let (rax, out) = p.probe.borrow().result_of(p.ret).unwrap_or((0, 0));
            self.release_moved(p, rax, out);
            self.finish_call(p, rax, out);
        }
        self.done_buf = done;
        self.done_buf.clear();
    }

    /// Before the record of `p`, an allocation that returned `rax`: if a realloc still in
    /// flight on another thread gave that block up (the allocator handed it out, so the
    /// realloc released it), writes the realloc's release now, in the allocator's order;
    /// its new block is written when it returns.
    fn release_moved(&mut self, p: &Pending, rax: u64, outval: u64) {
        let address = match p.kind {
            PendingKind::Alloc(AllocCall::Alloc { posix: true, .. }) if rax == 0 => outval,
            PendingKind::Alloc(AllocCall::Alloc { posix: false, .. }) => rax,
            PendingKind::Alloc(AllocCall::Realloc { .. }) => rax,
            _ => return,
        };
        if address == 0 {
            return;
        }
        let Some(i) = self.pending.iter().position(|r| {
            !r.released
                && r.tid != p.tid
                && matches!(r.kind, PendingKind::Alloc(AllocCall::Realloc { old, .. }) if old == address)
        }) else {
            return;
        };
        self.pending[i].released = true;
        let r = &self.pending[i];
        if let PendingKind::Alloc(AllocCall::Realloc { func, old, .. }) = r.kind {
            let (tid, ts, stack) = (r.tid, r.ts, r.stack);
            self.push_release(tid, ts, stack, func, old);
        }
    }

    /// Writes the release part of the realloc `p` (which moved its block) and marks it.
    fn write_release(&mut self, p: &mut Pending) {
        if let PendingKind::Alloc(AllocCall::Realloc { func, old, .. }) = p.kind {
            p.released = true;
            self.push_release(p.tid, p.ts, p.stack, func, old);
        }
    }

    /// The release part of a realloc: a `Free` with the realloc's function.
    fn push_release(&mut self, tid: Tid, ts: u64, stack: StackId, func: AllocFn, old: u64) {
        let pid = self.tasks.get(&tid).map(|t| t.pid);
        if let Some(proc_) = pid.and_then(|pid| self.procs.get_mut(&pid)) {
            proc_.live.free(old);
        }
        self.events
            .buf()
            .push(realloc_release(ts, tid, stack, func, old));
    }

    fn finish_call(&mut self, p: &Pending, rax: u64, outval: u64) {
        p.probe.borrow_mut().release_ref(p.ret);
        if let Some(t) = self.tasks.get_mut(&p.tid) {
            if let Some(pos) = t.armed.iter().rposition(|&s| s == p.ret) {
                t.armed.remove(pos);
            }
        }
        let rec = match p.kind {
            PendingKind::Alloc(AllocCall::Realloc { func, size, .. }) if p.released => {
                if rax == 0 {
                    // realloc(p, 0): the release was all of it.
                    return;
                }
                Record::Alloc {
                    ts: p.ts,
                    tid: p.tid as u32,
                    func,
                    address: rax,
                    size,
                    align: 0,
                    stack: p.stack,
                }
            }
            PendingKind::Alloc(ref call) => match call.record(p.ts, p.tid, p.stack, rax, outval) {
                Some(rec) => rec,
                None => return,
            },
            PendingKind::Resource {
                call,
                ref args,
                ref detail,
            } => {
                if let Some(recs) = resource_record(p, call, args, detail, rax, outval) {
                    let pid = self.tasks.get(&p.tid).map(|t| t.pid);
                    if let Some(proc_) = pid.and_then(|pid| self.procs.get_mut(&pid)) {
                        for r in &recs {
                            match r {
                                Record::FdOpen { fd, .. } => {
                                    proc_.open_fds.insert(*fd);
                                }
                                // A replacement allocator's constructor maps for itself.
                                Record::Mmap { address, len, .. } if p.by_allocator => {
                                    proc_.live.allocator_mapped(*address, *len)
                                }
                                Record::Mremap(m) => proc_.live.remapped(
                                    m.old_address,
                                    m.old_len,
                                    m.new_address,
                                    m.new_len,
                                ),
                                _ => {}
                            }
                        }
                    }
                    self.events.buf().extend(recs);
                }
                return;
            }
            PendingKind::AllocatorMapping { call, ref args } => {
                let failed = (-4095..0).contains(&(rax as i64)) || rax == u64::MAX;
                let pid = self.tasks.get(&p.tid).map(|t| t.pid);
                if let (false, Some(proc_)) = (failed, pid.and_then(|pid| self.procs.get_mut(&pid)))
                {
                    match call {
                        ResourceCall::Mmap => proc_.live.allocator_mapped(rax, args[1]),
                        ResourceCall::Mremap => {
                            proc_.live.remapped(args[0], args[1], rax, args[2]);
                        }
                        _ => {}
                    }
                }
                return;
            }
        };
        let pid = self.tasks.get(&p.tid).map(|t| t.pid);
        if let Some(proc_) = pid.and_then(|pid| self.procs.get_mut(&pid)) {
            let shared = matches!(
                p.kind,
                PendingKind::Alloc(AllocCall::Alloc { shared: true, .. })
            );
            proc_.live.apply_by(&rec, p.by_allocator, shared);
        }
        self.events.buf().push(rec);
    }

    /// Drops the calls of `tid` that will never return (it is exiting).
    pub(super) fn abandon_calls(&mut self, tid: Tid) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].tid == tid {
                let p = self.pending.swap_remove(i);
                p.probe.borrow_mut().release_ref(p.ret);
            } else {
                i += 1;
            }
        }
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.armed.clear();
        }
    }
}
