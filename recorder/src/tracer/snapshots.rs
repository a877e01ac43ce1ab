//! Reachability snapshots: taking one of a process whose threads are stopped (at its
//! exit, at the detach, during the run), and snapshots during the run
//! (`record --snapshot-every`, SIGUSR2 sent to the recorder).
//!
//! A snapshot during the run stops every thread of the process (PTRACE_INTERRUPT, then
//! each thread's stop), drains its rings so that the live-block mirror holds every call
//! published before the stop, takes the snapshot, and resumes every thread as it was: a
//! thread stopped by the interrupt is continued, one found in a group-stop (SIGSTOP,
//! Ctrl-Z) is left stopped (PTRACE_LISTEN), and a thread that reported something else
//! first (a signal for the program, a breakpoint, a clone...) stays in that stop until
//! the snapshot is written, then its event is handled as the main loop would have
//! ([`Tracer::handle_deferred`]; its interrupt is reported later and resumed there).
//!
//! The pause, from the first interrupt to the last thread resumed, is written in the
//! snapshot's `SnapshotInfo` and counted in `--stats`.
//!
//! Inexact by design: a thread stopped in the middle of an allocator call (its event
//! not yet published, or held back for order behind such a call) is not in the mirror
//! yet: a block it just allocated is not a block of this snapshot (a word pointing at it
//! is no pointer), a block it is freeing still is. The next snapshot sees the call.

use heaptape_format::{Record, SnapshotTrigger};

use super::Tracer;
use crate::snapshot::{self, SnapshotContext, ThreadState};
use crate::sys::{self, Tid, WaitEvent};

/// How long the threads of a process get to report their stops before a snapshot during
/// the run is given up (a thread in an uninterruptible sleep does not stop).
const STOP_TIMEOUT_NS: u64 = 1_000_000_000;

impl Tracer {
    /// Takes the snapshot of `pid`, whose threads `states` are stopped, at trace time
    /// `ts`: its records from `SnapshotBegin` to `SnapshotEnd`, with a `SnapshotThread`
    /// per thread whose registers are known (their stacks' new trie nodes go to the
    /// pipeline's buffer now, before the snapshot). The caller adds the `SnapshotInfo`
    /// ([`Tracer::write_snapshot`]). `None` (with a warning) when it failed.
    pub(super) fn take_snapshot(
        &mut self,
        pid: Tid,
        ts: u64,
        states: &[ThreadState],
    ) -> Option<Vec<Record>> {
        let exclude = self.probe_range(pid);
        let alloc_mods = self.allocator_modules(pid);
        let relro = self.relro_ranges(pid);
        let alloc_data = self.allocator_data(pid);
        let threads = self.snapshot_threads(pid, states);
        let proc_ = self.procs.get(&pid)?;
        let mut recs = Vec::new();
        let t = sys::monotonic_ns();
        let res = snapshot::take(
            pid,
            ts,
            states,
            &proc_.live,
            &SnapshotContext {
                exclude: &exclude,
                allocator_modules: &alloc_mods,
                relro: &relro,
                dead_stacks: &proc_.dead_stacks,
                allocator_data: &alloc_data,
            },
            &mut recs,
        );
        self.stats.snapshot_ns += sys::monotonic_ns() - t;
        match res {
            Ok(st) => {
                self.stats.snapshot_pointers += st.pointers;
                self.stats.snapshot_bytes += st.scanned_bytes;
                let end = recs.len() - 1;
                recs.splice(end..end, threads);
                Some(recs)
            }
            Err(e) => {
                eprintln!("heaptape: warning: pid {pid}: snapshot failed: {e}");
                None
            }
        }
    }

    /// Writes `recs`, a snapshot of `pid` from [`Tracer::take_snapshot`], with its
    /// `SnapshotInfo` (`trigger`, `pause_ns`) just before its `SnapshotEnd`.
    pub(super) fn write_snapshot(
        &mut self,
        mut recs: Vec<Record>,
        pid: Tid,
        trigger: SnapshotTrigger,
        pause_ns: u64,
    ) {
        let end = recs.len().saturating_sub(1);
        recs.insert(
            end,
            Record::SnapshotInfo {
                pid: pid as u32,
                trigger,
                pause_ns,
            },
        );
        self.events.buf().extend(recs);
    }

    /// Takes a snapshot of every recorded process while it runs (`trigger`: Periodic or
    /// Signal), one process at a time, then handles the events that arrived meanwhile.
    pub(super) fn snapshot_running(&mut self, trigger: SnapshotTrigger) {
        let pids: Vec<Tid> = self
            .procs
            .iter()
            .filter(|(_, p)| p.recording && p.space != usize::MAX && !p.snapshot_done)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in pids {
            self.snapshot_process(pid, trigger);
        }
        self.handle_deferred();
        self.events.publish();
    }

