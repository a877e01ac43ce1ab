//! The tracer: one `waitpid(-1, __WALL)` loop over every task of the traced process tree.
//!
//! Each stop is one of: an allocator call (the hot path), the dynamic linker's debug hook
//! (a library was loaded or unloaded), a ptrace event (clone, fork, vfork, exec, exit), a
//! group-stop, or a signal for the program, which is passed on untouched.
//!
//! Hot path, per allocator call: one stop and two system calls (`waitpid`, `CONT`). Each
//! hooked function's entry jumps to an *entry trampoline* (see
//! [`crate::tracee::trampoline::entry_trampoline`]) which writes the call's arguments, stack pointer
//! and a copy of the top of its stack into the thread's area of the shared probe memory,
//! then executes `int3`. The tracer reads the area as plain memory, unwinds, and arms the
//! thread's return cell, which the trampoline fills when the function returns: no
//! GETREGS, no process_vm_readv (unless the unwind needs more than the copy), no SETREGS.
//! Calls made from inside a hooked call (operator new -> malloc) do not stop at all.
//!
//! The slow path, for what the fast one cannot take (a thread without an area, a signal
//! handler's call while the trampoline was writing, functions whose first bytes cannot
//! take a 5-byte jump, the dynamic linker's hook): an `int3`, then `GETREGS`, one
//! `process_vm_readv` of the stack, `SETREGS` (rip to the return shim of a probe slot).
//!
//! Results of earlier calls are read from the probe's shared memory at the start of
//! every stop ("the sweep"), which also keeps the trace causal: an allocation is always
//! written before any free of its pointer, because the free's stop comes after the
//! allocation returned and sweeps it first. Frees are written at their entry, before
//! the block is released.
//!
//! Breakpoints are never lifted while the program runs: the displaced first
//! instructions of each hooked function run from a trampoline page mapped near its
//!
//! The tracer is one type, [`Tracer`], whose methods are spread over the files below by
//! the job they do:
//!
//! - this file: the session's state, its configuration and the waitpid loop;
//! - [`model`]: the traced process tree (address spaces, processes, tasks, calls in
//!   flight);
//! - [`calls`]: the allocator-call hot path: a stop becomes a [`CallEvent`] handed to the
//!   [`crate::events`] pipeline, results are swept from the probe memory;
//! - [`resources`]: descriptor, socket and mapping calls decoded into records;
//! - [`lifecycle`]: ptrace events (clone, fork, vfork, exec, exit), group-stops, exit
//!   snapshots;
//! - [`snapshots`]: taking a snapshot of a stopped process, and snapshots during the run
//!   (`--snapshot-every`, SIGUSR2), which stop the process and resume it as it was;
//! - [`thread_stacks`]: a stopped thread's call stack (exit frames, snapshots);
//! - [`hooking`]: modules found in /proc/PID/maps, recorded, and hooked;
//! - [`attach`]: attaching to a running process and detaching from it;
//! - [`stats`]: the session's counters.
//!
//! [`CallEvent`]: crate::events::CallEvent

mod attach;
mod calls;
mod exit_frames;
mod hooking;
mod lifecycle;
mod model;
mod resources;
mod ring;
mod snapshots;
mod stats;
mod thread_stacks;

pub use stats::TracerStats;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use heaptape_format::{ExitStatus, ProcessOrigin, Record, SnapshotTrigger};

use crate::addr_map::AddrMap;
use crate::events::writer::WriterThread;
use crate::events::Pipeline;
use crate::hooks::elf::ElfModule;
use crate::procfs;
use crate::snapshot::LiveBlocks;
use crate::sys::{self, Tid, WaitEvent};
use crate::tracee::inject;
use crate::tracee::probe::STACK_COPY;
use model::{Pending, Proc, Space, Task};

/// Stop mode: how long the tracer polls for the next stop before it sleeps in waitpid.
/// Each stop wakes the tracer, then the thread again; with the two on different CPUs (the
/// scheduler's choice: it wakes a thread where a CPU is idle) a sleeping tracer costs a
/// cross-CPU wake-up per stop, several times the stop itself on virtual machines (an
/// allocation loop, 40,000 calls: 126 us per call sleeping, 28 us polling up to 100 us,
/// 15 us with both pinned to one CPU, which `--cpu same` does but which changes the
/// program's affinity; polling up to 50 us missed most stops on a busy host).
const SPIN_NS: u64 = 100_000;
/// Stop mode: after a poll that saw no stop, the waits that sleep before polling again.
const SPIN_PAUSE: u32 = 16;

