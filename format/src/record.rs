//! The logical records a trace holds.
//!
//! These are the types the recorder produces and the analyzer consumes. They carry
//! absolute values (timestamps in nanoseconds since the trace started, full addresses);
//! the compact delta encoding on disk lives in [`crate::wire`] and never leaks out.
//!
//! A trace may hold a whole process tree: process-level records carry a `pid`, and
//! per-call records carry the `tid` of the calling thread (the thread records bind each
//! tid to its process).

use serde::{Deserialize, Serialize};

/// Nanoseconds since the trace's start (the header's `start_time_unix_ns`), taken from
/// the clock named in [`Header::clock`].
pub type Timestamp = u64;

/// Identifier of a node in the stack trie. Node 0 is the root (the empty stack); every
/// other node is introduced by a [`StackNode`] record before it is first referenced.
pub type StackId = u32;

/// The trie root: an event whose stack is unknown or empty.
pub const EMPTY_STACK: StackId = 0;

/// The first record of every trace, stored uncompressed right after the magic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Version of the tool that wrote the trace, e.g. `"heaptape 0.1.0"`.
    pub tool_version: String,
    /// The recording command line (argv of the recorded program, or of `record --pid`).
    pub command: Vec<String>,
    /// Process id of the first recorded process.
    pub pid: u32,
    /// Wall-clock start of the recording, nanoseconds since the Unix epoch.
    pub start_time_unix_ns: u64,
    /// Host name of the machine that recorded.
    pub host: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Page size of the recorded machine in bytes.
    pub page_size: u32,
    /// Pointer size in bytes (8 on x86_64).
    pub pointer_size: u8,
    /// Clock used for [`Timestamp`]s.
    pub clock: ClockSource,
}

/// Where timestamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockSource {
    /// `CLOCK_MONOTONIC`, relative to the trace start.
    Monotonic,
    /// `CLOCK_BOOTTIME`, relative to the trace start.
    Boottime,
    /// Timestamps are synthetic (tests, converters).
    Synthetic,
}

/// The allocator entry point an event was recorded at.
///
/// The operator new/delete families are kept apart from the C functions so that the
/// analyzer can report mismatched pairs (`new` released by `free`, `new[]` by `delete`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum AllocFn {
    /// `malloc(size)`
    Malloc,
    /// `calloc(nmemb, size)`
    Calloc,
    /// `realloc(ptr, size)`
    Realloc,
    /// `reallocarray(ptr, nmemb, size)`
    Reallocarray,
    /// `free(ptr)`
    Free,
    /// `posix_memalign(&ptr, alignment, size)`
    PosixMemalign,
    /// `aligned_alloc(alignment, size)`
    AlignedAlloc,
    /// `memalign(alignment, size)`
    Memalign,
    /// `valloc(size)`
    Valloc,
    /// `pvalloc(size)`
    Pvalloc,
    /// `operator new(size_t)` and its nothrow and aligned variants.
    New,
    /// `operator new[](size_t)` and its nothrow and aligned variants.
    NewArray,
    /// `operator delete(void*)` and its sized and aligned variants.
    Delete,
    /// `operator delete[](void*)` and its sized and aligned variants.
    DeleteArray,
}

impl AllocFn {
    /// Every variant, in discriminant order.
    pub const ALL: [AllocFn; 14] = [
        AllocFn::Malloc,
        AllocFn::Calloc,
        AllocFn::Realloc,
        AllocFn::Reallocarray,
        AllocFn::Free,
        AllocFn::PosixMemalign,
        AllocFn::AlignedAlloc,
        AllocFn::Memalign,
        AllocFn::Valloc,
        AllocFn::Pvalloc,
        AllocFn::New,
        AllocFn::NewArray,
        AllocFn::Delete,
        AllocFn::DeleteArray,
    ];