    /// Stops every thread of `pid`, takes its snapshot and resumes them (see the module
    /// documentation).
    fn snapshot_process(&mut self, pid: Tid, trigger: SnapshotTrigger) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        let space = p.space;
        // A vfork parent waits for its child in a sleep no interrupt ends, and the two
        // share their memory: neither is taken until the child execs or exits.
        if self.procs.values().filter(|q| q.space == space).count() > 1 {
            self.stats.snapshots_skipped += 1;
            return;
        }
        // Threads that have not started yet are stopped at their first stop, their
        // stacks empty.
        let tids: Vec<Tid> = p
            .threads
            .iter()
            .copied()
            .filter(|t| self.tasks.get(t).is_some_and(|t| t.started))
            .collect();
        let start = sys::monotonic_ns();
        for &t in &tids {
            let _ = sys::interrupt(t);
        }
        let deadline = start + STOP_TIMEOUT_NS;
        let mut states = Vec::with_capacity(tids.len());
        // Threads the interrupt stopped (continue them), threads in a group-stop (leave
        // them stopped).
        let mut cont = Vec::new();
        let mut listen = Vec::new();
        let mut complete = true;
        for &t in &tids {
            let state = |tid| ThreadState {
                tid,
                regs: sys::get_regs(tid).ok(),
                exiting: false,
                live_from: None,
            };
            match sys::wait_until(t, deadline) {
                Ok(Some(WaitEvent::Event {
                    event: libc::PTRACE_EVENT_STOP,
                    sig,
                })) => {
                    if sys::is_stop_signal(sig) {
                        listen.push(t);
                    } else {
                        cont.push(t);
                    }
                    states.push(state(t));
                }
                Ok(Some(ev @ (WaitEvent::Exited { .. } | WaitEvent::Signaled { .. }))) => {
                    // Gone: the process may be ending; its exit snapshot follows.
                    complete &= !matches!(ev, WaitEvent::Signaled { .. });
                    self.deferred.push_back((t, ev));
                }
                Ok(Some(ev)) => {
                    // Stopped for another reason: it stays in that stop until its event
                    // is handled, after the snapshot. After an exec the memory is new.
                    complete &= !matches!(
                        ev,
                        WaitEvent::Event {
                            event: libc::PTRACE_EVENT_EXEC,
                            ..
                        }
                    );
                    states.push(state(t));
                    self.deferred.push_back((t, ev));
                }
                // Not stopped in time (its interrupt's stop is handled by the main loop
                // when it comes), or gone.
                Ok(None) | Err(_) => complete = false,
            }
        }
        let mut recs = None;
        if complete && states.iter().all(|s| s.regs.is_some()) {
            // Every call published before the stop, in the allocator's order (calls in
            // flight, or held back behind one, stay for later: see the module doc).
            self.sweep();
            self.drain_space(space, false);
            let ts = self.now();
            recs = self.take_snapshot(pid, ts, &states);
        } else {
            self.stats.snapshots_skipped += 1;
            eprintln!(
                "heaptape: warning: pid {pid}: not every thread could be stopped for a snapshot; skipped"
            );
        }
        for t in cont {
            let _ = sys::cont(t, 0);
        }
        for t in listen {
            if sys::listen(t).is_err() {
                // No longer in its group-stop (a SIGCONT came meanwhile): let it run.
                let _ = sys::cont(t, 0);
            }
        }
        let pause = sys::monotonic_ns() - start;
        if let Some(recs) = recs {
            self.stats.snapshots_during_run += 1;
            self.stats.snapshot_pause_total_ns += pause;
            self.stats.snapshot_pause_max_ns = self.stats.snapshot_pause_max_ns.max(pause);
            self.write_snapshot(recs, pid, trigger, pause);
        }
    }

    /// Handles the events that arrived while threads were being stopped for a snapshot
    /// (each thread is still in the stop it reported), in the order they came.
    pub(super) fn handle_deferred(&mut self) {
        while let Some((tid, ev)) = self.deferred.pop_front() {
            self.sweep();
            self.handle(tid, ev);
        }
    }

    /// The event thread `tid` reported while threads were being stopped for a snapshot,
    /// not handled yet (taken out of the queue).
    pub(super) fn take_deferred(&mut self, tid: Tid) -> Option<WaitEvent> {
        let at = self.deferred.iter().position(|&(t, _)| t == tid)?;
        self.deferred.remove(at).map(|(_, ev)| ev)
    }
}
