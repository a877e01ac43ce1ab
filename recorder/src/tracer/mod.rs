//! The tracer: one `waitpid(-1, __WALL)` loop over every task of the traced process tree.
//!
//! Each stop is one of: an allocator call (the hot path), the dynamic linker's debug hook
//! (a library was loaded or unloaded), a ptrace event (clone, fork, vfork, exec, exit), a
//! group-stop, or a signal for the program, which is passed on untouched.
//!
//! Hot path, per allocator call: one stop and two system calls (`waitpid`, `CONT`). Each
//! hooked function's entry jumps to an *entry trampoline* (see
//! [`crate::probe::entry_trampoline`]) which writes the call's arguments, stack pointer
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
//! module.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use heaptape_format::{AllocFn, ExitStatus, FdKind, ProcessOrigin, Record, StackId};

use crate::elf::{CallKind, ElfModule, HookSpec, ResourceCall};
use crate::inject;
use crate::maps::{self, MappedModule};
use crate::output::Output;
use crate::probe::{self as probe_area, EntryFrame, Probe, ReturnRef};
use crate::relocate;
use crate::snapshot::{self, LiveBlocks, SnapshotContext, ThreadState};
use crate::stacks::StackTrie;
use crate::sys::{self, ProcMem, Regs, Tid, WaitEvent};
use crate::unwind::{EntryRegs, StackUnwinder};

/// Bytes of stack copied at each event (more is read on demand by the unwinder).
const STACK_COPY: usize = 4096;
/// Bytes reserved per hook for its trampolines: an entry trampoline (for a `jmp` patch),
/// then the displaced first instructions.
const TRAMPOLINE_BYTES: u64 = probe_area::ENTRY_TRAMPOLINE_LEN + 64;
/// Bytes a `jmp rel32` patch covers.
const JMP_LEN: usize = 5;

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
    /// Interval between RSS samples (None: no sampling).
    pub rss_interval: Option<std::time::Duration>,
}

/// Counters about the session, for the summary and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct TracerStats {
    /// Every waitpid stop handled.
    pub stops: u64,
    /// Allocator breakpoint stops.
    pub breakpoint_stops: u64,
    /// Allocator calls recorded (one per top-level call).
    pub recorded_calls: u64,
    /// Calls made from inside another hooked call (not recorded again).
    pub nested_calls: u64,
    /// Calls recorded without a return value because every probe slot was busy.
    pub slot_exhausted: u64,
    /// Allocator stops handed over by an entry trampoline (no register access).
    pub fast_stops: u64,
    /// Signals passed on to the program.
    pub signals_delivered: u64,
    /// Modules hooked.
    pub modules_hooked: u64,
    /// Hook sites installed.
    pub hooks: u64,
    /// Of those, sites patched with a `jmp` to an entry trampoline (the others: `int3`).
    pub jmp_hooks: u64,
    /// Hooks that could not be installed (instruction could not be displaced).
    pub hook_failures: Vec<String>,
    /// Nanoseconds spent unwinding and interning stacks (with `measure_time`).
    pub unwind_ns: u64,
    /// CPU time of the tracer thread, nanoseconds (user + system).
    pub tracer_cpu_ns: u64,
    /// Pointer words recorded by exit snapshots.
    pub snapshot_pointers: u64,
    /// Bytes of memory scanned by exit snapshots.
    pub snapshot_bytes: u64,
    /// Wall time spent taking snapshots, nanoseconds.
    pub snapshot_ns: u64,
    /// CPU time of the writer thread (encoding, compression, writing), nanoseconds.
    pub writer_cpu_ns: u64,
}

impl std::fmt::Display for TracerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = |n: u64| {
            if self.recorded_calls == 0 {
                0.0
            } else {
                n as f64 / self.recorded_calls as f64
            }
        };
        writeln!(
            f,
            "stops: {} ({} at allocator breakpoints, {:.3} stops per recorded call)",
            self.stops,
            self.breakpoint_stops,
            per(self.stops)
        )?;
        writeln!(
            f,
            "calls: {} recorded, {} nested (inside another allocator call), {} without a free return slot; {} allocator stops on the fast path (no register access)",
            self.recorded_calls, self.nested_calls, self.slot_exhausted, self.fast_stops
        )?;
        writeln!(
            f,
            "tracer: {:.2} us CPU per recorded call, of which unwinding + stack trie {:.3} us, system calls and the rest {:.2} us; writer thread (encode, compress, write) {:.3} us",
            per(self.tracer_cpu_ns) / 1000.0,
            per(self.unwind_ns) / 1000.0,
            per(self.tracer_cpu_ns.saturating_sub(self.unwind_ns)) / 1000.0,
            per(self.writer_cpu_ns) / 1000.0
        )?;
        writeln!(
            f,
            "snapshots: {} pointer words found in {} bytes scanned in {:.3} s",
            self.snapshot_pointers,
            self.snapshot_bytes,
            self.snapshot_ns as f64 / 1e9
        )?;
        write!(
            f,
            "hooks: {} sites in {} modules ({} through entry trampolines), {} signals passed on",
            self.hooks, self.modules_hooked, self.jmp_hooks, self.signals_delivered
        )
    }
}

#[derive(Clone)]
enum HookKind {
    Alloc(HookSpec),
    Resource(ResourceCall),
    DlDebugState,
}

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

#[derive(Clone)]
struct Hook {
    kind: HookKind,
    /// Where the function's displaced first instructions run (then jump back).
    trampoline: u64,
    /// The original bytes the patch at the entry replaced (one for an `int3`, five for
    /// a `jmp` to an entry trampoline).
    orig: Vec<u8>,
    /// Address of the entry trampoline's `int3`, for a `jmp` patch.
    trap: Option<u64>,
}

struct KnownModule {
    path: String,
    start: u64,
    range: Range<u64>,
    bias: u64,
    elf: Arc<ElfModule>,
}