    /// The C or C++ name of the entry point, as users know it.
    pub fn name(self) -> &'static str {
        match self {
            AllocFn::Malloc => "malloc",
            AllocFn::Calloc => "calloc",
            AllocFn::Realloc => "realloc",
            AllocFn::Reallocarray => "reallocarray",
            AllocFn::Free => "free",
            AllocFn::PosixMemalign => "posix_memalign",
            AllocFn::AlignedAlloc => "aligned_alloc",
            AllocFn::Memalign => "memalign",
            AllocFn::Valloc => "valloc",
            AllocFn::Pvalloc => "pvalloc",
            AllocFn::New => "operator new",
            AllocFn::NewArray => "operator new[]",
            AllocFn::Delete => "operator delete",
            AllocFn::DeleteArray => "operator delete[]",
        }
    }

    /// The family a block allocated by this function must be released by.
    pub fn family(self) -> AllocFamily {
        match self {
            AllocFn::New | AllocFn::Delete => AllocFamily::New,
            AllocFn::NewArray | AllocFn::DeleteArray => AllocFamily::NewArray,
            _ => AllocFamily::Malloc,
        }
    }
}

/// Which deallocation family a block belongs to (for mismatch reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AllocFamily {
    /// malloc/calloc/realloc/memalign..., released by free or realloc.
    Malloc,
    /// scalar `new`, released by scalar `delete`.
    New,
    /// array `new[]`, released by `delete[]`.
    NewArray,
}

/// One mapped segment of a module (a PT_LOAD mapping).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Start address in the process.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset of the mapping in the file.
    pub file_offset: u64,
    /// Protection bits: 1 = read, 2 = write, 4 = execute.
    pub prot: u8,
}

/// How a process came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessOrigin {
    /// Launched by the recorder.
    Launched,
    /// Attached to while running.
    Attached,
    /// fork() (or clone without CLONE_VM/CLONE_THREAD).
    Fork,
    /// vfork() or clone(CLONE_VM|CLONE_VFORK), e.g. posix_spawn.
    Vfork,
    /// clone() with CLONE_VM but not CLONE_THREAD.
    Clone,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// Exited normally with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
    /// Still running when the recorder detached.
    Detached,
}

/// What a file descriptor refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A file or directory opened by path.
    File,
    /// A socket.
    Socket,
    /// A pipe end.
    Pipe,
    /// eventfd, epoll, timerfd, signalfd, memfd, inotify and similar.
    Special,
    /// Duplicate of another descriptor.
    Dup,
    /// Unknown kind.
    Other,
}

/// What a root region of a reachability snapshot is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootKind {
    /// The general-purpose registers of a thread.
    Registers {
        /// The thread.
        tid: u32,
    },
    /// A thread's stack, from its stack pointer up.
    Stack {
        /// The thread.
        tid: u32,
    },
    /// A writable segment of a module (.data, .bss, relro).
    ModuleData {
        /// Path of the module.
        path: String,
    },
    /// Thread-local storage.
    Tls {
        /// The thread.
        tid: u32,
    },
    /// A writable anonymous mapping that holds no heap block.
    Anonymous,
}

/// A pointer found in memory: the word at `offset` (from the region's or block's start)
/// holds `target`, an address inside some live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// Byte offset of the word in its region or block.
    pub offset: u64,
    /// The value of the word.
    pub target: u64,
}

/// Counts written in the [`Record::End`] record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndCounts {
    /// Records written before the end record (all kinds).
    pub records: u64,
    /// Allocation-family events (`Alloc`, `Free`, `Realloc` records).
    pub alloc_events: u64,
    /// Chunks written before the one that holds the end record.
    pub chunks: u64,
}

/// A module (executable, shared library, vdso) was mapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleLoad {
    /// When.
    pub ts: Timestamp,
    /// The process.
    pub pid: u32,
    /// Path of the file, or a pseudo name such as `[vdso]`.
    pub path: String,
    /// GNU build-id, empty if none.
    pub build_id: Vec<u8>,
    /// Load bias: runtime address minus link-time address.
    pub base: u64,
    /// Its mapped segments.
    pub segments: Vec<Segment>,
}