/// Settings of a tracing session.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    /// Follow children into the trace (otherwise detach them cleanly).
    pub follow_children: bool,
    /// Frames per stack.
    pub max_depth: usize,
    /// Extra allocator prefixes to hook.
    pub allocator_prefixes: Vec<String>,
    /// Time the unwinder (for `--stats`; costs two clock reads per call).
    pub measure_time: bool,
    /// Take a reachability snapshot when each process exits.
    pub snapshot: bool,
    /// Also take one of every recorded process this often while it runs.
    pub snapshot_every: Option<std::time::Duration>,
    /// Interval between RSS samples (None: no sampling).
    pub rss_interval: Option<std::time::Duration>,
    /// Ring mode: allocator calls write into per-thread rings instead of stopping.
    pub ring: bool,
    /// Stop mode: poll for the next stop a little before sleeping in waitpid (see
    /// [`SPIN_NS`]).
    pub spin_wait: bool,
    /// Told of every module load written ([`crate::ModuleHook`]).
    pub on_module_load: Option<crate::ModuleHook>,
}

/// The state of a tracing session.
pub struct Tracer {
    cfg: TracerConfig,
    prefixes: Vec<String>,
    t0: u64,
    /// Stacks to the trie, records to the writer thread.
    events: Pipeline,
    tasks: AddrMap<Tid, Task>,
    procs: AddrMap<Tid, Proc>,
    spaces: Vec<Option<Space>>,
    pending: Vec<Pending>,
    early_stops: HashSet<Tid>,
    elf_cache: HashMap<(String, u64), Option<Arc<ElfModule>>>,
    root: Tid,
    root_status: Option<ExitStatus>,
    /// Attached to a running process (detach at the end instead of waiting for exit).
    attached: bool,
    /// Monotonic time at which an attached recording ends.
    deadline: Option<u64>,
    stop_requested: bool,
    /// Events reported while threads were being stopped for a snapshot, to handle next
    /// (each thread is still in the stop it reported).
    deferred: VecDeque<(Tid, WaitEvent)>,
    /// Monotonic time of the next snapshot during the run (`--snapshot-every`).
    next_snapshot: u64,
    next_rss: u64,
    /// When RSS samples carry Pss again (at most once a second).
    next_pss: u64,
    stack_buf: Vec<u8>,
    /// Further stack beyond `stack_buf`, read on demand by the unwinder.
    more_stack: Vec<u8>,
    done_buf: Vec<Pending>,
    /// While attaching: where the stopped threads stand, so that no `jmp` patch covers
    /// an instruction a thread is in the middle of (empty otherwise: a program's own
    /// threads are never inside a module that is being hooked for the first time).
    busy_ips: Vec<u64>,
    /// Ring mode: converts the rings' time stamp counter readings to trace time.
    tsc: ring::TscClock,
    /// Counters.
    pub stats: TracerStats,
}

/// Why tracing stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A ptrace or /proc operation on the root process failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Setting up the probe area failed.
    #[error("cannot set up the tracee: {0}")]
    Inject(#[from] inject::InjectError),
}

impl Tracer {
    /// A tracer for the root process `root` (already seized and running towards its exec
    /// stop), writing to `out`. `t0` is the trace's time origin.
    pub fn new(cfg: TracerConfig, root: Tid, out: WriterThread, t0: u64) -> Tracer {
        let prefixes = cfg.allocator_prefixes.clone();
        let events = Pipeline::new(out, cfg.max_depth);
        let next_snapshot = cfg
            .snapshot_every
            .map_or(u64::MAX, |d| sys::monotonic_ns() + d.as_nanos() as u64);
        Tracer {
            cfg,
            prefixes,
            t0,
            events,
            tasks: AddrMap::default(),
            procs: AddrMap::default(),
            spaces: Vec::new(),
            pending: Vec::new(),
            early_stops: HashSet::new(),
            elf_cache: HashMap::new(),
            root,
            root_status: None,
            attached: false,
            deadline: None,
            stop_requested: false,
            deferred: VecDeque::new(),
            next_snapshot,
            next_rss: 0,
            next_pss: 0,
            stack_buf: vec![0u8; STACK_COPY],
            more_stack: vec![0u8; 16 * 1024],
            done_buf: Vec::new(),
            busy_ips: Vec::new(),
            tsc: ring::TscClock::new(),
            stats: TracerStats::default(),
        }
    }

    pub(super) fn now(&self) -> u64 {
        sys::monotonic_ns().saturating_sub(self.t0)
    }

    /// How the root process ended.
    pub fn root_status(&self) -> Option<ExitStatus> {
        self.root_status
    }

