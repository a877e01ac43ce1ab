//! heaptape's recorder: runs a program under ptrace and writes a trace of every
//! allocator call with its call stack.
//!
//! The API is [`record`] with its [`RecordOptions`], [`RecordOutcome`] and
//! [`RecordError`]. [`low_level`] re-exports a few internals for the recorder's own
//! tests, examples and benchmarks; it is not a stable interface.
//!
//! How the pieces fit (see docs/ARCHITECTURE.md), in the order a call goes through them:
//!
//! ```text
//! sys.rs        every raw system interface (ptrace, waitpid, fork/exec, process
//!               memory, shared mappings, signals) and every `unsafe` block
//! procfs/       every /proc reader: maps (and modules), status, cmdline, ...
//! hooks/        catalogue (which functions), elf (where they are), patch (jmp/int3
//!               at their entries), relocate (their displaced first instructions)
//! tracee/       what the recorder places in the tracee: probe memory, entry
//!               trampolines, injected system calls
//! tracer/       the event source: the waitpid loop over the process tree; its hot
//!               path turns a stop into a CallEvent (mod, model, calls, resources,
//!               lifecycle, hooking, attach, stats)
//! events/       after the source: CallEvent -> unwind -> stack trie -> records ->
//!               writer thread -> trace file
//! snapshot/     the reachability snapshot at a process's exit, at the detach or
//!               during the run (live blocks, roots, pointer scan, interior-pointer
//!               heuristic verdicts)
//! ```
//!
//! Module dependencies point one way, without cycles: `tracer` uses every other module
//! and nothing uses it; `events` uses `hooks`; `hooks` uses `tracee` and `procfs`;
//! `snapshot` uses `procfs`; all of them use `sys`, which uses none.

// `unsafe` is confined to `sys`; see its module documentation.
#![deny(unsafe_code)]

mod addr_map;
mod events;
mod hooks;
mod procfs;
mod snapshot;
// Every `unsafe` block of the recorder is here; each one's invariants are documented
// beside it.
#[allow(unsafe_code)]
mod sys;
mod tracee;
mod tracer;

pub use tracer::TracerStats;

/// Internals re-exported for the recorder's own integration tests
/// (`recorder/tests/elf_unwind.rs`), examples and benchmarks: ELF reading, the hook
/// catalogue, displaced instructions, `/proc/PID/maps` parsing, the unwinder, and the
/// raw ptrace calls the stop-cost benchmarks time. Not a stable API.
pub mod low_level {
    pub use crate::events::unwind::{EntryRegs, StackUnwinder};
    pub use crate::hooks::catalogue::{CallKind, HookSymbol};
    pub use crate::hooks::elf::ElfModule;
    pub use crate::hooks::relocate::{displaced_copy, instruction_len, Displaced, RelocateError};
    pub use crate::procfs::maps::{group_modules, parse_maps, read_maps, MapEntry, MappedModule};
    pub use crate::sys::{
        allowed_cpus, cont, get_regs, idle_thread_priority, pin_current_thread, read_memory,
        set_regs, spawn_seized, wait_blocking, SharedMap, WaitEvent,
    };
    /// The ring region, ring entry trampoline and drain (`recorder/tests/ring_trampoline.rs`
    /// runs the generated code in-process).
    pub use crate::tracee::ring;
}

use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use heaptape_format::{ClockSource, ExitStatus, Header, ModuleLoad, TraceWriter};

use crate::events::writer::WriterThread;
use crate::tracer::{Tracer, TracerConfig};