/// mremap made by the program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mremap {
    /// When.
    pub ts: Timestamp,
    /// Calling thread.
    pub tid: u32,
    /// Old start.
    pub old_address: u64,
    /// Old length.
    pub old_len: u64,
    /// New start.
    pub new_address: u64,
    /// New length.
    pub new_len: u64,
    /// Call stack.
    pub stack: StackId,
}

/// A periodic sample of a process's memory use (bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssSample {
    /// When.
    pub ts: Timestamp,
    /// The process.
    pub pid: u32,
    /// VmRSS.
    pub rss: u64,
    /// VmHWM.
    pub hwm: u64,
    /// RssAnon.
    pub anon: u64,
    /// RssFile.
    pub file: u64,
    /// Pss, when the kernel provides it.
    pub pss: Option<u64>,
}

/// One thread's call stack at a snapshot ([`Record::SnapshotThread`]).
///
/// `frames[i]` is the lowest stack address of frame `i` of `stack` (innermost first):
/// frame `i` holds the stack words from `frames[i]` up to `frames[i + 1]`, the
/// outermost frame those from its start to the stack's end. The innermost node of
/// `stack` is the thread's instruction pointer plus one (stack nodes hold return
/// addresses, which readers look up minus one), the others the return addresses of
/// the frames that called it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotThread {
    /// The process.
    pub pid: u32,
    /// The thread.
    pub tid: u32,
    /// Its name (`/proc/PID/task/TID/comm`), empty when unknown.
    pub name: String,
    /// Its call stack: a stack trie node.
    pub stack: StackId,
    /// The lowest stack address of each frame of `stack`, innermost first.
    pub frames: Vec<u64>,
}

/// What asked for a reachability snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotTrigger {
    /// The process's end.
    Exit,
    /// `record --snapshot-every`.
    Periodic,
    /// SIGUSR2 sent to the recorder.
    Signal,
    /// The recorder detaching from the process.
    Detach,
}

impl SnapshotTrigger {
    /// The word reports use: `exit`, `periodic`, `signal`, `detach`.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotTrigger::Exit => "exit",
            SnapshotTrigger::Periodic => "periodic",
            SnapshotTrigger::Signal => "signal",
            SnapshotTrigger::Detach => "detach",
        }
    }
}

/// A root region and the pointers into live blocks found in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRoot {
    /// The process.
    pub pid: u32,
    /// What the region is.
    pub kind: RootKind,
    /// Its start address (0 for registers).
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Words that point into live blocks.
    pub pointers: Vec<Pointer>,
}

/// The symbols of some addresses of one module, resolved when the trace was made
/// (`heaptape record` appends them, see [`Record::Symbols`]), so that the trace reads
/// the same after the module's file was rebuilt or deleted, and on another machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleSymbols {
    /// The module's path, as its [`ModuleLoad`] records name it.
    pub path: String,
    /// Its GNU build-id, as its [`ModuleLoad`] records give it (empty if none).
    pub build_id: Vec<u8>,
    /// The names the frames refer to, by index: function names, source files.
    pub strings: Vec<String>,
    /// The addresses, in ascending order of [`SymbolizedAddress::address`].
    pub addresses: Vec<SymbolizedAddress>,
}

/// One address of a [`ModuleSymbols`] record and what it means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolizedAddress {
    /// The link-time address looked up: a return address of a recorded stack minus the
    /// module's load bias, minus 1 (inside the call instruction).
    pub address: u64,
    /// Its frames, innermost first: the calls inlined at that point, then the function
    /// containing it. Empty when nothing is known of the address.
    pub frames: Vec<SymbolFrame>,
}

/// One frame of a [`SymbolizedAddress`]. Names are indexes into
/// [`ModuleSymbols::strings`]; `None` when unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolFrame {
    /// The function's name, demangled.
    pub function: Option<u32>,
    /// The function's name as the object file spells it (mangled), when that differs.
    pub mangled: Option<u32>,
    /// The source file.
    pub file: Option<u32>,
    /// The source line.
    pub line: Option<u32>,
    /// Whether the compiler inlined this call into the next frame.
    pub inlined: bool,
}

