//! The process tree's life as ptrace reports it: new threads and processes (clone,
//! fork, vfork), exec, exits (with the reachability snapshot of a process that ends),
//! group-stops; and the thread areas that give threads the fast path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use heaptape_format::{ExitStatus, ProcessOrigin, Record, SnapshotTrigger};

use super::model::RingState;
use super::model::{KnownModule, Proc, Space, Task};
use super::Tracer;
use crate::events::unwind::StackUnwinder;
use crate::procfs;
use crate::snapshot::{LiveBlocks, ThreadState};
use crate::sys::{self, ProcMem, SharedMap, Tid, WaitEvent};
use crate::tracee::inject;
use crate::tracee::ring::{RingLayout, RingRegion};

impl Tracer {
    // -----------------------------------------------------------------------------------
    // ptrace events
    // -----------------------------------------------------------------------------------

    pub(super) fn on_event(&mut self, tid: Tid, event: i32, sig: i32) {
        match event {
            libc::PTRACE_EVENT_EXEC => self.on_exec(tid),
            libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                self.on_new_task(tid, event);
                if event == libc::PTRACE_EVENT_VFORK {
                    // The child runs on the parent's memory with the parent's thread
                    // pointer: with the parent's ring still registered, the child's calls
                    // would be written there, as the parent's. Unregistered, they take
                    // the stop path (as the child); the parent's first call after the
                    // child execs or exits stops once and takes a ring again.
                    self.release_ring(tid);
                }
                self.resume(tid, 0);
            }
            libc::PTRACE_EVENT_EXIT => {
                self.sweep();
                // Before its thread pointer can be reused: the ring goes with the thread
                // (the snapshot below drains the whole process first).
                if !self.cfg.snapshot {
                    self.release_ring(tid);
                }
                if self.cfg.snapshot {
                    self.maybe_snapshot(tid);
                    self.note_dead_stack(tid);
                    self.release_ring(tid);
                }
                self.abandon_calls(tid);
                self.resume(tid, 0);
            }
            libc::PTRACE_EVENT_STOP => {
                if sys::is_stop_signal(sig) {
                    // Group-stop: stay stopped, as without the tracer, until SIGCONT.
                    let _ = sys::listen(tid);
                } else if let Some(task) = self.tasks.get_mut(&tid) {
                    if !task.started {
                        task.started = true;
                        self.start_task(tid);
                    } else {
                        self.resume(tid, 0);
                    }
                } else {
                    // A new task whose parent's event has not been seen yet.
                    self.early_stops.insert(tid);
                }
            }
            _ => self.resume(tid, 0),
        }
    }

    /// At a thread's exit stop: if the whole process is ending (exit_group, a fatal
    /// signal, or its last thread), stop every thread and record the reachability
    /// snapshot while the memory is still there.
    pub(super) fn maybe_snapshot(&mut self, tid: Tid) {
        let Some(pid) = self.tasks.get(&tid).map(|t| t.pid) else {
            return;
        };
        let Some(proc_) = self.procs.get(&pid) else {
            return;
        };
        if !proc_.recording || proc_.snapshot_done {
            return;
        }
        let start = sys::monotonic_ns();
        let regs = sys::get_regs(tid).ok();
        let msg = sys::event_msg(tid).unwrap_or(0);
        let killed = msg & 0x7f != 0;
        let group_exit = regs.is_some_and(|r| r.orig_rax == libc::SYS_exit_group as u64);
        if !(group_exit || killed || proc_.threads.len() <= 1) {
            return;
        }
        let others: Vec<Tid> = proc_
            .threads
            .iter()
            .copied()
            .filter(|&t| t != tid)
            .collect();
        let live_from = regs
            .filter(|_| group_exit)
            .and_then(|r| self.exit_caller_sp(pid, tid, &r));
        let mut states = vec![ThreadState {
            tid,
            regs,
            exiting: true,
            live_from,
        }];
        // The other threads are being killed by the group exit: collect them at their
        // own exit stops so their registers and stacks are part of the snapshot.
        let mut parked = Vec::new();
        let mut deferred = Vec::new();
        for t in others {
            // A thread stopped for a snapshot during the run may have reported its exit
            // already.
            let reported = match self.take_deferred(t) {
                Some(ev) => Ok(Some(ev)),
                None => sys::wait_with_timeout(t, std::time::Duration::from_secs(2)),
            };
            match reported {
                Ok(Some(WaitEvent::Event {
                    event: libc::PTRACE_EVENT_EXIT,
                    ..
                })) => {
                    states.push(ThreadState {
                        tid: t,
                        regs: sys::get_regs(t).ok(),
                        exiting: false,
                        live_from: None,
                    });
                    parked.push(t);
                }
                Ok(Some(ev)) => deferred.push((t, ev)),
                _ => states.push(ThreadState {
                    tid: t,
                    regs: sys::get_regs(t).ok(),
                    exiting: false,
                    live_from: None,
                }),
            }
        }
        self.sweep();
        // Every call the process made before its end, in the allocator's order.
        if let Some(space) = self.procs.get(&pid).map(|p| p.space) {
            self.drain_space(space, true);
        }
        let ts = self.now();
        if let Some(p) = self.procs.get_mut(&pid) {
            p.snapshot_done = true;
        }
        if let Some(recs) = self.take_snapshot(pid, ts, &states) {
            // The process was ending anyway: its pause is the snapshot's time.
            let pause = sys::monotonic_ns() - start;
            self.write_snapshot(recs, pid, SnapshotTrigger::Exit, pause);
        }
        for t in parked {
            self.abandon_calls(t);
            self.resume(t, 0);
        }
        for (t, ev) in deferred {
            self.handle(t, ev);
        }
    }

    /// Remembers where an exiting thread's stack is (glibc caches thread stacks; the
    /// stale pointers in them must not keep blocks alive in a later snapshot).
    pub(super) fn note_dead_stack(&mut self, tid: Tid) {
        let Some(pid) = self.tasks.get(&tid).map(|t| t.pid) else {
            return;
        };
        if tid == pid {
            return;
        }
        if let (Ok(regs), Some(p)) = (sys::get_regs(tid), self.procs.get_mut(&pid)) {
            p.dead_stacks.push(regs.rsp);
        }
    }

    /// A new task got both its initial stop and its parent's event: let it run.
    pub(super) fn start_task(&mut self, tid: Tid) {
        let pid = self.tasks[&tid].pid;
        let detach = self.procs.get(&pid).is_some_and(|p| p.detach_at_start);
        if detach {
            self.tasks.remove(&tid);
            if let Some(p) = self.procs.remove(&pid) {
                self.drop_space_if_unused(p.space);
            }
            let _ = sys::detach(tid, 0);
        } else {
            self.wipe_fork_ring(tid);
            self.give_area(tid);
            if tid != pid && self.space_of(tid).is_some_and(|s| s.ring.is_some()) {
                let rsp = sys::get_regs(tid).ok().map(|r| r.rsp);
                if let Some(t) = self.tasks.get_mut(&tid) {
                    t.first_rsp = rsp;
                }
            }
            self.resume(tid, 0);
        }
    }

    /// A fork child's first stop: replaces the ring region it shares with its parent by
    /// rings of its own (a new memfd at the same address, so the trampolines it inherited
    /// write there): its threads take a ring at their first call, as the parent's did.
    /// If that fails, private zeroed memory there instead: its calls take the stop path.
    fn wipe_fork_ring(&mut self, tid: Tid) {
        let Some(space_id) = self.procs.get(&self.tasks[&tid].pid).map(|p| p.space) else {
            return;
        };
        let Some(space) = self.spaces.get_mut(space_id).and_then(|s| s.as_mut()) else {
            return;
        };
        let (Some((base, len)), Some(probe)) = (space.ring_wipe.take(), space.probe.clone()) else {
            return;
        };
        let mut held = Vec::new();
        let rings = inject::install_rings(tid, &space.mem, &probe.borrow(), base, len, &mut held)
            .ok()
            .and_then(|file| SharedMap::map(&file, len as usize).ok());
        let res = match rings {
            Some(map) => {
                let region = RingRegion::new(Rc::new(map), 0, base, RingLayout::default());
                space.ring = Some(RingState::new(region, base));
                space.sync_nested_mappings();
                Ok(0)
            }
            None => {
                let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
                let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
                inject::syscall(
                    tid,
                    probe.borrow().syscall_stub(),
                    libc::SYS_mmap,
                    [base, len, prot, flags, u64::MAX, 0],
                    &mut held,
                )
            }
        };
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.held.extend(held);
        }
        if let Err(e) = res {
            eprintln!("heaptape: warning: pid {tid}: cannot give the fork child rings of its own ({e}); stopping it");
            sys::kill(tid, libc::SIGKILL);
        }
    }

    /// Gives `tid` an area in its space's probe, so that its calls take the fast path.
    pub(super) fn give_area(&mut self, tid: Tid) {
        let Some(task) = self.tasks.get(&tid) else {
            return;
        };
        if task.area.is_some() {
            return;
        }
        let Some(proc_) = self.procs.get(&task.pid) else {
            return;
        };
        if !proc_.recording {
            return;
        }
        let Some(space) = self.spaces.get(proc_.space).and_then(|s| s.as_ref()) else {
            return;
        };
        let Some(probe) = space.probe.clone().filter(|_| space.fast) else {
            return;
        };
        let stack = sys::get_regs(tid)
            .ok()
            .and_then(|r| procfs::mapping_containing(tid, r.rsp))
            .unwrap_or(0..0);
        let area = probe.borrow_mut().assign_area(tid as u32, stack);
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.area = area;
        }
    }

    /// Takes `tid`'s area back (it exits or leaves its address space).
    pub(super) fn take_area(&mut self, tid: Tid) {
        let Some(task) = self.tasks.get_mut(&tid) else {
            return;
        };
        let Some(area) = task.area.take() else {
            return;
        };
        let probe = self
            .procs
            .get(&task.pid)
            .and_then(|p| self.spaces.get(p.space))
            .and_then(|s| s.as_ref())
            .and_then(|s| s.probe.clone());
        if let Some(p) = probe {
            p.borrow_mut().release_area(tid as u32, area);
        }
    }

    pub(super) fn on_new_task(&mut self, parent: Tid, event: i32) {
        let Ok(child) = sys::event_msg(parent).map(|m| m as Tid) else {
            return;
        };
        let Some(ppid) = self.tasks.get(&parent).map(|t| t.pid) else {
            return;
        };
        let ts = self.now();
        let (is_thread, shares_vm) = match event {
            libc::PTRACE_EVENT_FORK => (false, false),
            libc::PTRACE_EVENT_VFORK => (false, true),
            _ => {
                let flags = clone_flags(parent);
                (
                    flags & libc::CLONE_THREAD as u64 != 0,
                    flags & libc::CLONE_VM as u64 != 0,
                )
            }
        };
        let recording_parent = self.procs.get(&ppid).is_some_and(|p| p.recording);
        if is_thread {
            if let Some(p) = self.procs.get_mut(&ppid) {
                p.threads.insert(child);
            }
            if recording_parent {
                self.events.buf().push(Record::ThreadStart {
                    ts,
                    pid: ppid as u32,
                    tid: child as u32,
                });
            }
        } else {
            let parent_space = self.procs[&ppid].space;
            let follow = self.cfg.follow_children && recording_parent;
            let space = if shares_vm {
                parent_space
            } else {
                self.fork_space(parent_space, child, follow)
            };
            // A fork child starts with a copy of its parent's heap.
            let live = if follow && !shares_vm {
                self.procs[&ppid].live.clone()
            } else {
                LiveBlocks::default()
            };
            self.procs.insert(
                child,
                Proc {
                    space,
                    recording: follow,
                    detach_on_exec: !follow && shares_vm,
                    detach_at_start: !follow && !shares_vm,
                    threads: [child].into_iter().collect(),
                    status: None,
                    live,
                    snapshot_done: false,
                    open_fds: Default::default(),
                    dead_stacks: Vec::new(),
                },
            );
            if follow {
                let origin = match (event, shares_vm) {
                    (libc::PTRACE_EVENT_FORK, _) => ProcessOrigin::Fork,
                    (libc::PTRACE_EVENT_VFORK, _) => ProcessOrigin::Vfork,
                    (_, true) => ProcessOrigin::Clone,
                    _ => ProcessOrigin::Fork,
                };
                let command = procfs::cmdline(child);
                self.events.buf().push(Record::ProcessStart {
                    ts,
                    pid: child as u32,
                    parent_pid: Some(ppid as u32),
                    origin,
                    command,
                });
                self.events.buf().push(Record::ThreadStart {
                    ts,
                    pid: child as u32,
                    tid: child as u32,
                });
                self.emit_module_loads(space, child, ts);
            }
        }
        self.tasks.insert(
            child,
            Task {
                pid: if is_thread { ppid } else { child },
                armed: Vec::new(),
                area: None,
                started: false,
                held: Vec::new(),
                ring_tp: None,
                ring_refused: false,
                first_rsp: None,
            },
        );
        if self.early_stops.remove(&child) {
            self.tasks.get_mut(&child).expect("just inserted").started = true;
            self.start_task(child);
        }
    }

    /// A fork child's copy of its parent's address space: same hooks and trampolines
    /// (copied memory), same probe memfd (MAP_SHARED, so slots stay tree-wide unique).
    /// Unfollowed children get their breakpoints removed instead.
    pub(super) fn fork_space(&mut self, parent_space: usize, child: Tid, follow: bool) -> usize {
        let Ok(mem) = ProcMem::open(child) else {
            return parent_space;
        };
        let parent = self.spaces[parent_space].as_ref().expect("live space");
        if !follow {
            for (&addr, hook) in &parent.hooks {
                let _ = mem.write(addr, &hook.orig);
            }
            return usize::MAX;
        }
        let mut unwinder = StackUnwinder::new();
        let mut modules = Vec::with_capacity(parent.modules.len());
        for m in &parent.modules {
            unwinder.add_module(&m.elf, m.bias, m.range.clone());
            modules.push(KnownModule {
                path: m.path.clone(),
                start: m.start,
                range: m.range.clone(),
                bias: m.bias,
                elf: m.elf.clone(),
            });
        }
        let space = Space {
            owner: child,
            mem,
            probe: parent.probe.clone(),
            hooks: parent.hooks.clone(),
            traps: parent.traps.clone(),
            fast: parent.fast,
            modules,
            unwinder,
            tramp_pages: parent.tramp_pages.clone(),
            // The child's thread has its parent's thread pointer and the same (shared)
            // ring region: it gets rings of its own there before it runs
            // (`wipe_fork_ring`).
            ring: None,
            ring_wipe: parent
                .ring
                .as_ref()
                .map(|r| (r.hook.region_base, r.hook.layout.region_len() as u64)),
            allocator_code: parent.allocator_code.clone(),
        };
        self.spaces.push(Some(space));
        self.spaces.len() - 1
    }

    pub(super) fn on_exec(&mut self, tid: Tid) {
        let ts = self.now();
        // A non-leader thread that execs takes over the leader's tid.
        let former = sys::event_msg(tid).map(|m| m as Tid).unwrap_or(tid);
        let pid = self.tasks.get(&former).map(|t| t.pid).unwrap_or(tid);
        // The old image's calls, all of them, before its threads are forgotten.
        if let Some(threads) = self.procs.get(&pid).map(|p| p.threads.clone()) {
            for t in threads.into_iter().chain([former, tid]) {
                self.release_ring(t);
            }
        }
        if let Some(space) = self.procs.get(&pid).map(|p| p.space) {
            if !self
                .procs
                .values()
                .any(|p| p.space == space && !p.threads.contains(&former))
            {
                self.drain_space(space, true);
            }
        }
        if let Some(p) = self.procs.get(&pid) {
            for t in p.threads.clone() {
                if t != tid {
                    self.abandon_calls(t);
                    self.take_area(t);
                    self.tasks.remove(&t);
                }
            }
        }
        self.abandon_calls(former);
        self.take_area(former);
        self.take_area(tid);
        if former != tid {
            self.tasks.remove(&former);
        }
        self.tasks.entry(tid).or_insert(Task {
            pid,
            armed: Vec::new(),
            area: None,
            started: true,
            held: Vec::new(),
            ring_tp: None,
            ring_refused: false,
            first_rsp: None,
        });
        let Some(proc_) = self.procs.get_mut(&pid) else {
            self.resume(tid, 0);
            return;
        };
        proc_.threads = [tid].into_iter().collect();
        proc_.live = LiveBlocks::default();
        proc_.snapshot_done = false;
        if proc_.detach_on_exec {
            // An unfollowed vfork child: the new image has no breakpoints.
            self.procs.remove(&pid);
            self.tasks.remove(&tid);
            let _ = sys::detach(tid, 0);
            return;
        }
        let old_space = proc_.space;
        let command = procfs::cmdline(pid);
        let first = old_space == usize::MAX;
        if !first {
            self.events.buf().push(Record::Exec {
                ts,
                pid: pid as u32,
                command,
            });
        }
        let new_space = self.new_space(tid);
        if let Some(p) = self.procs.get_mut(&pid) {
            p.space = new_space;
        }
        if !first {
            self.drop_space_if_unused(old_space);
        }
        if new_space != usize::MAX {
            self.rescan(new_space, tid);
        }
        self.give_area(tid);
        self.resume(tid, 0);
    }

    pub(super) fn new_space(&mut self, tid: Tid) -> usize {
        let Ok(mem) = ProcMem::open(tid) else {
            return usize::MAX;
        };
        let mut held = Vec::new();
        let probe = match inject::install_probe(tid, &mem, &mut held) {
            Ok(p) => Some(Rc::new(RefCell::new(p))),
            Err(e) => {
                eprintln!("heaptape: warning: pid {tid}: cannot set up return probes ({e}); allocation results will be missing");
                None
            }
        };
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.held.extend(held);
        }
        let fast = procfs::same_pid_namespace(tid);
        let ring = probe.as_ref().filter(|_| self.cfg.ring && fast).map(|p| {
            let p = p.borrow();
            RingState::new(p.ring_region(), p.ring_base())
        });
        self.spaces.push(Some(Space {
            owner: tid,
            mem,
            probe,
            hooks: Default::default(),
            traps: HashMap::new(),
            fast,
            modules: Vec::new(),
            unwinder: StackUnwinder::new(),
            tramp_pages: Vec::new(),
            ring,
            ring_wipe: None,
            allocator_code: Vec::new(),
        }));
        self.spaces.len() - 1
    }

    pub(super) fn drop_space_if_unused(&mut self, space: usize) {
        if space == usize::MAX {
            return;
        }
        if !self.procs.values().any(|p| p.space == space) {
            self.drain_space(space, true);
            if let Some(s) = self.spaces.get_mut(space) {
                *s = None;
            }
        }
    }

    pub(super) fn on_gone(&mut self, tid: Tid, status: ExitStatus) {
        let ts = self.now();
        self.release_ring(tid);
        self.abandon_calls(tid);
        self.take_area(tid);
        let Some(task) = self.tasks.remove(&tid) else {
            return;
        };
        let pid = task.pid;
        let recording = self.procs.get(&pid).is_some_and(|p| p.recording);
        if let Some(p) = self.procs.get_mut(&pid) {
            p.threads.remove(&tid);
            if tid == pid {
                p.status = Some(status);
            }
        }
        if tid != pid && recording {
            self.events.buf().push(Record::ThreadExit {
                ts,
                tid: tid as u32,
            });
        }
        let finished = self
            .procs
            .get(&pid)
            .is_some_and(|p| p.threads.is_empty() && p.status.is_some());
        if finished {
            let p = self.procs.remove(&pid).expect("checked");
            let status = p.status.expect("checked");
            if p.recording {
                self.events.buf().push(Record::ThreadExit {
                    ts,
                    tid: pid as u32,
                });
                self.events.buf().push(Record::ProcessExit {
                    ts,
                    pid: pid as u32,
                    status,
                });
            }
            if pid == self.root {
                self.root_status = Some(status);
            }
            self.drop_space_if_unused(p.space);
        }
    }
}

/// The clone flags of the clone/clone3 call `tid` is stopped in.
fn clone_flags(tid: Tid) -> u64 {
    let Ok(regs) = sys::get_regs(tid) else {
        return 0;
    };
    if regs.orig_rax == libc::SYS_clone3 as u64 {
        let mut w = [0u8; 8];
        match sys::read_memory(tid, regs.rdi, &mut w) {
            Ok(8) => u64::from_le_bytes(w),
            _ => 0,
        }
    } else {
        regs.rdi
    }
}
