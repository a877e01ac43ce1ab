//! The call stack of a stopped thread, unwound from its registers: where a thread inside
//! `exit()` has its own frames ([`super::exit_frames`]) and each thread's stack at a
//! snapshot ([`Record::SnapshotThread`]).
//!
//! Unlike an allocator call's stack (unwound from a copy taken at the call's entry,
//! [`crate::events`]), a stopped thread's stack is read whole when needed, from its stack
//! pointer up to the end of its stack mapping (at most `max_bytes`), and unwound from any
//! instruction ([`crate::events::unwind::StackUnwinder::frames_from`]).

use heaptape_format::{Record, SnapshotThread};

use super::Tracer;
use crate::events::unwind::EntryRegs;
use crate::procfs;
use crate::snapshot::ThreadState;
use crate::sys::{Regs, Tid};

/// Stack bytes read to unwind a thread at a snapshot.
const SNAPSHOT_STACK_BYTES: u64 = 256 << 10;
/// Frames of a thread's stack at a snapshot, at most (its instruction pointer included).
const SNAPSHOT_FRAMES: usize = 128;

impl Tracer {
    /// Unwinds thread `tid` of process `pid`, stopped with `regs`, reading at most
    /// `max_bytes` of its stack from `regs.rsp` (bounded by its stack mapping): up to
    /// `max_frames` frames, innermost first, each as (the return address found, the
    /// caller's stack pointer after that return). `None` when the stack cannot be read.
    pub(super) fn unwind_stopped(
        &mut self,
        pid: Tid,
        tid: Tid,
        regs: &Regs,
        max_bytes: u64,
        max_frames: usize,
    ) -> Option<Vec<(u64, u64)>> {
        let space_id = self.procs.get(&pid)?.space;
        let space = self.spaces.get_mut(space_id)?.as_mut()?;
        let stack = procfs::mapping_containing(tid, regs.rsp)?;
        let len = (stack.end - regs.rsp).min(max_bytes) as usize;
        let mut bytes = vec![0u8; len];
        space.mem.read(regs.rsp, &mut bytes).ok()?;
        let mut frames = Vec::new();
        space.unwinder.frames_from(
            EntryRegs {
                rip: regs.rip,
                rsp: regs.rsp,
                rbp: regs.rbp,
            },
            &bytes,
            regs.rsp,
            max_frames,
            &mut frames,
        );
        Some(frames)
    }

    /// The [`Record::SnapshotThread`] of every thread of `states` whose registers are
    /// known, for a snapshot of process `pid`. Their stacks are interned in the trace's
    /// stack trie now: the new nodes' records go to the pipeline's buffer, before the
    /// snapshot that names them.
    pub(super) fn snapshot_threads(&mut self, pid: Tid, states: &[ThreadState]) -> Vec<Record> {
        let mut out = Vec::with_capacity(states.len());
        for t in states {
            let Some(regs) = &t.regs else { continue };
            let unwound = self
                .unwind_stopped(pid, t.tid, regs, SNAPSHOT_STACK_BYTES, SNAPSHOT_FRAMES - 1)
                .unwrap_or_default();
            // Stack nodes hold return addresses, which readers look up minus one: the
            // instruction pointer goes in plus one.
            let mut addresses = Vec::with_capacity(unwound.len() + 1);
            let mut frames = Vec::with_capacity(unwound.len() + 1);
            addresses.push(regs.rip.wrapping_add(1));
            frames.push(regs.rsp);
            for &(ra, caller_sp) in &unwound {
                addresses.push(ra);
                frames.push(caller_sp);
            }
            let stack = self.events.intern(t.tid, &addresses);
            out.push(Record::SnapshotThread(Box::new(SnapshotThread {
                pid: pid as u32,
                tid: t.tid as u32,
                name: procfs::thread_comm(pid, t.tid),
                stack,
                frames,
            })));
        }
        out
    }
}
