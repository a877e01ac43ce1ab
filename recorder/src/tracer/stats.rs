//! The session's counters, for the summary (`--stats`) and the benchmarks.

/// Counters about the session, for the summary and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct TracerStats {
    /// Every waitpid stop handled.
    pub stops: u64,
    /// Mappings of the recorder (probe memory, trampoline pages) unmapped at a detach or
    /// at an attach that found an earlier session's.
    pub leftovers_removed: u64,
    /// Allocator breakpoint stops.
    pub breakpoint_stops: u64,
    /// Allocator calls recorded (one per top-level call).
    pub recorded_calls: u64,
    /// Calls made from inside another hooked call (not recorded again).
    pub nested_calls: u64,
    /// Mapping calls a replacement allocator made for itself inside its calls (each one
    /// stops; not recorded, but its memory is left out of the snapshot's roots).
    pub allocator_mappings: u64,
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
    /// Return addresses in the recorded stacks.
    pub frames: u64,
    /// Of those, taken from the thread's last unwind, whose stack words were unchanged.
    pub frames_reused: u64,
    /// CPU time of the tracer thread, nanoseconds (user + system).
    pub tracer_cpu_ns: u64,
    /// Pointer words recorded by exit snapshots.
    pub snapshot_pointers: u64,
    /// Bytes of memory scanned by exit snapshots.
    pub snapshot_bytes: u64,
    /// Wall time spent taking snapshots, nanoseconds.
    pub snapshot_ns: u64,
    /// Snapshots taken while the program ran (`--snapshot-every`, SIGUSR2).
    pub snapshots_during_run: u64,
    /// Of those, the longest pause of a process (first interrupt to last thread
    /// resumed), nanoseconds.
    pub snapshot_pause_max_ns: u64,
    /// Of those, the pauses added up, nanoseconds.
    pub snapshot_pause_total_ns: u64,
    /// Snapshots during the run given up (a thread that did not stop, an exec, a vfork
    /// in progress).
    pub snapshots_skipped: u64,
    /// CPU time of the writer thread (encoding, compression, writing), nanoseconds.
    pub writer_cpu_ns: u64,
    /// Ring mode: calls recorded from the rings (no stop).
    pub ring_events: u64,
    /// Ring mode: threads given a ring.
    pub ring_threads: u64,
    /// Ring mode: times a thread waited for room in its ring (backpressure).
    pub ring_waits: u64,
    /// Ring mode: stacks whose unwind went past the copied bytes (cut there).
    pub ring_cut_stacks: u64,
    /// Ring mode: bytes of stack the trampolines copied, all events.
    pub ring_stack_bytes: u64,
    /// Ring mode: passes over the rings (each reads every ring's state once).
    pub ring_passes: u64,
    /// Ring mode: sleeps between passes.
    pub ring_sleeps: u64,
    /// Ring mode: most events held back at once to keep the allocator's order.
    pub ring_held_max: u64,
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
            "calls: {} recorded, {} nested (inside another allocator call), {} without a free return slot; {} allocator stops on the fast path (no register access); {} mapping calls an allocator made for itself",
            self.recorded_calls, self.nested_calls, self.slot_exhausted, self.fast_stops, self.allocator_mappings
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
            "stacks: {:.1} frames per call, {:.1} of them taken from the thread's last unwind (stack words unchanged)",
            per(self.frames),
            per(self.frames_reused)
        )?;
        writeln!(
            f,
            "ring: {} calls recorded without a stop from {} threads; {} bytes of stack copied per call; {} passes over the rings, {} sleeps; {} waits for room, {} stacks cut at the copy, at most {} events held for order",
            self.ring_events,
            self.ring_threads,
            self.ring_stack_bytes.checked_div(self.ring_events).unwrap_or(0),
            self.ring_passes,
            self.ring_sleeps,
            self.ring_waits,
            self.ring_cut_stacks,
            self.ring_held_max
        )?;
        writeln!(
            f,
            "snapshots: {} pointer words found in {} bytes scanned in {:.3} s",
            self.snapshot_pointers,
            self.snapshot_bytes,
            self.snapshot_ns as f64 / 1e9
        )?;
        writeln!(
            f,
            "snapshots during the run: {} taken ({} given up); pauses: max {:.3} ms, total {:.3} ms",
            self.snapshots_during_run,
            self.snapshots_skipped,
            self.snapshot_pause_max_ns as f64 / 1e6,
            self.snapshot_pause_total_ns as f64 / 1e6
        )?;
        write!(
            f,
            "hooks: {} sites in {} modules ({} through entry trampolines), {} signals passed on; {} recorder mappings removed",
            self.hooks, self.modules_hooked, self.jmp_hooks, self.signals_delivered, self.leftovers_removed
        )
    }
}