/// What `heaptape record` was asked to do.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// Trace file; default `heaptape.<program>.<pid>.trace` in the current directory.
    pub output: Option<PathBuf>,
    /// The program and its arguments.
    pub program: Vec<OsString>,
    /// Follow children into the trace.
    pub follow_children: bool,
    /// Frames per stack.
    pub max_depth: usize,
    /// Extra allocator symbol prefixes (`je_`, `mi_`...).
    pub allocator_prefixes: Vec<String>,
    /// Take a reachability snapshot at exit.
    pub snapshot: bool,
    /// Also take a snapshot of every recorded process this often while it runs (SIGUSR2
    /// sent to the recorder takes one at any time). Each stops the process for the time
    /// it takes (see docs/ARCHITECTURE.md, "Snapshots during the run").
    pub snapshot_every: Option<std::time::Duration>,
    /// Where the tracer, the program and the writer thread run.
    pub cpu_policy: CpuPolicy,
    /// Measure and report tracer statistics (stops per call, unwinding time).
    pub stats: bool,
    /// Interval between RSS samples; None disables sampling.
    pub rss_interval: Option<std::time::Duration>,
    /// Attach to this running process instead of launching `program`.
    pub attach: Option<u32>,
    /// How hooked calls reach the recorder.
    pub mode: RecordMode,
    /// When attached: stop recording (and detach) after this long.
    pub duration: Option<std::time::Duration>,
    /// Told of every module load as the recorder writes it (see [`ModuleHook`]).
    pub on_module_load: Option<ModuleHook>,
}

/// A function the recorder calls, on its own thread, with every module load it writes
/// (a module can be announced more than once: at a fork, at an exec): `heaptape record`
/// starts reading the module's symbols on a thread of its own while the program runs,
/// so that embedding them at the end waits for little. It must return at once.
#[derive(Clone)]
pub struct ModuleHook(pub std::sync::Arc<dyn Fn(&ModuleLoad) + Send + Sync>);

impl std::fmt::Debug for ModuleHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModuleHook")
    }
}

/// How hooked allocator calls reach the recorder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordMode {
    /// Each call writes an event into its thread's ring in shared memory and goes on;
    /// the recorder drains the rings while the program runs. Calls that cannot take a
    /// ring (see docs/ARCHITECTURE.md) stop as in [`RecordMode::Stop`].
    #[default]
    Ring,
    /// Each call stops the program once (a ptrace stop), and the recorder reads it then.
    Stop,
}

/// CPU placement of the tracer and the traced program.
///
/// A ptrace stop wakes the tracer and then the tracee again; when the two sit on
/// different CPUs every stop costs two cross-CPU wake-ups, which on virtual machines is
/// several times the cost of the stop itself (docs/PERFORMANCE.md has the figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuPolicy {
    /// Leave placement to the scheduler.
    #[default]
    Free,
    /// Pin the tracer and the program to one CPU (the writer thread runs elsewhere).
    Same,
}

/// Why recording could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The program does not exist.
    #[error("{0}: command not found")]
    NotFound(String),
    /// The process to attach to does not exist.
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    /// The process to attach to is heaptape itself.
    #[error("cannot attach to pid {0}: that is this heaptape process")]
    Itself(u32),
    /// The process to attach to cannot be traced, for a reason /proc gives.
    #[error("cannot attach to pid {0} ({1}): {2}")]
    Untraceable(u32, String, String),
    /// The process to attach to belongs to another user.
    #[error("cannot attach to pid {0}: it belongs to another user; attaching to it needs root or CAP_SYS_PTRACE")]
    OtherUser(u32),
    /// The process to attach to is already traced.
    #[error("cannot attach to pid {0}: it is already being traced by pid {1} ({2}); detach the other tracer (debugger, strace) first")]
    AlreadyTraced(u32, u32, String),
    /// The program exists but cannot be executed.
    #[error("{0}: {1}")]
    NotExecutable(String, io::Error),
    /// The program is a script whose interpreter (its `#!` line) does not exist.
    #[error("{0}: bad interpreter {1}: no such file (the script's #! line names it)")]
    BadInterpreter(String, String),
    /// ptrace is refused.
    #[error("cannot trace {0}: ptrace is not permitted here ({1}). {advice}", advice = ptrace_advice())]
    PtraceDenied(String, io::Error),
    /// The trace file cannot be written.
    #[error("cannot write trace file {0}: {1}")]
    Output(PathBuf, io::Error),
    /// Anything else the operating system refused.
    #[error("{0}: {1}")]
    Os(&'static str, io::Error),
}