/// One address space: shared by the threads of a process and by vfork/CLONE_VM
/// children until they exec.
struct Space {
    /// A task whose /proc entries describe this address space.
    owner: Tid,
    mem: ProcMem,
    probe: Option<Rc<RefCell<Probe>>>,
    /// Hooks by function entry address.
    hooks: HashMap<u64, Hook>,
    /// Entry trampolines' `int3` addresses, to their function's entry.
    traps: HashMap<u64, u64>,
    /// Threads here may use thread areas (same pid namespace as the tracer).
    fast: bool,
    modules: Vec<KnownModule>,
    unwinder: StackUnwinder,
    /// Trampoline pages: (next free address, end).
    tramp_pages: Vec<(u64, u64)>,
}

struct Proc {
    space: usize,
    /// Record events of this process (false for unfollowed vfork children).
    recording: bool,
    /// Detach at exec (unfollowed vfork/CLONE_VM children).
    detach_on_exec: bool,
    /// Detach at the initial stop (unfollowed fork children).
    detach_at_start: bool,
    threads: HashSet<Tid>,
    status: Option<ExitStatus>,
    /// The blocks this process has live, per the records written.
    live: LiveBlocks,
    /// The exit snapshot was taken.
    snapshot_done: bool,
    /// Descriptors the trace shows open (for close_range and closefrom).
    open_fds: std::collections::BTreeSet<i32>,
    /// Stack pointers of threads that exited (their stacks stay mapped; not roots).
    dead_stacks: Vec<u64>,
}

struct Task {
    pid: Tid,
    /// Returns armed for this thread's calls, innermost last.
    armed: Vec<ReturnRef>,
    /// This thread's area in its space's probe (the fast path), if it has one.
    area: Option<u32>,
    /// Seen its initial stop (new tasks wait for both that and the parent's event).
    started: bool,
    /// Signals to deliver at the next resume (held during an injection).
    held: Vec<i32>,
}

enum PendingKind {
    /// A descriptor or mapping call whose result is recorded when it returns.
    Resource {
        call: ResourceCall,
        args: [u64; 6],
        detail: String,
    },
    Alloc {
        func: AllocFn,
        size: u64,
        align: u64,
        posix: bool,
    },
    Realloc {
        func: AllocFn,
        old: u64,
        size: u64,
    },
    Free,
}

struct Pending {
    tid: Tid,
    probe: Rc<RefCell<Probe>>,
    ret: ReturnRef,
    ts: u64,
    stack: StackId,
    kind: PendingKind,
}

/// The state of a tracing session.
pub struct Tracer {
    cfg: TracerConfig,
    prefixes: Vec<String>,
    t0: u64,
    out: Output,
    trie: StackTrie,
    tasks: HashMap<Tid, Task>,
    procs: HashMap<Tid, Proc>,
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
    next_rss: u64,
    stack_buf: Vec<u8>,
    /// Further stack beyond `stack_buf`, read on demand by the unwinder.
    more_stack: Vec<u8>,
    frames: Vec<u64>,
    done_buf: Vec<Pending>,
    /// While attaching: where the stopped threads stand, so that no `jmp` patch covers
    /// an instruction a thread is in the middle of (empty otherwise: a program's own
    /// threads are never inside a module that is being hooked for the first time).
    busy_ips: Vec<u64>,
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
    pub fn new(cfg: TracerConfig, root: Tid, out: Output, t0: u64) -> Tracer {
        let prefixes = cfg.allocator_prefixes.clone();
        Tracer {
            cfg,
            prefixes,
            t0,
            out,
            trie: StackTrie::new(),
            tasks: HashMap::new(),
            procs: HashMap::new(),
            spaces: Vec::new(),
            pending: Vec::new(),
            early_stops: HashSet::new(),
            elf_cache: HashMap::new(),
            root,
            root_status: None,
            attached: false,
            deadline: None,
            stop_requested: false,
            next_rss: 0,
            stack_buf: vec![0u8; STACK_COPY],
            more_stack: vec![0u8; 16 * 1024],
            frames: Vec::with_capacity(128),
            done_buf: Vec::new(),
            busy_ips: Vec::new(),
            stats: TracerStats::default(),
        }
    }

    fn now(&self) -> u64 {
        sys::monotonic_ns().saturating_sub(self.t0)
    }

    /// How the root process ended.
    pub fn root_status(&self) -> Option<ExitStatus> {
        self.root_status
    }

    /// Gives back the output (after [`Tracer::run`]).
    pub fn into_output(self) -> Output {
        self.out
    }