/// One recorded thing. Every variant is versioned with the format: new variants go at
/// the end, existing ones never change shape within a major version.
///
/// A record is 48 bytes: the kinds whose fields would not fit (module loads, mremaps,
/// memory samples, snapshot roots: all rare) hold them in a box. A decoded chunk is a
/// vector of records, and the allocation events that fill it are written at the speed
/// of memory, so their size is the decoder's speed (96-byte records decoded 20% slower).
/// The boxed kinds encode exactly as struct variants would (postcard writes a newtype
/// variant's struct as the variant's fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A process entered the trace.
    ProcessStart {
        /// When.
        ts: Timestamp,
        /// Its pid.
        pid: u32,
        /// The pid of its parent, if that parent is in the trace.
        parent_pid: Option<u32>,
        /// How it started.
        origin: ProcessOrigin,
        /// Its command line, as far as known.
        command: Vec<String>,
    },
    /// A process replaced its image with execve.
    Exec {
        /// When.
        ts: Timestamp,
        /// The process.
        pid: u32,
        /// The new command line.
        command: Vec<String>,
    },
    /// A process ended (or was detached from).
    ProcessExit {
        /// When.
        ts: Timestamp,
        /// The process.
        pid: u32,
        /// How.
        status: ExitStatus,
    },
    /// A thread started (the main thread of a process too).
    ThreadStart {
        /// When.
        ts: Timestamp,
        /// Its process.
        pid: u32,
        /// Its thread id.
        tid: u32,
    },
    /// A thread ended.
    ThreadExit {
        /// When.
        ts: Timestamp,
        /// The thread.
        tid: u32,
    },
    /// A module (executable, shared library, vdso) was mapped.
    ModuleLoad(Box<ModuleLoad>),
    /// A module was unmapped.
    ModuleUnload {
        /// When.
        ts: Timestamp,
        /// The process.
        pid: u32,
        /// The load bias it was loaded at.
        base: u64,
        /// Its path.
        path: String,
    },
    /// A new stack trie node: `parent` plus one return address (the caller frame).
    StackNode {
        /// The node's id; ids are dense and increase by one from 1.
        id: StackId,
        /// The parent node (0 for outermost frames).
        parent: StackId,
        /// The return address (or the call site for the innermost frame).
        address: u64,
    },
    /// An allocation returned `address` (0 when it failed).
    Alloc {
        /// When the call entered.
        ts: Timestamp,
        /// Calling thread.
        tid: u32,
        /// Which entry point.
        func: AllocFn,
        /// The block returned (0 = failed).
        address: u64,
        /// Requested bytes (calloc: nmemb × size).
        size: u64,
        /// Requested alignment (0 when the function takes none).
        align: u64,
        /// Call stack.
        stack: StackId,
    },
    /// A block was released (free, delete, delete[]). `address` may be 0. With `func`
    /// realloc or reallocarray: the release part of a realloc that moved its block,
    /// written at the call's entry (ring recording), its `Alloc` part (same `func`) after
    /// the return.
    Free {
        /// When.
        ts: Timestamp,
        /// Calling thread.
        tid: u32,
        /// Which entry point.
        func: AllocFn,
        /// The pointer passed.
        address: u64,
        /// Call stack.
        stack: StackId,
    },
    /// realloc/reallocarray: `old_address` (maybe 0) resized to `size` at `new_address`
    /// (0 when it failed or when size was 0 and the block was freed).
    Realloc {
        /// When.
        ts: Timestamp,
        /// Calling thread.
        tid: u32,
        /// realloc or reallocarray.
        func: AllocFn,
        /// Pointer passed in.
        old_address: u64,
        /// Pointer returned.
        new_address: u64,
        /// Requested bytes.
        size: u64,
        /// Call stack.
        stack: StackId,
    },
    /// mmap made by the program.
    Mmap {
        /// When.
        ts: Timestamp,
        /// Calling thread.
        tid: u32,
        /// Address returned.
        address: u64,
        /// Length.
        len: u64,
        /// PROT_* bits.
        prot: u32,
        /// MAP_* flags.
        flags: u32,
        /// File descriptor (-1 for anonymous).
        fd: i32,
        /// Call stack.
        stack: StackId,
    },
    /// munmap made by the program.
    Munmap {
        /// When.
        ts: Timestamp,
        /// Calling thread.
        tid: u32,
        /// Start.
        address: u64,
        /// Length.
        len: u64,
        /// Call stack.
        stack: StackId,
    },
    /// mremap made by the program.
    Mremap(Box<Mremap>),
    /// A file descriptor was opened.
    FdOpen {
        /// When.
        ts: Timestamp,
        /// Calling thread.
        tid: u32,
        /// The descriptor.
        fd: i32,
        /// What it is.
        kind: FdKind,
        /// Path, socket type or other description.
        detail: String,
        /// Call stack.
        stack: StackId,
    },
    /// A file descriptor was closed.
    FdClose {
        /// When.
        ts: Timestamp,
        /// Calling thread.
        tid: u32,
        /// The descriptor.
        fd: i32,
        /// Call stack.
        stack: StackId,
    },
    /// A periodic sample of a process's memory use (bytes).
    RssSample(Box<RssSample>),
    /// A reachability snapshot of `pid` begins; the records up to the matching
    /// [`Record::SnapshotEnd`] describe the process at one instant.
    SnapshotBegin {
        /// When.
        ts: Timestamp,
        /// The process.
        pid: u32,
    },
    /// A root region and the pointers into live blocks found in it.
    SnapshotRoot(Box<SnapshotRoot>),
    /// The pointers into live blocks found inside the live block at `address`.
    SnapshotBlock {
        /// The process.
        pid: u32,
        /// The block's start.
        address: u64,
        /// Words that point into live blocks.
        pointers: Vec<Pointer>,
    },
    /// The snapshot of `pid` is complete.
    SnapshotEnd {
        /// The process.
        pid: u32,
        /// Live blocks the snapshot covered.
        blocks: u64,
        /// Bytes of memory scanned.
        scanned_bytes: u64,
    },
    /// The last record of a complete trace.
    End {
        /// When.
        ts: Timestamp,
        /// Counts to check the trace against.
        counts: EndCounts,
    },
    /// An interior pointer into the block at `address`, at `offset`, matches memcheck's
    /// interior-pointer heuristics (the recorder evaluates them on the block's memory,
    /// which the trace does not carry). `matched` bits: 1 stdstring, 2 length64,
    /// 4 newarray, 8 multipleinheritance (see [`crate::heuristics`]). Written inside a snapshot, once per distinct
    /// (block, offset) that some pointer targets and that matches at least one.
    SnapshotHeuristic {
        /// The process.
        pid: u32,
        /// The block's start.
        address: u64,
        /// Offset of the interior pointer's target in the block.
        offset: u64,
        /// Which heuristics match.
        matched: u8,
    },
    /// The symbols of some addresses of one module (format version 3). Written after
    /// every other record but [`Record::End`], in chunks that hold nothing else (see
    /// docs/FORMAT.md); a module's addresses may be spread over several records.
    Symbols(Box<ModuleSymbols>),
    /// Inside a snapshot (format version 4): one thread's call stack at the snapshot,
    /// so that a stack root word can be named by the frame that holds it.
    SnapshotThread(Box<SnapshotThread>),
    /// Inside a snapshot, before its [`Record::SnapshotEnd`] (format version 4): why it
    /// was taken and how long the process was stopped for it.
    SnapshotInfo {
        /// The process.
        pid: u32,
        /// What asked for it.
        trigger: SnapshotTrigger,
        /// How long the process's threads were stopped, in nanoseconds (for a snapshot
        /// at exit: the time taken, as the process was ending anyway).
        pause_ns: u64,
    },
}