/// The interpreter a script's `#!` line names.
fn interpreter_of(script: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let n = std::io::Read::read(&mut std::fs::File::open(script).ok()?, &mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let interp = String::from_utf8_lossy(line);
    interp.split_whitespace().next().map(str::to_string)
}

/// Why ptrace may be refused on this machine, and what to change.
fn ptrace_advice() -> String {
    let tracer = procfs::tracer_pid("self");
    if tracer != 0 {
        return format!(
            "heaptape is itself being traced by pid {tracer} ({}), and a traced process cannot trace its children: run heaptape outside the debugger/strace",
            procfs::comm(tracer)
        );
    }
    match procfs::ptrace_scope() {
        Some(3) => "kernel.yama.ptrace_scope is 3 (ptrace disabled until reboot); set it to 1 or 0 at boot".into(),
        Some(2) => "kernel.yama.ptrace_scope is 2 (admin only): run as root or with CAP_SYS_PTRACE, or `sysctl kernel.yama.ptrace_scope=1`".into(),
        _ => "A seccomp filter or container policy blocks ptrace: in Docker add --cap-add=SYS_PTRACE (and --security-opt seccomp=unconfined on old versions)".into(),
    }
}

impl RecordError {
    /// The exit code `heaptape record` ends with (127/126 as a shell would).
    pub fn exit_code(&self) -> u8 {
        match self {
            RecordError::NotFound(_) | RecordError::BadInterpreter(..) => 127,
            RecordError::NotExecutable(..) => 126,
            _ => 1,
        }
    }
}

/// How a recording ended.
#[derive(Debug)]
pub struct RecordOutcome {
    /// How the program ended.
    pub status: Option<ExitStatus>,
    /// The trace file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Allocator events the trace file holds.
    pub events: u64,
    /// Allocator events recorded (more than `events` when writing failed).
    pub events_recorded: u64,
    /// Tracer counters.
    pub stats: TracerStats,
    /// Set when writing the trace failed (the trace ends early).
    pub write_error: Option<String>,
    /// Include the tracer statistics in the summary.
    pub show_stats: bool,
    /// What the trace's stacks refer to, for whoever symbolizes them next (`heaptape
    /// record` embeds their symbols in the trace).
    pub references: StackReferences,
}

/// The addresses a trace's stacks hold and the modules they may fall in: every
/// [`Record::StackNode`](heaptape_format::Record::StackNode) address and every
/// [`ModuleLoad`] the recorder wrote, gathered as they were written so that nobody needs
/// to read the trace again to symbolize it.
#[derive(Clone, Debug, Default)]
pub struct StackReferences {
    /// Stack node addresses, in the order written (each once: the trie is shared).
    pub addresses: Vec<u64>,
    /// Module loads, in the order written.
    pub modules: Vec<ModuleLoad>,
}

impl StackReferences {
    /// Notes what `rec`, a record written to the trace, refers to.
    #[inline]
    pub(crate) fn note(&mut self, rec: &heaptape_format::Record) {
        match rec {
            heaptape_format::Record::StackNode { address, .. } => self.addresses.push(*address),
            heaptape_format::Record::ModuleLoad(m) => self.modules.push((**m).clone()),
            _ => {}
        }
    }
}

impl RecordOutcome {
    /// The one-paragraph summary printed to stderr.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "heaptape: recorded {} allocator calls into {} ({})",
            self.events,
            self.path.display(),
            heaptape_format::units::bytes(self.bytes)
        );
        if let Some(e) = &self.write_error {
            s.push_str(&format!(
                "\nheaptape: error: {e}; the trace ends at the failure and is still readable: it holds {} of the {} allocator calls recorded",
                self.events, self.events_recorded
            ));
        }
        if self.show_stats {
            for line in self.stats.to_string().lines() {
                s.push_str(&format!("\nheaptape: {line}"));
            }
        }
        for f in &self.stats.hook_failures {
            s.push_str(&format!("\nheaptape: warning: not hooked: {f}"));
        }
        s.push_str(&format!(
            "\nheaptape: analyze with: heaptape analyze {}",
            shell_quote(&self.path)
        ));
        s
    }

    /// The exit code: the program's (128+N for a signal), or 1 when the program
    /// succeeded but the trace could not be written.
    pub fn exit_code(&self) -> u8 {
        let code = match self.status {
            Some(ExitStatus::Code(c)) => c as u8,
            Some(ExitStatus::Signal(n)) => (128 + n) as u8,
            Some(ExitStatus::Detached) => 0,
            None => 1,
        };
        if code == 0 && self.write_error.is_some() {
            1
        } else {
            code
        }
    }
}