    /// Records the root process's start. Call once, before [`Tracer::run`].
    pub fn start_root(&mut self, command: Vec<String>) {
        let ts = self.now();
        let root = self.root;
        self.out.buf().push(Record::ProcessStart {
            ts,
            pid: root as u32,
            parent_pid: None,
            origin: ProcessOrigin::Launched,
            command,
        });
        self.out.buf().push(Record::ThreadStart {
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
        loop {
            if self.stop_requested {
                self.detach_all();
                break;
            }
            match sys::wait_any() {
                Ok(Some((tid, ev))) => {
                    self.stats.stops += 1;
                    self.sweep();
                    self.handle(tid, ev);
                    if sys::take_tick() {
                        self.tick();
                    }
                    self.out.publish();
                }
                Ok(None) => {
                    sys::take_tick();
                    self.tick();
                }
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.sweep();
        // Calls that never returned (the process died inside the allocator).
        for p in std::mem::take(&mut self.pending) {
            p.probe.borrow_mut().release_ref(p.ret);
        }
        self.out.publish();
        self.stats.tracer_cpu_ns = sys::thread_cpu_ns();
        Ok(())
    }

    /// Periodic work between stops: forward termination signals sent to the recorder,
    /// hand records to the writer.
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
        self.out.publish();
    }

    /// One RssSample per recorded process, from /proc/PID/status (and smaps_rollup for
    /// Pss, when the kernel has it).
    fn sample_rss(&mut self) {
        let ts = self.now();
        let pids: Vec<Tid> = self
            .procs
            .iter()
            .filter(|(_, p)| p.recording)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in pids {
            if let Some(rec) = read_rss(pid, ts) {
                self.out.buf().push(rec);
            }
        }
    }

    fn resume(&mut self, tid: Tid, sig: i32) {
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

    fn handle(&mut self, tid: Tid, ev: WaitEvent) {
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

    // -----------------------------------------------------------------------------------
    // Breakpoints
    // -----------------------------------------------------------------------------------

    fn on_sigtrap(&mut self, tid: Tid) {
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
        let task = self.tasks.get(&tid).expect("caller checked");
        if !task.armed.is_empty() {
            // Still inside an earlier hooked call (operator new -> malloc, realloc(NULL)
            // -> malloc, or a signal handler): the outer call is the one recorded.
            self.stats.nested_calls += 1;
            return;
        }
        if !recording {
            return;
        }
        let ts = self.now();
        let args = st.args;
        // Stack copy and unwind.
        let n = match stack_len {
            Some(n) => n,
            None => sys::read_memory(tid, st.rsp, &mut self.stack_buf).unwrap_or(0),
        };
        let space = self.spaces[space_id].as_mut().expect("live space");
        let stack = &self.stack_buf[..n];
        let ret = if n >= 8 {
            u64::from_le_bytes(stack[..8].try_into().unwrap())
        } else {
            0
        };
        let entry_regs = EntryRegs {
            rip: st.entry,
            rsp: st.rsp,
            rbp: st.rbp,
        };
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
        space.unwinder.unwind_with(
            entry_regs,
            stack,
            st.rsp,
            self.cfg.max_depth,
            &mut self.frames,
            &mut read_more,
        );
        if self.frames.is_empty() && ret != 0 && self.cfg.max_depth > 0 {
            self.frames.push(ret);
        }
        let stack_id = self.trie.intern(&self.frames, self.out.buf());
        if self.cfg.measure_time {
            self.stats.unwind_ns += sys::monotonic_ns() - t_unwind;
        }
        let spec = match call {
            Call::Alloc(spec) => spec,
            Call::Resource(rc) => {
                let (kind, outptr) = self.resource_entry(tid, pid, ts, rc, &args, stack_id);
                self.arm(
                    tid, space_id, ret_path, ret, trampoline, outptr, ts, stack_id, kind,
                );
                return;
            }
        };
        self.stats.recorded_calls += 1;

        let kind = match spec.kind {
            CallKind::Alloc {
                size_arg,
                count_arg,
                align_arg,
                fixed_align,
            } => {
                let mut size = args[size_arg];
                if let Some(c) = count_arg {
                    size = size.wrapping_mul(args[c]);
                }
                let align = align_arg.map(|a| args[a]).or(fixed_align).unwrap_or(0);
                PendingKind::Alloc {
                    func: spec.func,
                    size,
                    align,
                    posix: false,
                }
            }
            CallKind::PosixMemalign {
                align_arg,
                size_arg,
                ..
            } => PendingKind::Alloc {
                func: spec.func,
                size: args[size_arg],
                align: args[align_arg],
                posix: true,
            },
            CallKind::Realloc {
                ptr_arg,
                size_arg,
                count_arg,
            } => {
                let mut size = args[size_arg];
                if let Some(c) = count_arg {
                    size = size.wrapping_mul(args[c]);
                }
                PendingKind::Realloc {
                    func: spec.func,
                    old: args[ptr_arg],
                    size,
                }
            }
            CallKind::Free { ptr_arg } => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.live.free(args[ptr_arg]);
                }
                // Written now, before the block is released (see the module docs).
                self.out.buf().push(Record::Free {
                    ts,
                    tid: tid as u32,
                    func: spec.func,
                    address: args[ptr_arg],
                    stack: stack_id,
                });
                PendingKind::Free
            }
        };
        let outptr = match spec.kind {
            CallKind::PosixMemalign { out_arg, .. } => args[out_arg],
            _ => 0,
        };
        self.arm(
            tid, space_id, ret_path, ret, trampoline, outptr, ts, stack_id, kind,
        );
    }

    /// Arms the capture of the result of the call `tid` is entering, so nested calls
    /// are recognised and the result comes back (see [`crate::probe`]).
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
            if let PendingKind::Alloc {
                func, size, align, ..
            } = kind
            {
                self.out.buf().push(Record::Alloc {
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
        });
    }

    /// Entry of a descriptor or mapping call: closes and unmaps are written now (before
    /// the resource is released, like frees); the rest when they return.
    fn resource_entry(
        &mut self,
        tid: Tid,
        pid: Tid,
        ts: u64,
        rc: ResourceCall,
        args: &[u64; 6],
        stack: StackId,
    ) -> (PendingKind, u64) {
        let detail = match rc {
            ResourceCall::Open { path_arg } => read_c_string(tid, args[path_arg]),
            ResourceCall::Socket => socket_detail(args[0], args[1]),
            ResourceCall::Accept => format!("socket accepted on fd {}", args[0] as i32),
            ResourceCall::Dup => format!("duplicate of fd {}", args[0] as i32),
            ResourceCall::Pipe => "pipe".to_string(),
            ResourceCall::SocketPair => socket_detail(args[0], args[1]),
            ResourceCall::Fcntl => format!("duplicate of fd {}", args[0] as i32),
            ResourceCall::Special(name) => name.to_string(),
            _ => String::new(),
        };
        match rc {
            ResourceCall::Close => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.open_fds.remove(&(args[0] as i32));
                }
                self.out.buf().push(Record::FdClose {
                    ts,
                    tid: tid as u32,
                    fd: args[0] as i32,
                    stack,
                })
            }
            // close_range(.., CLOSE_RANGE_CLOEXEC) only marks descriptors.
            ResourceCall::CloseRange { to_end }
                if to_end || args[2] & libc::CLOSE_RANGE_CLOEXEC as u64 == 0 =>
            {
                let first = args[0] as u32 as i32;
                let last = if to_end {
                    i32::MAX
                } else {
                    args[1].min(i32::MAX as u64) as i32
                };
                let closed: Vec<i32> = self
                    .procs
                    .get_mut(&pid)
                    .map(|p| {
                        let v: Vec<i32> = p
                            .open_fds
                            .range(first.max(0)..=last.max(0))
                            .copied()
                            .collect();
                        for fd in &v {
                            p.open_fds.remove(fd);
                        }
                        v
                    })
                    .unwrap_or_default();
                for fd in closed {
                    self.out.buf().push(Record::FdClose {
                        ts,
                        tid: tid as u32,
                        fd,
                        stack,
                    });
                }
            }
            ResourceCall::Munmap => self.out.buf().push(Record::Munmap {
                ts,
                tid: tid as u32,
                address: args[0],
                len: args[1],
                stack,
            }),
            _ => {}
        }
        let outptr = match rc {
            ResourceCall::Pipe => args[0],
            ResourceCall::SocketPair => args[3],
            _ => 0,
        };
        (
            PendingKind::Resource {
                call: rc,
                args: *args,
                detail,
            },
            outptr,
        )
    }

    /// Writes the records of every call that has returned since the last stop.
    fn sweep(&mut self) {
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
        self.done_buf
            .sort_by_key(|p| (!matches!(p.kind, PendingKind::Realloc { .. }), p.ts));
        let done = std::mem::take(&mut self.done_buf);
        for p in &done {
            let (rax, out) = p.probe.borrow().result_of(p.ret).unwrap_or((0, 0));
            self.finish_call(p, rax, out);
        }
        self.done_buf = done;
        self.done_buf.clear();
    }

    fn finish_call(&mut self, p: &Pending, rax: u64, outval: u64) {
        p.probe.borrow_mut().release_ref(p.ret);
        if let Some(t) = self.tasks.get_mut(&p.tid) {
            if let Some(pos) = t.armed.iter().rposition(|&s| s == p.ret) {
                t.armed.remove(pos);
            }
        }
        let rec = match p.kind {
            PendingKind::Alloc {
                func,
                size,
                align,
                posix,
            } => Record::Alloc {
                ts: p.ts,
                tid: p.tid as u32,
                func,
                address: if posix {
                    if rax == 0 {
                        outval
                    } else {
                        0
                    }
                } else {
                    rax
                },
                size,
                align,
                stack: p.stack,
            },
            PendingKind::Realloc { func, old, size } => Record::Realloc {
                ts: p.ts,
                tid: p.tid as u32,
                func,
                old_address: old,
                new_address: rax,
                size,
                stack: p.stack,
            },
            PendingKind::Free => return,
            PendingKind::Resource {
                call,
                ref args,
                ref detail,
            } => {
                if let Some(recs) = resource_record(p, call, args, detail, rax, outval) {
                    let pid = self.tasks.get(&p.tid).map(|t| t.pid);
                    if let Some(proc_) = pid.and_then(|pid| self.procs.get_mut(&pid)) {
                        for r in &recs {
                            if let Record::FdOpen { fd, .. } = r {
                                proc_.open_fds.insert(*fd);
                            }
                        }
                    }
                    self.out.buf().extend(recs);
                }
                return;
            }
        };
        let pid = self.tasks.get(&p.tid).map(|t| t.pid);
        if let Some(proc_) = pid.and_then(|pid| self.procs.get_mut(&pid)) {
            match rec {
                Record::Alloc { address, size, .. } => proc_.live.alloc(address, size),
                Record::Realloc {
                    old_address,
                    new_address,
                    size,
                    ..
                } => proc_.live.realloc(old_address, new_address, size),
                _ => {}
            }
        }
        self.out.buf().push(rec);
    }

    /// Drops the calls of `tid` that will never return (it is exiting).
    fn abandon_calls(&mut self, tid: Tid) {
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

    // -----------------------------------------------------------------------------------
    // ptrace events
    // -----------------------------------------------------------------------------------

    fn on_event(&mut self, tid: Tid, event: i32, sig: i32) {
        match event {
            libc::PTRACE_EVENT_EXEC => self.on_exec(tid),
            libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                self.on_new_task(tid, event);
                self.resume(tid, 0);
            }
            libc::PTRACE_EVENT_EXIT => {
                self.sweep();
                if self.cfg.snapshot {
                    self.maybe_snapshot(tid);
                    self.note_dead_stack(tid);
                }
                self.abandon_calls(tid);
                self.resume(tid, 0);
            }
            libc::PTRACE_EVENT_STOP => {
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
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
    fn maybe_snapshot(&mut self, tid: Tid) {
        let Some(pid) = self.tasks.get(&tid).map(|t| t.pid) else {
            return;
        };
        let Some(proc_) = self.procs.get(&pid) else {
            return;
        };
        if !proc_.recording || proc_.snapshot_done {
            return;
        }
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
        let mut states = vec![ThreadState {
            tid,
            regs,
            exiting: true,
        }];
        // The other threads are being killed by the group exit: collect them at their
        // own exit stops so their registers and stacks are part of the snapshot.
        let mut parked = Vec::new();
        let mut deferred = Vec::new();
        for t in others {
            match sys::wait_with_timeout(t, std::time::Duration::from_secs(2)) {
                Ok(Some(WaitEvent::Event {
                    event: libc::PTRACE_EVENT_EXIT,
                    ..
                })) => {
                    states.push(ThreadState {
                        tid: t,
                        regs: sys::get_regs(t).ok(),
                        exiting: false,
                    });
                    parked.push(t);
                }
                Ok(Some(ev)) => deferred.push((t, ev)),
                _ => states.push(ThreadState {
                    tid: t,
                    regs: sys::get_regs(t).ok(),
                    exiting: false,
                }),
            }
        }
        self.sweep();
        let exclude = self.probe_range(pid);
        let alloc_mods = self.allocator_modules(pid);
        let ts = self.now();
        if let Some(proc_) = self.procs.get_mut(&pid) {
            proc_.snapshot_done = true;
            let mut recs = Vec::new();
            let t = sys::monotonic_ns();
            let res = snapshot::take(
                pid,
                ts,
                &states,
                &proc_.live,
                &SnapshotContext {
                    exclude: &exclude,
                    allocator_modules: &alloc_mods,
                    dead_stacks: &proc_.dead_stacks,
                },
                &mut recs,
            );
            self.stats.snapshot_ns += sys::monotonic_ns() - t;
            match res {
                Ok(st) => {
                    self.stats.snapshot_pointers += st.pointers;
                    self.stats.snapshot_bytes += st.scanned_bytes;
                }
                Err(e) => eprintln!("heaptape: warning: pid {pid}: snapshot failed: {e}"),
            }
            self.out.buf().extend(recs);
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
    fn note_dead_stack(&mut self, tid: Tid) {
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
    fn start_task(&mut self, tid: Tid) {
        let pid = self.tasks[&tid].pid;
        let detach = self.procs.get(&pid).is_some_and(|p| p.detach_at_start);
        if detach {
            self.tasks.remove(&tid);
            if let Some(p) = self.procs.remove(&pid) {
                self.drop_space_if_unused(p.space);
            }
            let _ = sys::detach(tid, 0);
        } else {
            self.give_area(tid);
            self.resume(tid, 0);
        }
    }

    /// Gives `tid` an area in its space's probe, so that its calls take the fast path.
    fn give_area(&mut self, tid: Tid) {
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
        let stack = thread_stack(tid).unwrap_or(0..0);
        let area = probe.borrow_mut().assign_area(tid as u32, stack);
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.area = area;
        }
    }

    /// Takes `tid`'s area back (it exits or leaves its address space).
    fn take_area(&mut self, tid: Tid) {
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

    fn on_new_task(&mut self, parent: Tid, event: i32) {
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
                self.out.buf().push(Record::ThreadStart {
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
                let command = read_cmdline(child);
                self.out.buf().push(Record::ProcessStart {
                    ts,
                    pid: child as u32,
                    parent_pid: Some(ppid as u32),
                    origin,
                    command,
                });
                self.out.buf().push(Record::ThreadStart {
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
    fn fork_space(&mut self, parent_space: usize, child: Tid, follow: bool) -> usize {
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
        };
        self.spaces.push(Some(space));
        self.spaces.len() - 1
    }

    fn emit_module_loads(&mut self, space_id: usize, pid: Tid, ts: u64) {
        let Some(space) = self.spaces.get(space_id).and_then(|s| s.as_ref()) else {
            return;
        };
        let recs: Vec<Record> = space
            .modules
            .iter()
            .map(|m| module_record(ts, pid, m))
            .collect();
        self.out.buf().extend(recs);
    }

    fn on_exec(&mut self, tid: Tid) {
        let ts = self.now();
        // A non-leader thread that execs takes over the leader's tid.
        let former = sys::event_msg(tid).map(|m| m as Tid).unwrap_or(tid);
        let pid = self.tasks.get(&former).map(|t| t.pid).unwrap_or(tid);
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
        let command = read_cmdline(pid);
        let first = old_space == usize::MAX;
        if !first {
            self.out.buf().push(Record::Exec {
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

    fn new_space(&mut self, tid: Tid) -> usize {
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
        self.spaces.push(Some(Space {
            owner: tid,
            mem,
            probe,
            hooks: HashMap::new(),
            traps: HashMap::new(),
            fast: same_pid_namespace(tid),
            modules: Vec::new(),
            unwinder: StackUnwinder::new(),
            tramp_pages: Vec::new(),
        }));
        self.spaces.len() - 1
    }

    fn drop_space_if_unused(&mut self, space: usize) {
        if space == usize::MAX {
            return;
        }
        if !self.procs.values().any(|p| p.space == space) {
            if let Some(s) = self.spaces.get_mut(space) {
                *s = None;
            }
        }
    }

    fn on_gone(&mut self, tid: Tid, status: ExitStatus) {
        let ts = self.now();
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
            self.out.buf().push(Record::ThreadExit {
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
                self.out.buf().push(Record::ThreadExit {
                    ts,
                    tid: pid as u32,
                });
                self.out.buf().push(Record::ProcessExit {
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

    // -----------------------------------------------------------------------------------
    // Modules and hooks
    // -----------------------------------------------------------------------------------

    fn elf(&mut self, m: &MappedModule, pid: Tid) -> Option<Arc<ElfModule>> {
        let key = (m.path.clone(), m.inode);
        if let Some(e) = self.elf_cache.get(&key) {
            return e.clone();
        }
        let parsed = if m.is_vdso() {
            let r = m.avma_range();
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            match sys::read_memory(pid, r.start, &mut buf) {
                Ok(n) if n == buf.len() => ElfModule::from_bytes("[vdso]", buf).ok(),
                _ => None,
            }
        } else {
            // The path first; the process's own view of the file when the path does not
            // open (another mount namespace, a deleted file).
            let via_proc: PathBuf = format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                m.mappings[0].start, m.mappings[0].end
            )
            .into();
            ElfModule::from_path(&m.path)
                .or_else(|_| ElfModule::from_path(&via_proc))
                .ok()
        }
        .map(Arc::new);
        self.elf_cache.insert(key, parsed.clone());
        parsed
    }

    /// Brings a space's module list up to date with /proc/PID/maps: new modules are
    /// recorded, registered for unwinding and hooked; vanished ones are recorded as
    /// unloaded.
    fn rescan(&mut self, space_id: usize, tid: Tid) {
        let ts = self.now();
        let Some(owner) = self.spaces[space_id].as_ref().map(|s| s.owner) else {
            return;
        };
        let Ok(maps) = maps::read_maps(tid).or_else(|_| maps::read_maps(owner)) else {
            return;
        };
        let pid = self.tasks.get(&tid).map(|t| t.pid).unwrap_or(owner);
        let recording = self.procs.get(&pid).is_some_and(|p| p.recording);
        let groups = maps::group_modules(&maps);
        // Unloaded modules.
        {
            let space = self.spaces[space_id].as_mut().expect("live");
            let mut gone = Vec::new();
            space.modules.retain(|k| {
                let still = groups
                    .iter()
                    .any(|g| g.path == k.path && g.avma_range().start == k.start);
                if !still {
                    gone.push((k.path.clone(), k.bias, k.range.clone()));
                }
                still
            });
            for (path, bias, range) in gone {
                space.unwinder.remove_module(range.start);
                space.hooks.retain(|a, _| !range.contains(a));
                space.traps.retain(|_, entry| !range.contains(entry));
                if recording {
                    self.out.buf().push(Record::ModuleUnload {
                        ts,
                        pid: pid as u32,
                        base: bias,
                        path,
                    });
                }
            }
        }
        for g in &groups {
            if g.path.starts_with("/memfd:heaptape") {
                continue;
            }
            let start = g.avma_range().start;
            let known = self.spaces[space_id]
                .as_ref()
                .expect("live")
                .modules
                .iter()
                .any(|k| k.path == g.path && k.start == start);
            if known {
                continue;
            }
            let Some(elf) = self.elf(g, pid) else {
                continue;
            };
            let bias = if g.is_vdso() {
                elf.load_bias(&g.mappings).unwrap_or(start)
            } else {
                match elf.load_bias(&g.mappings) {
                    Some(b) => b,
                    None => continue,
                }
            };
            let km = KnownModule {
                path: g.path.clone(),
                start,
                range: g.avma_range(),
                bias,
                elf: elf.clone(),
            };
            if recording {
                self.out.buf().push(module_record(ts, pid, &km));
            }
            {
                let space = self.spaces[space_id].as_mut().expect("live");
                space.unwinder.add_module(&elf, bias, km.range.clone());
                space.modules.push(km);
            }
            if !g.is_vdso() {
                self.hook_module(space_id, tid, &elf, bias, g.avma_range());
            }
        }
    }

    fn hook_module(
        &mut self,
        space_id: usize,
        tid: Tid,
        elf: &ElfModule,
        bias: u64,
        range: Range<u64>,
    ) {
        let prefixes: Vec<&str> = self.prefixes.iter().map(|s| s.as_str()).collect();
        let mut sites: Vec<(u64, HookKind, String, u64)> = elf
            .hook_symbols(&prefixes)
            .into_iter()
            .map(|s| {
                (
                    s.vaddr.wrapping_add(bias),
                    HookKind::Alloc(s.spec),
                    s.name,
                    s.size,
                )
            })
            .collect();
        sites.extend(elf.resource_hooks().into_iter().map(|h| {
            (
                h.vaddr.wrapping_add(bias),
                HookKind::Resource(h.call),
                h.name,
                h.size,
            )
        }));
        if let Some(v) = elf.dl_debug_state() {
            sites.push((
                v.wrapping_add(bias),
                HookKind::DlDebugState,
                "_dl_debug_state".into(),
                0,
            ));
        }
        if sites.is_empty() {
            return;
        }
        let space = self.spaces[space_id].as_mut().expect("live");
        sites.retain(|(a, _, _, _)| !space.hooks.contains_key(a));
        let Some(probe) = space.probe.clone() else {
            return;
        };
        let need = sites.len() as u64 * TRAMPOLINE_BYTES;
        // Trampoline memory within reach of the module.
        let page = space
            .tramp_pages
            .iter_mut()
            .find(|(next, end)| end - *next >= need && next.abs_diff(range.start) < (1 << 30));
        let (mut next, end) = match page {
            Some(p) => (p.0, p.1),
            None => {
                let len = need.div_ceil(4096) * 4096;
                let mut held = Vec::new();
                let addr = inject::map_near(tid, &probe.borrow(), range.start, len, &mut held);
                if let Some(t) = self.tasks.get_mut(&tid) {
                    t.held.extend(held);
                }
                let space = self.spaces[space_id].as_mut().expect("live");
                match addr {
                    Ok(a) => {
                        space.tramp_pages.push((a, a + len));
                        (a, a + len)
                    }
                    Err(e) => {
                        self.stats
                            .hook_failures
                            .push(format!("{}: cannot map trampolines: {e}", elf.name()));
                        return;
                    }
                }
            }
        };
        let busy_ips = std::mem::take(&mut self.busy_ips);
        let probe_base = probe.borrow().code_addr;
        let space = self.spaces[space_id].as_mut().expect("live");
        let mut installed = 0;
        for (addr, kind, name, size) in sites {
            let mut code = [0u8; 16];
            if space.mem.read(addr, &mut code).is_err() {
                continue;
            }
            if code[0] == 0xcc {
                continue;
            }
            let patchable = !matches!(kind, HookKind::DlDebugState)
                && space.fast
                && jmp_patchable(&space.mem, addr, size, &busy_ips);
            if patchable {
                if let Some(hook) =
                    install_jmp_hook(&space.mem, addr, &code, next, probe_base, &kind)
                {
                    if let Some(t) = hook.trap {
                        space.traps.insert(t, addr);
                    }
                    space.hooks.insert(addr, hook);
                    next += TRAMPOLINE_BYTES;
                    installed += 1;
                    self.stats.jmp_hooks += 1;
                    continue;
                }
            }
            let disp = match relocate::displaced_copy(&code, addr, next) {
                Ok(d) => d,
                Err(e) => {
                    self.stats
                        .hook_failures
                        .push(format!("{name} in {}: {e}", elf.name()));
                    continue;
                }
            };
            if disp.bytes.len() as u64 > TRAMPOLINE_BYTES
                || space.mem.write(next, &disp.bytes).is_err()
            {
                continue;
            }
            if space.mem.write(addr, &[0xcc]).is_err() {
                continue;
            }
            space.hooks.insert(
                addr,
                Hook {
                    kind,
                    trampoline: next,
                    orig: vec![code[0]],
                    trap: None,
                },
            );
            next += TRAMPOLINE_BYTES;
            installed += 1;
        }
        self.busy_ips = busy_ips;
        if let Some(p) = space.tramp_pages.iter_mut().find(|p| p.1 == end) {
            p.0 = next;
        }
        self.stats.hooks += installed;
        if installed > 0 {
            self.stats.modules_hooked += 1;
        }
    }
}

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
            for tid in sys::list_threads(pid)? {
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
        let mut born: Vec<(Tid, i32)> = Vec::new();
        for &tid in &seized {
            loop {
                match sys::wait_with_timeout(tid, std::time::Duration::from_secs(5))? {
                    Some(WaitEvent::Event {
                        event: libc::PTRACE_EVENT_STOP,
                        ..
                    }) => {
                        stopped.insert(tid);
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
            let is_thread = event == libc::PTRACE_EVENT_CLONE
                && std::path::Path::new(&format!("/proc/{pid}/task/{child}")).exists();
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
        self.out.buf().push(Record::ProcessStart {
            ts,
            pid: pid as u32,
            parent_pid: None,
            origin: ProcessOrigin::Attached,
            command: read_cmdline(pid),
        });
        // Stopped threads run again at the end of the attach; threads born meanwhile
        // start at their own first stop, in the main loop.
        let threads = stopped
            .iter()
            .map(|&t| (t, true))
            .chain(new_threads.iter().map(|&t| (t, false)));
        for (tid, started) in threads {
            self.out.buf().push(Record::ThreadStart {
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
                live: LiveBlocks::default(),
                snapshot_done: false,
                open_fds: Default::default(),
                dead_stacks: Vec::new(),
            },
        );
        // Every thread is stopped: code can be patched and system calls injected.
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
        self.out.publish();
        for &tid in &stopped {
            self.resume(tid, 0);
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
                    if !matches!(
                        sig,
                        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                    ) {
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
            if !sigtrap_pending(tid) || sys::cont(tid, 0).is_err() {
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
                })
                .collect();
            let exclude = self.probe_range(pid);
            let alloc_mods = self.allocator_modules(pid);
            let ts = self.now();
            let mut recs = Vec::new();
            if let Some(p) = self.procs.get(&pid) {
                if let Err(e) = snapshot::take(
                    pid,
                    ts,
                    &states,
                    &p.live,
                    &SnapshotContext {
                        exclude: &exclude,
                        allocator_modules: &alloc_mods,
                        dead_stacks: &p.dead_stacks,
                    },
                    &mut recs,
                ) {
                    eprintln!("heaptape: warning: pid {pid}: snapshot failed: {e}");
                }
            }
            self.out.buf().extend(recs);
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
            let sig = deliver.get(&tid).copied().unwrap_or(0);
            let _ = sys::detach(tid, sig);
        }
        for (&pid, p) in self.procs.iter() {
            if p.recording {
                self.out.buf().push(Record::ProcessExit {
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
        self.out.publish();
    }

    fn space_of(&self, tid: Tid) -> Option<&Space> {
        let pid = self.tasks.get(&tid)?.pid;
        let space = self.procs.get(&pid)?.space;
        self.spaces.get(space)?.as_ref()
    }

    /// Paths of the modules of `pid` that define a hooked `malloc`.
    fn allocator_modules(&self, pid: Tid) -> Vec<String> {
        let Some(space) = self
            .procs
            .get(&pid)
            .and_then(|p| self.spaces.get(p.space))
            .and_then(|s| s.as_ref())
        else {
            return Vec::new();
        };
        space
            .modules
            .iter()
            .filter(|m| {
                space.hooks.iter().any(|(a, h)| {
                    m.range.contains(a)
                        && matches!(&h.kind, HookKind::Alloc(spec) if spec.func == AllocFn::Malloc)
                })
            })
            .map(|m| m.path.clone())
            .collect()
    }

    fn probe_range(&self, pid: Tid) -> Vec<Range<u64>> {
        self.procs
            .get(&pid)
            .and_then(|p| self.spaces.get(p.space))
            .and_then(|s| s.as_ref())
            .and_then(|s| s.probe.as_ref())
            .map(|p| {
                let a = p.borrow().code_addr;
                let probe: Range<u64> = a..a + crate::probe::TOTAL_LEN as u64;
                vec![probe]
            })
            .unwrap_or_default()
    }
}

fn module_record(ts: u64, pid: Tid, m: &KnownModule) -> Record {
    Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts,
        pid: pid as u32,
        path: m.path.clone(),
        build_id: m.elf.build_id().map(|b| b.to_vec()).unwrap_or_default(),
        base: m.bias,
        segments: m.elf.format_segments(m.bias),
    }))
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

/// The record(s) of a descriptor or mapping call that returned `rax` (`out`: the word
/// stored through the pipe array).
fn resource_record(
    p: &Pending,
    call: ResourceCall,
    args: &[u64; 6],
    detail: &str,
    rax: u64,
    out: u64,
) -> Option<Vec<Record>> {
    let (ts, tid, stack) = (p.ts, p.tid as u32, p.stack);
    let fd_open = |fd: i32, kind: FdKind, detail: String| Record::FdOpen {
        ts,
        tid,
        fd,
        kind,
        detail,
        stack,
    };
    let ret = rax as i64;
    Some(match call {
        ResourceCall::Close | ResourceCall::Munmap | ResourceCall::CloseRange { .. } => {
            return None
        }
        ResourceCall::Pipe => {
            if ret != 0 {
                return None;
            }
            let (r, w) = (out as u32 as i32, (out >> 32) as u32 as i32);
            vec![
                fd_open(r, FdKind::Pipe, "pipe (read end)".into()),
                fd_open(w, FdKind::Pipe, "pipe (write end)".into()),
            ]
        }
        ResourceCall::SocketPair => {
            if ret != 0 {
                return None;
            }
            let (a, b) = (out as u32 as i32, (out >> 32) as u32 as i32);
            vec![
                fd_open(a, FdKind::Socket, format!("{detail} pair")),
                fd_open(b, FdKind::Socket, format!("{detail} pair")),
            ]
        }
        ResourceCall::Fcntl => {
            let cmd = args[1] as i32;
            if (cmd != libc::F_DUPFD && cmd != libc::F_DUPFD_CLOEXEC) || (rax as i32) < 0 {
                return None;
            }
            vec![fd_open(rax as i32, FdKind::Dup, detail.to_string())]
        }
        ResourceCall::Mmap => {
            if (-4095..0).contains(&ret) || rax == u64::MAX {
                return None;
            }
            vec![Record::Mmap {
                ts,
                tid,
                address: rax,
                len: args[1],
                prot: args[2] as u32,
                flags: args[3] as u32,
                fd: args[4] as i32,
                stack,
            }]
        }
        ResourceCall::Mremap => {
            if (-4095..0).contains(&ret) || rax == u64::MAX {
                return None;
            }
            vec![Record::Mremap(Box::new(heaptape_format::Mremap {
                ts,
                tid,
                old_address: args[0],
                old_len: args[1],
                new_address: rax,
                new_len: args[2],
                stack,
            }))]
        }
        ResourceCall::Open { .. }
        | ResourceCall::Socket
        | ResourceCall::Accept
        | ResourceCall::Dup
        | ResourceCall::Special(_) => {
            let fd = rax as i32;
            if fd < 0 {
                return None;
            }
            let kind = match call {
                ResourceCall::Open { .. } => FdKind::File,
                ResourceCall::Socket | ResourceCall::Accept => FdKind::Socket,
                ResourceCall::Dup => FdKind::Dup,
                _ => FdKind::Special,
            };
            vec![fd_open(fd, kind, detail.to_string())]
        }
    })
}

/// A NUL-terminated string of the tracee (at most 4 KiB), lossily decoded.
fn read_c_string(tid: Tid, addr: u64) -> String {
    let mut buf = vec![0u8; 4096];
    let n = sys::read_memory(tid, addr, &mut buf).unwrap_or(0);
    let end = buf[..n].iter().position(|&b| b == 0).unwrap_or(n);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn socket_detail(domain: u64, ty: u64) -> String {
    let d = match domain as i32 {
        libc::AF_UNIX => "AF_UNIX",
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_NETLINK => "AF_NETLINK",
        _ => "AF_?",
    };
    let t = match (ty as i32) & 0xf {
        libc::SOCK_STREAM => "SOCK_STREAM",
        libc::SOCK_DGRAM => "SOCK_DGRAM",
        libc::SOCK_RAW => "SOCK_RAW",
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET",
        _ => "SOCK_?",
    };
    format!("socket({d}, {t})")
}

/// Reads a process's memory use (bytes) from /proc.
fn read_rss(pid: Tid, ts: u64) -> Option<Record> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|k| k * 1024);
    Some(Record::RssSample(Box::new(heaptape_format::RssSample {
        ts,
        pid: pid as u32,
        rss: kb("VmRSS:"),
        hwm: kb("VmHWM:"),
        anon: kb("RssAnon:"),
        file: kb("RssFile:"),
        pss,
    })))
}

/// A process's command line from /proc (empty if unreadable).
pub fn read_cmdline(pid: Tid) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the function at `addr` (`size` bytes per its symbol) can take a 5-byte `jmp`
/// at its entry: it is long enough, nothing in it branches into the bytes the jump
/// covers, and no thread stands inside them (`busy_ips`, when attaching). Otherwise it
/// gets a one-byte `int3`.
fn jmp_patchable(mem: &ProcMem, addr: u64, size: u64, busy_ips: &[u64]) -> bool {
    const MAX_SCAN: u64 = 64 * 1024;
    if size < JMP_LEN as u64 || size > MAX_SCAN {
        return false;
    }
    let mut body = vec![0u8; size as usize];
    if mem.read(addr, &mut body).is_err() {
        return false;
    }
    // The instructions the jump displaces (at least 5 bytes of them).
    let Some(covered) = relocate::displaced_block(&body, addr, addr, JMP_LEN)
        .ok()
        .map(|d| d.displaced_len)
    else {
        return false;
    };
    let inside = |ip: u64| ip > addr && ip < addr + covered as u64;
    !relocate::branches_into(&body, addr, covered) && !busy_ips.iter().any(|&ip| inside(ip))
}

/// Writes the entry trampoline and displaced block for the function at `addr` into the
/// hook's trampoline space at `at`, then patches the entry with a `jmp` to it. `None`
/// (nothing patched) if the function's first instructions cannot be displaced.
fn install_jmp_hook(
    mem: &ProcMem,
    addr: u64,
    code: &[u8; 16],
    at: u64,
    probe_base: u64,
    kind: &HookKind,
) -> Option<Hook> {
    let displaced_at = at + probe_area::ENTRY_TRAMPOLINE_LEN;
    let disp = relocate::displaced_block(code, addr, displaced_at, JMP_LEN).ok()?;
    if disp.bytes.len() as u64 > TRAMPOLINE_BYTES - probe_area::ENTRY_TRAMPOLINE_LEN {
        return None;
    }
    let tramp = probe_area::entry_trampoline(at, probe_base, addr, displaced_at).ok()?;
    if tramp.code.len() as u64 > probe_area::ENTRY_TRAMPOLINE_LEN {
        return None;
    }
    mem.write(at, &tramp.code).ok()?;
    mem.write(displaced_at, &disp.bytes).ok()?;
    let rel = (at as i64 - (addr as i64 + JMP_LEN as i64)) as i32;
    let mut patch = [0u8; JMP_LEN];
    patch[0] = 0xe9;
    patch[1..].copy_from_slice(&rel.to_le_bytes());
    // An int3 first, so that a thread running into the entry meanwhile stops (and is
    // sent to the displaced block like at any breakpoint) instead of running a half
    // written jump; then the displacement; then the jump's opcode.
    mem.write(addr, &[0xcc]).ok()?;
    mem.write(addr + 1, &patch[1..]).ok()?;
    mem.write(addr, &patch[..1]).ok()?;
    Some(Hook {
        kind: kind.clone(),
        trampoline: displaced_at,
        orig: code[..disp.displaced_len].to_vec(),
        trap: Some(tramp.trap),
    })
}

/// Whether `tid` sees the same thread ids as the tracer (gettid in an entry trampoline
/// must name the tid the tracer knows it by).
fn same_pid_namespace(tid: Tid) -> bool {
    proc_status_field(tid, "NSpid:").is_some_and(|v| v.split_whitespace().count() == 1)
}

/// The value of line `name` (with its colon) of /proc/TID/status.
fn proc_status_field(tid: Tid, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

/// The mapping holding `tid`'s stack (where its stack pointer is now).
fn thread_stack(tid: Tid) -> Option<Range<u64>> {
    let rsp = sys::get_regs(tid).ok()?.rsp;
    let maps = maps::read_maps(tid).ok()?;
    maps.iter().find(|m| m.contains(rsp)).map(|m| m.range())
}

/// Whether a SIGTRAP is pending for thread `tid` itself (not yet dequeued).
fn sigtrap_pending(tid: Tid) -> bool {
    proc_status_field(tid, "SigPnd:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTRAP - 1)) != 0)
}