// The size the decoder's speed was measured with (see the enum's documentation).
const _: () = assert!(std::mem::size_of::<Record>() == 48);

impl Record {
    /// The record's timestamp, for the kinds that carry one.
    pub fn timestamp(&self) -> Option<Timestamp> {
        match self {
            Record::ProcessStart { ts, .. }
            | Record::Exec { ts, .. }
            | Record::ProcessExit { ts, .. }
            | Record::ThreadStart { ts, .. }
            | Record::ThreadExit { ts, .. }
            | Record::ModuleUnload { ts, .. }
            | Record::Alloc { ts, .. }
            | Record::Free { ts, .. }
            | Record::Realloc { ts, .. }
            | Record::Mmap { ts, .. }
            | Record::Munmap { ts, .. }
            | Record::FdOpen { ts, .. }
            | Record::FdClose { ts, .. }
            | Record::SnapshotBegin { ts, .. }
            | Record::End { ts, .. } => Some(*ts),
            Record::ModuleLoad(m) => Some(m.ts),
            Record::Mremap(m) => Some(m.ts),
            Record::RssSample(s) => Some(s.ts),
            Record::StackNode { .. }
            | Record::SnapshotRoot(_)
            | Record::SnapshotBlock { .. }
            | Record::SnapshotEnd { .. }
            | Record::SnapshotHeuristic { .. }
            | Record::Symbols(_)
            | Record::SnapshotThread(_)
            | Record::SnapshotInfo { .. } => None,
        }
    }