fn shell_quote(p: &Path) -> String {
    let s = p.display().to_string();
    shlex::try_quote(&s).map_or(s.clone(), |q| q.into_owned())
}

/// Finds `program` like execvp would: as a path if it has a slash, else in $PATH.
fn resolve_program(program: &OsString) -> Result<PathBuf, RecordError> {
    let name = program.to_string_lossy().into_owned();
    let check = |p: &Path| -> Option<Result<PathBuf, RecordError>> {
        let meta = std::fs::metadata(p).ok()?;
        if meta.is_dir() {
            return Some(Err(RecordError::NotExecutable(
                name.clone(),
                io::Error::from_raw_os_error(libc::EISDIR),
            )));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Some(Err(RecordError::NotExecutable(
                name.clone(),
                io::Error::from_raw_os_error(libc::EACCES),
            )));
        }
        Some(Ok(p.to_path_buf()))
    };
    if program.as_bytes().contains(&b'/') {
        return check(Path::new(program)).unwrap_or(Err(RecordError::NotFound(name)));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = None;
    for dir in std::env::split_paths(&path) {
        match check(&dir.join(program)) {
            Some(Ok(p)) => return Ok(p),
            Some(Err(e)) => denied = denied.or(Some(e)),
            None => {}
        }
    }
    Err(denied.unwrap_or(RecordError::NotFound(name)))
}

fn program_stem(program: &OsString) -> String {
    let s = Path::new(program)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Checks that `path` can be created or written, without truncating it.
fn check_writable(path: &Path) -> Result<(), RecordError> {
    let existed = path.exists();
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| RecordError::Output(path.to_path_buf(), e))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Whether `pid` runs under another user than the recorder (and the recorder is not root).
fn owner_differs(pid: u32) -> bool {
    match (procfs::effective_uid("self"), procfs::effective_uid(pid)) {
        (Some(me), Some(them)) => me != 0 && me != them,
        _ => false,
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn tracer_config(opts: &RecordOptions) -> TracerConfig {
    TracerConfig {
        follow_children: opts.follow_children,
        max_depth: opts.max_depth,
        allocator_prefixes: opts.allocator_prefixes.clone(),
        measure_time: opts.stats,
        snapshot: opts.snapshot,
        snapshot_every: opts.snapshot_every.filter(|_| opts.snapshot),
        rss_interval: opts.rss_interval,
        ring: opts.mode == RecordMode::Ring,
        spin_wait: opts.mode == RecordMode::Stop && opts.cpu_policy == CpuPolicy::Free,
        on_module_load: opts.on_module_load.clone(),
    }
}

/// The tracer's tick: the RSS interval, or a tenth of the snapshot interval if shorter,
/// within 10..250 ms.
fn tick_ms(opts: &RecordOptions) -> u64 {
    let snapshots = opts.snapshot_every.map(|d| d / 10);
    opts.rss_interval
        .into_iter()
        .chain(snapshots)
        .min()
        .map(|d| (d.as_millis() as u64).clamp(10, 250))
        .unwrap_or(250)
}

/// Creates the trace file (mode 0600) with its header.
fn open_trace(
    path: &Path,
    command: Vec<String>,
    pid: u32,
) -> Result<TraceWriter<File>, RecordError> {
    let start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let (host, kernel) = sys::uname();
    let header = Header {
        tool_version: format!("heaptape {}", env!("CARGO_PKG_VERSION")),
        command,
        pid,
        start_time_unix_ns: start_unix,
        host,
        kernel,
        page_size: sys::page_size() as u32,
        pointer_size: 8,
        clock: ClockSource::Monotonic,
    };
    TraceWriter::create(path, &header).map_err(|e| RecordError::Output(path.to_path_buf(), e))
}

/// Launches `opts.program` under the recorder and records until every traced process
/// has exited, or attaches to `opts.attach` (see [`RecordOptions::attach`]).
pub fn record(opts: &RecordOptions) -> Result<RecordOutcome, RecordError> {
    if let Some(pid) = opts.attach {
        return record_attached(opts, pid);
    }
    let program = opts
        .program
        .first()
        .ok_or(RecordError::NotFound(String::new()))?;
    let path = resolve_program(program)?;
    // Output checks happen before the program starts.
    match &opts.output {
        Some(p) => check_writable(p)?,
        None => check_writable(Path::new(&format!(
            ".heaptape-check-{}",
            std::process::id()
        )))?,
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RecordError::NotFound(program.to_string_lossy().into_owned()))?;
    let argv: Vec<CString> = opts
        .program
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let command: Vec<String> = opts
        .program
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();

    // The writer thread is started after the fork, so pin it back to every CPU then.
    let all_cpus = sys::allowed_cpus();
    if opts.cpu_policy == CpuPolicy::Same {
        let cpu = all_cpus.last().copied().unwrap_or(0);
        sys::pin_current_thread(&[cpu]).map_err(|e| RecordError::Os("sched_setaffinity", e))?;
    }
    let t0 = sys::monotonic_ns();
    let pid = sys::spawn_seized(&c_path, &argv).map_err(|e| match e {
        sys::SpawnError::Os(what, err)
            if what.starts_with("ptrace") && err.raw_os_error() == Some(libc::EPERM) =>
        {
            RecordError::PtraceDenied(command[0].clone(), err)
        }
        sys::SpawnError::Os(what, err) => RecordError::Os(what, err),
        sys::SpawnError::Exec(err) => match err.raw_os_error() {
            // The file is there: what is missing is its interpreter.
            Some(libc::ENOENT) if path.exists() => match interpreter_of(&path) {
                Some(interp) => RecordError::BadInterpreter(command[0].clone(), interp),
                None => RecordError::NotExecutable(command[0].clone(), err),
            },
            Some(libc::ENOENT) => RecordError::NotFound(command[0].clone()),
            _ => RecordError::NotExecutable(command[0].clone(), err),
        },
    })?;
    let out_path = opts.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!("heaptape.{}.{pid}.trace", program_stem(program)))
    });
    let writer = match open_trace(&out_path, command.clone(), pid as u32) {
        Ok(w) => w,
        Err(e) => {
            sys::kill(pid, libc::SIGKILL);
            let _ = sys::wait_blocking(pid);
            return Err(e);
        }
    };
    let output = WriterThread::start(writer, all_cpus);
    let mut tracer = Tracer::new(tracer_config(opts), pid, output, t0);
    tracer.start_root(command);
    sys::install_tracer_signals(tick_ms(opts)).map_err(|e| RecordError::Os("sigaction", e))?;
    if opts.mode == RecordMode::Ring {
        sys::install_child_wakeup().map_err(|e| RecordError::Os("sigaction", e))?;
    }
    finish_recording(tracer, t0, out_path, opts)
}

/// Records a running process until Ctrl-C, SIGTERM, SIGHUP, `opts.duration` or its exit,
/// then detaches, leaving it running as before.
fn record_attached(opts: &RecordOptions, pid: u32) -> Result<RecordOutcome, RecordError> {
    if pid == std::process::id() {
        return Err(RecordError::Itself(pid));
    }
    if !procfs::exists(pid) {
        return Err(RecordError::NoSuchProcess(pid));
    }
    if let Some(why) = procfs::untraceable(pid)
        .filter(|w| !matches!(w, procfs::Untraceable::MoreCapabilities { .. }))
    {
        return Err(untraceable(pid, why));
    }
    let other = procfs::tracer_pid(pid);
    if other != 0 {
        return Err(RecordError::AlreadyTraced(pid, other, procfs::comm(other)));
    }
    let out_path = opts.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "heaptape.{}.{pid}.trace",
            sanitize(&procfs::comm(pid))
        ))
    });
    check_writable(&out_path)?;
    let t0 = sys::monotonic_ns();
    let writer = open_trace(&out_path, procfs::cmdline(pid as i32), pid)?;
    let output = WriterThread::start(writer, sys::allowed_cpus());
    let mut tracer = Tracer::new(tracer_config(opts), pid as i32, output, t0);
    sys::install_tracer_signals(tick_ms(opts)).map_err(|e| RecordError::Os("sigaction", e))?;
    if opts.mode == RecordMode::Ring {
        sys::install_child_wakeup().map_err(|e| RecordError::Os("sigaction", e))?;
    }
    if let Err(e) = tracer.attach(opts.duration) {
        // Release whatever was seized, then report why.
        tracer.detach_all();
        sys::uninstall_tracer_signals();
        sys::uninstall_child_wakeup();
        let end = sys::monotonic_ns().saturating_sub(t0);
        let _ = tracer.into_output().finish(end);
        let _ = std::fs::remove_file(&out_path);
        let io = match e {
            tracer::TraceError::Io(io) => io,
            other => io::Error::other(other.to_string()),
        };
        return Err(match io.raw_os_error() {
            Some(libc::EPERM) if owner_differs(pid) => RecordError::OtherUser(pid),
            Some(libc::EPERM) => match procfs::untraceable(pid) {
                Some(why) => untraceable(pid, why),
                None => RecordError::PtraceDenied(format!("pid {pid}"), io),
            },
            Some(libc::ESRCH) => RecordError::NoSuchProcess(pid),
            _ => RecordError::Os("attach", io),
        });
    }
    finish_recording(tracer, t0, out_path, opts)
}

