//! Recording a process that is already running: attaching to every thread (racing
//! thread creation), setting up probes and hooks while all of them are stopped, and, at
//! the end, detaching cleanly, leaving the program running as before.

use std::collections::{HashMap, HashSet};

use heaptape_format::{ExitStatus, ProcessOrigin, Record, SnapshotTrigger};

use super::model::{Proc, Task};
use super::{TraceError, Tracer};
use crate::procfs;
use crate::snapshot::{LiveBlocks, ThreadState};
use crate::sys::{self, ProcMem, Tid, WaitEvent};
use crate::tracee::leftovers;

impl Tracer {
    /// Attaches to the running process `pid`: seizes every thread (racing thread
    /// creation), stops them, sets up probes and hooks, records the process and its
    /// modules, and lets it go on. `duration` bounds the recording.
    pub fn attach(&mut self, duration: Option<std::time::Duration>) -> Result<(), TraceError> {
        let pid = self.root;
        self.attached = true;
        self.deadline = duration.map(|d| sys::monotonic_ns() + d.as_nanos() as u64);
        // Seize until no new thread appears (threads may be created meanwhile; those
        // created after their creator was seized arrive through PTRACE_EVENT_CLONE).
        let mut seized: Vec<Tid> = Vec::new();
        loop {
            let mut new = 0;
            for tid in procfs::threads(pid)? {
                if seized.contains(&tid) {
                    continue;
                }
                match sys::seize_attach(tid) {
                    Ok(()) => {
                        seized.push(tid);
                        new += 1;
                    }
                    // The thread exited between listing and seizing.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if new == 0 {
                break;
            }
        }
        for &tid in &seized {
            let _ = sys::interrupt(tid);
        }
        // Collect every thread's stop; remember signals that arrive meanwhile.
        let mut held: HashMap<Tid, Vec<i32>> = HashMap::new();
        let mut stopped: HashSet<Tid> = HashSet::new();
        let mut group_stopped: HashSet<Tid> = HashSet::new();
        let mut born: Vec<(Tid, i32)> = Vec::new();
        for &tid in &seized {
            loop {
                match sys::wait_with_timeout(tid, std::time::Duration::from_secs(5))? {
                    Some(WaitEvent::Event {
                        event: libc::PTRACE_EVENT_STOP,
                        sig,
                    }) => {
                        stopped.insert(tid);
                        if sys::is_stop_signal(sig) {
                            // Stopped (SIGSTOP, Ctrl-Z...) before the attach: it stays so.
                            group_stopped.insert(tid);
                        }
                        break;
                    }
                    Some(WaitEvent::Signal { sig }) => {
                        held.entry(tid).or_default().push(sig);
                        let _ = sys::cont(tid, 0);
                        let _ = sys::interrupt(tid);
                    }
                    Some(WaitEvent::Event { event, .. }) => {
                        // A thread or process born while we were stopping everyone: it is
                        // traced already (TRACECLONE/FORK) and reports its own first stop
                        // later; remember it.
                        if matches!(
                            event,
                            libc::PTRACE_EVENT_CLONE
                                | libc::PTRACE_EVENT_FORK
                                | libc::PTRACE_EVENT_VFORK
                        ) {
                            if let Ok(child) = sys::event_msg(tid) {
                                born.push((child as Tid, event));
                            }
                        }
                        let _ = sys::cont(tid, 0);
                        let _ = sys::interrupt(tid);
                    }
                    Some(WaitEvent::Exited { .. }) | Some(WaitEvent::Signaled { .. }) | None => {
                        break
                    }
                }
            }
        }
        // Threads born meanwhile become tasks (started at their first stop, in the main
        // loop); processes forked meanwhile carry no breakpoints yet: let them go.
        let mut new_threads = Vec::new();
        for (child, event) in born {
            let is_thread = event == libc::PTRACE_EVENT_CLONE && procfs::is_thread_of(pid, child);
            if is_thread {
                new_threads.push(child);
            } else if let Ok(Some(_)) =
                sys::wait_with_timeout(child, std::time::Duration::from_secs(1))
            {
                let _ = sys::detach(child, 0);
            }
        }
        let leader = if stopped.contains(&pid) {
            pid
        } else {
            *stopped.iter().next().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the process exited while attaching",
                )
            })?
        };
        let ts = self.now();
        self.events.buf().push(Record::ProcessStart {
            ts,
            pid: pid as u32,
            parent_pid: None,
            origin: ProcessOrigin::Attached,
            command: procfs::cmdline(pid),
        });
        // Stopped threads run again at the end of the attach; threads born meanwhile
        // start at their own first stop, in the main loop.
        let threads = stopped
            .iter()
            .map(|&t| (t, true))
            .chain(new_threads.iter().map(|&t| (t, false)));
        for (tid, started) in threads {
            self.events.buf().push(Record::ThreadStart {
                ts,
                pid: pid as u32,
                tid: tid as u32,
            });
            self.tasks.insert(
                tid,
                Task {
                    pid,
                    armed: Vec::new(),
                    area: None,
                    started,
                    held: held.remove(&tid).unwrap_or_default(),
                    ring_tp: None,
                    ring_refused: false,
                    first_rsp: None,
                },
            );
        }
        let mut all_threads = stopped.clone();
        all_threads.extend(new_threads.iter().copied());
        self.procs.insert(
            pid,
            Proc {
                space: usize::MAX,
                recording: true,
                detach_on_exec: false,
                detach_at_start: false,
                threads: all_threads,
                status: None,
                live: LiveBlocks::attached(),
                snapshot_done: false,
                open_fds: Default::default(),
                dead_stacks: Vec::new(),
            },
        );
        // Every thread is stopped: an earlier session's probe memory and trampolines go
        // if nothing can be inside them any more, code can be patched and system calls
        // injected.
        self.remove_leftovers();
        self.busy_ips = stopped
            .iter()
            .filter_map(|&t| sys::get_regs(t).ok().map(|r| r.rip))
            .collect();
        let space = self.new_space(leader);
        if let Some(p) = self.procs.get_mut(&pid) {
            p.space = space;
        }
        if space != usize::MAX {
            self.rescan(space, leader);
        }
        self.busy_ips.clear();
        for &tid in &stopped {
            self.give_area(tid);
        }
        self.events.publish();
        for &tid in &stopped {
            if !group_stopped.contains(&tid) {
                self.resume(tid, 0);
            } else if sys::listen(tid).is_err() {
                // No longer in its group-stop: the set-up ran system calls in it. Let it
                // trap again at once: while the group-stop holds, the trap reports it
                // (the main loop LISTENs); after a SIGCONT that came meanwhile, it does
                // not (the main loop lets it run).
                let _ = sys::interrupt(tid);
                let _ = sys::cont(tid, 0);
            }
        }
        Ok(())
    }

    /// Whether this session attached to a running process.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Ends an attached recording: stops every thread, takes the snapshot, removes every
    /// breakpoint (threads stopped on one are rewound to run the original instruction),
    /// and detaches, delivering any signal that was held. Probe memory and trampolines
    /// stay mapped: calls in flight still return through them.
    pub fn detach_all(&mut self) {
        let start = sys::monotonic_ns();
        let tids: Vec<Tid> = self.tasks.keys().copied().collect();
        for &t in &tids {
            let _ = sys::interrupt(t);
        }
        let mut pending: HashSet<Tid> = tids.iter().copied().collect();
        let mut deliver: HashMap<Tid, i32> = HashMap::new();
        let mut rewind: HashMap<Tid, u64> = HashMap::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pending.is_empty() && std::time::Instant::now() < deadline {
            let next = match sys::wait_any() {
                Ok(Some(x)) => x,
                Ok(None) => continue,
                Err(_) => break,
            };
            let (tid, ev) = next;
            match ev {
                WaitEvent::Event {
                    event: libc::PTRACE_EVENT_STOP,
                    sig,
                } => {
                    if !sys::is_stop_signal(sig) {
                        pending.remove(&tid);
                    } else {
                        // A group-stop: the thread is stopped already.
                        pending.remove(&tid);
                    }
                    if !self.tasks.contains_key(&tid) {
                        // A thread born during the detach: it is stopped too; detach it.
                        let _ = sys::detach(tid, 0);
                    }
                }
                WaitEvent::Signal { sig: libc::SIGTRAP } => {
                    // Possibly stopped on one of our breakpoints: rewind it to the
                    // entry, which will hold the original byte again.
                    if let Ok(regs) = sys::get_regs(tid) {
                        let bp = regs.rip.wrapping_sub(1);
                        let space = self.space_of(tid);
                        let trap = space.and_then(|s| {
                            let entry = s.traps.get(&bp)?;
                            Some(s.hooks.get(entry)?.trampoline)
                        });
                        let ours = space.is_some_and(|s| s.hooks.contains_key(&bp));
                        if let Some(displaced) = trap {
                            // At an entry trampoline's int3: on the fast path (r11 set) it
                            // goes on by itself; on the slow path it runs the function's
                            // displaced instructions, unrecorded.
                            if regs.r11 == 0 {
                                rewind.insert(tid, displaced);
                            }
                        } else if ours {
                            rewind.insert(tid, bp);
                        } else {
                            deliver.insert(tid, libc::SIGTRAP);
                        }
                    }
                    pending.remove(&tid);
                }
                WaitEvent::Signal { sig } => {
                    deliver.insert(tid, sig);
                    pending.remove(&tid);
                }
                WaitEvent::Event { event, .. } => {
                    if matches!(
                        event,
                        libc::PTRACE_EVENT_CLONE
                            | libc::PTRACE_EVENT_FORK
                            | libc::PTRACE_EVENT_VFORK
                    ) {
                        // A new task: it stops by itself at its start; detach it then.
                        if let Ok(child) = sys::event_msg(tid) {
                            let child = child as Tid;
                            if event != libc::PTRACE_EVENT_CLONE {
                                // A fork child has its own copy of the breakpoints.
                                if let (Some(space), Ok(mem)) =
                                    (self.space_of(tid), ProcMem::open(child))
                                {
                                    for (&addr, h) in &space.hooks {
                                        let _ = mem.write(addr, &h.orig);
                                    }
                                }
                            }
                            if let Ok(Some(_)) =
                                sys::wait_with_timeout(child, std::time::Duration::from_secs(1))
                            {
                                let _ = sys::detach(child, 0);
                            }
                        }
                    }
                    pending.remove(&tid);
                }
                WaitEvent::Exited { code } => {
                    pending.remove(&tid);
                    self.on_gone(tid, ExitStatus::Code(code));
                }
                WaitEvent::Signaled { sig } => {
                    pending.remove(&tid);
                    self.on_gone(tid, ExitStatus::Signal(sig));
                }
            }
        }
        // A thread can report the interrupt's stop after executing one of our int3s but
        // before its SIGTRAP was dequeued: detached like that, the pending SIGTRAP would
        // kill the program. Let it dequeue the trap (a signal-delivery stop, where the
        // detach discards it) and rewind it like any thread stopped on a breakpoint.
        let stopped: Vec<Tid> = self.tasks.keys().copied().collect();
        for tid in stopped {
            if rewind.contains_key(&tid) || deliver.contains_key(&tid) {
                continue;
            }
            let Ok(regs) = sys::get_regs(tid) else {
                continue;
            };
            let bp = regs.rip.wrapping_sub(1);
            let Some(space) = self.space_of(tid) else {
                continue;
            };
            let target = match space.traps.get(&bp) {
                Some(entry) if regs.r11 == 0 => space.hooks.get(entry).map(|h| h.trampoline),
                Some(_) => None,
                None if space.hooks.contains_key(&bp) => Some(bp),
                None => continue,
            };
            if !procfs::sigtrap_pending(tid) || sys::cont(tid, 0).is_err() {
                continue;
            }
            match sys::wait_with_timeout(tid, std::time::Duration::from_secs(1)) {
                Ok(Some(WaitEvent::Signal { sig: libc::SIGTRAP })) => {
                    if let Some(t) = target {
                        rewind.insert(tid, t);
                    }
                }
                Ok(Some(WaitEvent::Signal { sig })) => {
                    deliver.insert(tid, sig);
                }
                _ => {}
            }
        }
        self.sweep();
        // Every thread is stopped: whatever the rings hold goes in, in order. Threads
        // stopped inside a ring trampoline finish their call after the detach, writing
        // into memory nobody reads any more (their room was reserved at the entry).
        self.drain_rings(true);
        // Snapshot of each process still there, all of its threads stopped.
        let pids: Vec<Tid> = self.procs.keys().copied().collect();
        for pid in pids {
            let Some(p) = self.procs.get(&pid) else {
                continue;
            };
            if !p.recording || !self.cfg.snapshot {
                continue;
            }
            let states: Vec<ThreadState> = p
                .threads
                .iter()
                .map(|&t| ThreadState {
                    tid: t,
                    regs: sys::get_regs(t).ok(),
                    exiting: false,
                    live_from: None,
                })
                .collect();
            let ts = self.now();
            if let Some(recs) = self.take_snapshot(pid, ts, &states) {
                // The threads were stopped for the detach: from the first interrupt on.
                let pause = sys::monotonic_ns() - start;
                self.write_snapshot(recs, pid, SnapshotTrigger::Detach, pause);
            }
        }
        // Remove every breakpoint from every address space. Entry trampolines stay
        // (threads may be inside them): their int3 becomes a nop, and no return cell
        // keeps an out-pointer of a call that is not the one in flight.
        for space in self.spaces.iter().flatten() {
            for (&addr, h) in &space.hooks {
                let _ = space.mem.write(addr, &h.orig);
            }
            for &trap in space.traps.keys() {
                let _ = space.mem.write(trap, &[0x90]);
            }
            if let Some(p) = &space.probe {
                p.borrow().disarm_all_cells();
            }
        }
        let ts = self.now();
        for (&tid, _) in self.tasks.iter() {
            if let Some(&bp) = rewind.get(&tid) {
                if let Ok(mut regs) = sys::get_regs(tid) {
                    regs.rip = bp;
                    let _ = sys::set_regs(tid, &regs);
                }
            }
        }
        // Every thread where it will resume: the probe memory and trampolines go now if
        // no thread can be inside them (else the next attach removes them).
        self.remove_leftovers();
        for (&tid, task) in self.tasks.iter_mut() {
            let sig = deliver
                .get(&tid)
                .copied()
                .or_else(|| task.held.pop())
                .unwrap_or(0);
            let _ = sys::detach(tid, sig);
        }
        for (&pid, p) in self.procs.iter() {
            if p.recording {
                self.events.buf().push(Record::ProcessExit {
                    ts,
                    pid: pid as u32,
                    status: ExitStatus::Detached,
                });
            }
        }
        if self.root_status.is_none() {
            self.root_status = Some(ExitStatus::Detached);
        }
        // Calls still in flight return through the probe after the detach, unseen; their
        // slots are never reused (the probe is not shared with a later session).
        self.pending.clear();
        self.tasks.clear();
        self.procs.clear();
        self.events.publish();
    }

    /// Unmaps the recorder's mappings (this session's and any earlier one's) from every
    /// traced process whose threads, all stopped, cannot be inside them (see
    /// [`leftovers`]). Signals that arrive meanwhile are held for the detach.
    pub(super) fn remove_leftovers(&mut self) {
        let pids: Vec<Tid> = self.procs.keys().copied().collect();
        for pid in pids {
            let Some(p) = self.procs.get(&pid) else {
                continue;
            };
            let threads: Vec<Tid> = p.threads.iter().copied().collect();
            let Some(&tid) = threads.first() else {
                continue;
            };
            let Ok(mem) = ProcMem::open(pid) else {
                continue;
            };
            let ours = leftovers::removable(&threads, &mem);
            if ours.is_empty() {
                continue;
            }
            let mut held = Vec::new();
            let n = leftovers::remove(tid, &mem, &ours, &mut held);
            self.stats.leftovers_removed += n as u64;
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.held.extend(held);
            }
        }
    }
}