    /// Whether this is an allocator event (counted in [`EndCounts::alloc_events`]).
    pub fn is_alloc_event(&self) -> bool {
        matches!(
            self,
            Record::Alloc { .. } | Record::Free { .. } | Record::Realloc { .. }
        )
    }
}

impl Record {
    /// Whether this record owns heap memory (a path, a command line, a pointer list),
    /// i.e. whether dropping it does anything. Allocation events, stack nodes and thread
    /// starts and exits never do.
    #[inline]
    pub fn owns_heap(&self) -> bool {
        !matches!(
            self,
            Record::Alloc { .. }
                | Record::Free { .. }
                | Record::Realloc { .. }
                | Record::StackNode { .. }
                | Record::ThreadStart { .. }
                | Record::ThreadExit { .. }
        )
    }
}

/// Empties `records` like `Vec::clear`, keeping its capacity, but without running the
/// drop code of each record when none owns heap memory, which is what a reused decode
/// vector mostly holds: one inlined check per record instead of a call per record
/// (about a tenth of the cost of decoding a chunk of allocation events).
pub fn clear_records(records: &mut Vec<Record>) {
    if records.iter().any(Record::owns_heap) {
        records.clear();
    } else {
        // SAFETY: a length of 0 never exposes uninitialised elements; the elements are
        // forgotten instead of dropped, and none of them owns anything (checked above),
        // so nothing leaks either.
        #[allow(unsafe_code)]
        unsafe {
            records.set_len(0)
        };
    }
}

#[cfg(test)]
mod clear_tests {
    use super::*;

    #[test]
    fn clear_records_empties_and_keeps_capacity_with_or_without_heap_records() {
        let alloc = Record::Free {
            ts: 1,
            tid: 2,
            func: AllocFn::Free,
            address: 3,
            stack: 0,
        };
        let mut v = vec![alloc.clone(); 100];
        let cap = v.capacity();
        clear_records(&mut v);
        assert!(v.is_empty());
        assert_eq!(v.capacity(), cap);
        v.push(alloc);
        v.push(Record::ModuleUnload {
            ts: 1,
            pid: 2,
            base: 3,
            path: "/lib/x.so".repeat(100),
        });
        assert!(v[1].owns_heap() && !v[0].owns_heap());
        clear_records(&mut v);
        assert!(v.is_empty());
    }
}