/// The error for a process /proc says cannot be attached to.
fn untraceable(pid: u32, why: procfs::Untraceable) -> RecordError {
    use procfs::Untraceable::*;
    let text = match why {
        KernelThread => "it is a kernel thread, with no user-space heap to record".to_string(),
        Zombie => {
            "it has exited (a zombie its parent has not reaped yet): nothing to record".to_string()
        }
        LeaderExited { threads } => format!(
            "its main thread has exited (pthread_exit) while {threads} other thread(s) run \
             on, and the kernel lets no tracer attach to such a process"
        ),
        MoreCapabilities { its, ours } => format!(
            "it holds capabilities heaptape lacks (permitted {its}, heaptape's {ours}): run \
             heaptape with at least its privileges"
        ),
    };
    RecordError::Untraceable(pid, procfs::comm(pid), text)
}

/// Runs the tracer to its end (a panic inside it still detaches an attached process)
/// and closes the trace.
fn finish_recording(
    mut tracer: Tracer,
    t0: u64,
    out_path: PathBuf,
    opts: &RecordOptions,
) -> Result<RecordOutcome, RecordError> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tracer.run()));
    let run = match run {
        Ok(r) => r,
        Err(_) => {
            if tracer.is_attached() {
                tracer.detach_all();
            }
            Err(tracer::TraceError::Io(io::Error::other(
                "internal error (panic) in the tracer",
            )))
        }
    };
    sys::uninstall_tracer_signals();
    sys::uninstall_child_wakeup();
    let status = tracer.root_status();
    let stats = tracer.stats.clone();
    let end_ts = sys::monotonic_ns().saturating_sub(t0);
    let result = tracer.into_output().finish(end_ts);
    run.map_err(|e| RecordError::Os("tracing", io::Error::other(e.to_string())))?;
    let mut stats = stats;
    stats.writer_cpu_ns = result.cpu_ns;
    Ok(RecordOutcome {
        status,
        path: out_path,
        bytes: result.bytes,
        events: result.stored.alloc_events,
        events_recorded: stats.recorded_calls.max(result.counts.alloc_events),
        stats,
        write_error: result.error.map(|e| e.to_string()),
        show_stats: opts.stats,
        references: result.references,
    })
}