    /// Gives back the writer thread (after [`Tracer::run`]).
    pub fn into_output(self) -> WriterThread {
        self.events.into_writer()
    }

    /// Records the root process's start. Call once, before [`Tracer::run`].
    pub fn start_root(&mut self, command: Vec<String>) {
        let ts = self.now();
        let root = self.root;
        self.events.buf().push(Record::ProcessStart {
            ts,
            pid: root as u32,
            parent_pid: None,
            origin: ProcessOrigin::Launched,
            command,
        });
        self.events.buf().push(Record::ThreadStart {
            ts,
            pid: root as u32,
            tid: root as u32,
        });
        self.tasks.insert(
            root,
            Task {
                pid: root,
                armed: Vec::new(),
                area: None,
                started: true,
                held: Vec::new(),
                ring_tp: None,
                ring_refused: false,
                first_rsp: None,
            },
        );
        self.procs.insert(
            root,
            Proc {
                space: usize::MAX,
                recording: true,
                detach_on_exec: false,
                detach_at_start: false,
                threads: [root].into_iter().collect(),
                status: None,
                live: LiveBlocks::default(),
                snapshot_done: false,
                open_fds: Default::default(),
                dead_stacks: Vec::new(),
            },
        );
    }

    /// Runs until every traced task is gone (or, when attached, until a stop is
    /// requested: then every task is detached cleanly).
    pub fn run(&mut self) -> Result<(), TraceError> {
        // Ring mode polls: between stops the rings are drained in passes, and the recorder
        // sleeps (cut short by a tracee's stop) after a pass that found the rings less
        // than half full, longer while it finds them under a quarter full: each pass
        // costs system calls and a wake-up on the CPUs the program needs. redis-server
        // at 270 k calls/s: a pass whenever the rings held anything, 2.7 us of recorder
        // CPU per call; a pass per 1/8-1/32 ring, 1.5 us; per 1/2-1/4 ring (these
        // settings), 1.1 us, no wait for room. A ring fills in 0.7 ms at cc1plus's rate
        // (1,500 MB/s of stack copies), in 4 ms at redis's, so the sleep stays short
        // where it must.
        const IDLE_MIN_NS: u64 = 20_000;
        const IDLE_MAX_NS: u64 = 2_000_000;
        // A pass that found a ring this full (in 1/1024): drain again without sleeping,
        // and sleep half as long next time.
        const BUSY_FILL: u32 = 1024 / 2;
        // A pass that found every ring less full: sleep twice as long next time.
        const QUIET_FILL: u32 = 1024 / 4;
        // waitpid is asked after a SIGCHLD, after a stop (there may be more), and at
        // least this often (a safety net: every stop sends one).
        const POLL_EVERY_NS: u64 = 10_000_000;
        let ring = self.cfg.ring;
        let mut idle = IDLE_MIN_NS;
        let mut poll = true;
        let mut last_poll = 0u64;
        // Stop mode: waits left to sleep through before polling again.
        let mut no_spin = 0u32;
        loop {
            if self.stop_requested {
                self.detach_all();
                break;
            }
            let waited = if ring {
                let now = sys::monotonic_ns();
                // The flag is taken before the waitpid: a stop after it sets it again.
                poll |= sys::take_child_event() || now - last_poll >= POLL_EVERY_NS;
                if poll {
                    last_poll = now;
                    let w = sys::wait_any_nohang();
                    poll = !matches!(w, Ok(None));
                    w
                } else {
                    Ok(None)
                }
            } else if self.cfg.spin_wait && no_spin == 0 {
                let start = sys::monotonic_ns();
                loop {
                    match sys::wait_any_nohang() {
                        Ok(None) if sys::monotonic_ns() - start < SPIN_NS => std::hint::spin_loop(),
                        Ok(None) => {
                            // Calls are not that frequent now: sleep in the next waits.
                            no_spin = SPIN_PAUSE;
                            break sys::wait_any();
                        }
                        other => break other,
                    }
                }
            } else {
                no_spin = no_spin.saturating_sub(1);
                sys::wait_any()
            };
            match waited {
                Ok(Some((tid, ev))) => {
                    self.stats.stops += 1;
                    if ring {
                        // Everything published before the stop goes first.
                        self.drain_rings(false);
                    }
                    self.sweep();
                    self.handle(tid, ev);
                    if sys::take_tick() {
                        self.tick();
                    }
                    self.events.publish();
                    idle = IDLE_MIN_NS;
                }
                Ok(None) if ring => {
                    let drained = self.drain_rings(false);
                    if sys::take_tick() {
                        self.tick();
                    }
                    if drained.events > 0 {
                        self.events.publish();
                    }
                    if drained.fullest >= BUSY_FILL {
                        idle = (idle / 2).max(IDLE_MIN_NS);
                    } else {
                        self.stats.ring_sleeps += 1;
                        sys::sleep_ns(idle);
                        if drained.fullest < QUIET_FILL {
                            idle = (idle * 2).min(IDLE_MAX_NS);
                        }
                    }
                }
                Ok(None) => {
                    sys::take_tick();
                    self.tick();
                }
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.drain_rings(true);
        self.sweep();
        // Calls that never returned (the process died inside the allocator).
        for p in std::mem::take(&mut self.pending) {
            p.probe.borrow_mut().release_ref(p.ret);
        }
        self.events.publish();
        self.stats.frames = self.events.frames_total;
        self.stats.frames_reused = self.events.frames_reused;
        self.stats.tracer_cpu_ns = sys::thread_cpu_ns();
        Ok(())
    }

    /// Periodic work between stops: forward termination signals sent to the recorder,
    /// take the snapshots asked for (SIGUSR2, `--snapshot-every`), hand records to the
    /// writer.
    fn tick(&mut self) {
        let sig = sys::take_signal();
        if self.attached {
            // Attached: any of these (and the duration) end the recording, never the
            // program.
            let expired = self.deadline.is_some_and(|d| sys::monotonic_ns() >= d);
            if sig != 0 || expired {
                self.stop_requested = true;
            }
        } else if sig == libc::SIGTERM || sig == libc::SIGHUP {
            // The program gets what the recorder got; the recorder then waits for it.
            sys::kill(self.root, sig);
        }
        self.sweep();
        let asked = sys::take_snapshot_request();
        if self.cfg.snapshot && !self.stop_requested {
            let now = sys::monotonic_ns();
            let due = now >= self.next_snapshot;
            if asked {
                self.snapshot_running(SnapshotTrigger::Signal);
            } else if due {
                self.snapshot_running(SnapshotTrigger::Periodic);
            }
            if let (true, Some(every)) = (due, self.cfg.snapshot_every) {
                // The next one an interval after this one ends: a snapshot longer than
                // the interval does not make the program run only between snapshots.
                self.next_snapshot = sys::monotonic_ns() + every.as_nanos() as u64;
            }
        }
        if let Some(every) = self.cfg.rss_interval {
            let now = sys::monotonic_ns();
            // Half a tick of slack: the SIGALRM tick and the sample period are the same.
            if now + every.as_nanos() as u64 / 2 >= self.next_rss {
                // Keep the cadence: a tick that lands a little early must not skip a period.
                let every = every.as_nanos() as u64;
                self.next_rss = if self.next_rss == 0 || now >= self.next_rss + every {
                    now + every
                } else {
                    self.next_rss + every
                };
                self.sample_rss();
            }
        }
        self.events.publish();
    }

    /// One RssSample per recorded process, from /proc/PID/status (and smaps_rollup for
    /// Pss, when the kernel has it, at most once a second).
    fn sample_rss(&mut self) {
        let ts = self.now();
        let with_pss = ts >= self.next_pss;
        if with_pss {
            self.next_pss = ts + 1_000_000_000;
        }
        let pids: Vec<Tid> = self
            .procs
            .iter()
            .filter(|(_, p)| p.recording)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in pids {
            if let Some(rec) = procfs::rss_sample(pid, ts, with_pss) {
                self.events.buf().push(rec);
            }
        }
    }

    pub(super) fn resume(&mut self, tid: Tid, sig: i32) {
        let held = self
            .tasks
            .get_mut(&tid)
            .and_then(|t| t.held.pop())
            .unwrap_or(0);
        let sig = if sig != 0 { sig } else { held };
        if sig != 0 {
            self.stats.signals_delivered += 1;
        }
        // ESRCH: the task was killed meanwhile; its exit status will follow.
        let _ = sys::cont(tid, sig);
    }

    pub(super) fn handle(&mut self, tid: Tid, ev: WaitEvent) {
        match ev {
            WaitEvent::Signal { sig: libc::SIGTRAP } => self.on_sigtrap(tid),
            WaitEvent::Signal { sig } => {
                if self.tasks.contains_key(&tid) {
                    self.resume(tid, sig);
                } else {
                    let _ = sys::cont(tid, sig);
                }
            }
            WaitEvent::Event { event, sig } => self.on_event(tid, event, sig),
            WaitEvent::Exited { code } => self.on_gone(tid, ExitStatus::Code(code)),
            WaitEvent::Signaled { sig } => self.on_gone(tid, ExitStatus::Signal(sig)),
        }
    }
}
