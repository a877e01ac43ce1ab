//! From "an allocator call happened" to records in the trace file.
//!
//! An event source (today the ptrace tracer, [`crate::tracer`]; next, entry trampolines
//! writing into shared ring buffers drained without a stop) describes each call it sees
//! as a [`CallEvent`]: which thread, when, its arguments, and the registers and stack
//! bytes its call stack is recovered from. Everything after that is here, in this
//! order:
//!
//! 1. [`Pipeline::stack`]: unwinding ([`unwind`]) and interning the return addresses in
//!    the trace's stack trie ([`stacks`]), which emits the trie nodes seen for the first
//!    time;
//! 2. [`Pipeline::alloc_entry`] and [`AllocCall::record`]: the call's arguments decoded
//!    per the hook catalogue ([`CallKind`]) into the record written at its entry (a
//!    free) or, with its result, at its return (an allocation or a resize);
//! 3. the records go to the writer thread ([`writer`]), which encodes, compresses and
//!    writes them.
//!
//! A source that knows a call's result when it hands the call over runs the three steps
//! back to back; the ptrace source runs the first two at the call's entry stop and the
//! last one when it sees the result (at a later stop), because only the entry has the
//! stack. Either way the event borrows the stack bytes: nothing is copied or allocated
//! per call.

pub(crate) mod stacks;
pub(crate) mod unwind;
pub(crate) mod writer;

use heaptape_format::{AllocFn, Record, StackId};

use crate::hooks::catalogue::{CallKind, HookSpec};
use crate::sys::{self, Tid};
use stacks::StackTrie;
use unwind::{EntryRegs, StackUnwinder};
use writer::WriterThread;

/// A hooked call at its entry, as an event source saw it.
pub(crate) struct CallEvent<'a> {
    /// When (nanoseconds since the trace's start).
    pub(crate) ts: u64,
    /// The calling thread.
    pub(crate) tid: Tid,
    /// The registers the stack is unwound from: `rip` is the function's entry, `rsp`
    /// points at the return address.
    pub(crate) regs: EntryRegs,
    /// The argument registers: rdi, rsi, rdx, rcx, r8, r9.
    pub(crate) args: [u64; 6],
    /// A copy of the stack from `regs.rsp` up (may be short or empty; more is asked of
    /// the source's reader, see [`Pipeline::stack`]).
    pub(crate) stack: &'a [u8],
}

impl CallEvent<'_> {
    /// The call's return address: the first word of the stack copy (0 without one).
    pub(crate) fn return_address(&self) -> u64 {
        if self.stack.len() >= 8 {
            u64::from_le_bytes(self.stack[..8].try_into().unwrap())
        } else {
            0
        }
    }
}

/// An allocator call between its entry and its return: what its record still needs.
pub(crate) enum AllocCall {
    /// A new block (`posix`: the pointer comes back through `posix_memalign`'s out
    /// argument, the return value is an error code).
    Alloc {
        func: AllocFn,
        size: u64,
        align: u64,
        posix: bool,
        /// Through an entry point of several families ([`HookSpec::shared`]).
        shared: bool,
    },
    /// A resize of the block at `old`.
    Realloc { func: AllocFn, old: u64, size: u64 },
    /// A resize in place of the block at `ptr` to `size` bytes, which the call returns
    /// the usable size of (jemalloc's `xallocx`): done when that is at least `size`.
    Resize { func: AllocFn, ptr: u64, size: u64 },
    /// A new block holding a copy of a string (its size read from the block: the
    /// copy's length, at most `limit`, plus the terminator).
    Dup { func: AllocFn, limit: u64 },
    /// A free of the block at `address`: written at the entry already.
    Free { address: u64 },
}

/// Whether a realloc of `old` to `size` bytes that returned `new` released `old` and
/// did not resize it in place (glibc: `realloc(p, 0)` frees `p` and returns NULL; a
/// failed `realloc(p, n)` returns NULL and leaves `p` alone): such a realloc is written
/// as two records, the release (`Free`) and the new block (`Alloc`), each where the
/// allocator's order puts it.
pub(crate) fn realloc_moved(old: u64, new: u64, size: u64) -> bool {
    old != 0 && new != old && (new != 0 || size == 0)
}

/// The release part of a realloc that moved its block ([`realloc_moved`]): a `Free` of
/// `old` with the realloc's function, time and stack.
pub(crate) fn realloc_release(
    ts: u64,
    tid: Tid,
    stack: StackId,
    func: AllocFn,
    old: u64,
) -> Record {
    Record::Free {
        ts,
        tid: tid as u32,
        func,
        address: old,
        stack,
    }
}

impl AllocCall {
    /// The record of the call entered at `ts` by `tid` with stack `stack`, now that it
    /// returned `rax` (`out`: the word stored through `posix_memalign`'s out argument).
    /// `None` for a free (written at its entry).
    pub(crate) fn record(
        &self,
        ts: u64,
        tid: Tid,
        stack: StackId,
        rax: u64,
        out: u64,
    ) -> Option<Record> {
        Some(match *self {
            AllocCall::Alloc {
                func,
                size,
                align,
                posix,
                ..
            } => Record::Alloc {
                ts,
                tid: tid as u32,
                func,
                address: if posix {
                    if rax == 0 {
                        out
                    } else {
                        0
                    }
                } else {
                    rax
                },
                size,
                align,
                stack,
            },
            AllocCall::Realloc { func, old, size } => Record::Realloc {
                ts,
                tid: tid as u32,
                func,
                old_address: old,
                new_address: rax,
                size,
                stack,
            },
            AllocCall::Resize { func, ptr, size } => {
                if ptr == 0 || rax < size {
                    return None;
                }
                Record::Realloc {
                    ts,
                    tid: tid as u32,
                    func,
                    old_address: ptr,
                    new_address: ptr,
                    size,
                    stack,
                }
            }
            AllocCall::Dup { func, limit } => Record::Alloc {
                ts,
                tid: tid as u32,
                func,
                address: rax,
                size: if rax == 0 {
                    0
                } else {
                    string_len(tid, rax, limit) + 1
                },
                align: 0,
                stack,
            },
            AllocCall::Free { .. } => return None,
        })
    }
}

/// The length of the NUL-terminated string at `addr` in `tid`'s memory, at most `limit`
/// and 16 MiB (read in pages; an unreadable page ends it).
fn string_len(tid: Tid, addr: u64, limit: u64) -> u64 {
    let limit = limit.min(1 << 24);
    let mut buf = [0u8; 4096];
    let mut len = 0u64;
    while len < limit {
        let at = addr.wrapping_add(len);
        // To the end of the page, so that a read never crosses into an unmapped one.
        let room = (4096 - (at % 4096)).min(limit - len) as usize;
        let n = sys::read_memory(tid, at, &mut buf[..room]).unwrap_or(0);
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == 0) {
            return len + i as u64;
        }
        len += n as u64;
    }
    len.min(limit)
}

/// Everything after the event source: unwinder output to the stack trie, records to the
/// writer thread.
pub(crate) struct Pipeline {
    out: WriterThread,
    trie: StackTrie,
    /// The frames of the call being recorded (reused).
    frames: Vec<u64>,
    /// Frames per stack.
    max_depth: usize,
    /// Frames unwound, all stacks (for `--stats`).
    pub(crate) frames_total: u64,
    /// Of those, frames taken from the thread's last unwind (for `--stats`).
    pub(crate) frames_reused: u64,
}

impl Pipeline {
    /// A pipeline writing to `out`, `max_depth` frames per stack.
    pub(crate) fn new(out: WriterThread, max_depth: usize) -> Pipeline {
        Pipeline {
            out,
            trie: StackTrie::new(),
            frames: Vec::with_capacity(128),
            max_depth,
            frames_total: 0,
            frames_reused: 0,
        }
    }

    /// The call stack of `ev` as a trie node: unwound by `unwinder` (the calling
    /// process's modules) from the event's stack copy, and past its end from
    /// `read_more(address)`; new trie nodes are written. Without a single frame, the
    /// return address stands for the stack.
    pub(crate) fn stack(
        &mut self,
        ev: &CallEvent<'_>,
        unwinder: &mut StackUnwinder,
        read_more: &mut dyn FnMut(u64) -> Option<u64>,
    ) -> StackId {
        let reused = unwinder.reused_frames();
        unwinder.unwind_thread(
            ev.tid as u32,
            ev.regs,
            ev.stack,
            ev.regs.rsp,
            self.max_depth,
            &mut self.frames,
            read_more,
        );
        self.frames_reused += unwinder.reused_frames() - reused;
        self.frames_total += self.frames.len() as u64;
        let ret = ev.return_address();
        if self.frames.is_empty() && ret != 0 && self.max_depth > 0 {
            self.frames.push(ret);
        }
        self.trie.intern(ev.tid, &self.frames, self.out.buf())
    }

    /// Decodes the arguments of the allocator call `ev` (a `spec` function, its stack
    /// `stack`) into what its record needs at the return, and the address its result
    /// is also stored at (`posix_memalign`'s out argument; 0 for the others). A free is
    /// written now, before the block is released.
    pub(crate) fn alloc_entry(
        &mut self,
        ev: &CallEvent<'_>,
        spec: HookSpec,
        stack: StackId,
    ) -> (AllocCall, u64) {
        let args = ev.args;
        let call = match spec.kind {
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
                AllocCall::Alloc {
                    func: spec.func,
                    size,
                    align,
                    posix: false,
                    shared: spec.shared,
                }
            }
            CallKind::PosixMemalign {
                align_arg,
                size_arg,
                ..
            } => AllocCall::Alloc {
                func: spec.func,
                size: args[size_arg],
                align: args[align_arg],
                posix: true,
                shared: spec.shared,
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
                AllocCall::Realloc {
                    func: spec.func,
                    old: args[ptr_arg],
                    size,
                }
            }
            CallKind::Mallocx {
                size_arg,
                flags_arg,
            } => {
                let lg = args[flags_arg] & 63;
                AllocCall::Alloc {
                    func: spec.func,
                    size: args[size_arg],
                    align: if lg == 0 { 0 } else { 1 << lg },
                    posix: false,
                    shared: spec.shared,
                }
            }
            CallKind::Resize { ptr_arg, size_arg } => AllocCall::Resize {
                func: spec.func,
                ptr: args[ptr_arg],
                size: args[size_arg],
            },
            CallKind::Dup { limit_arg } => AllocCall::Dup {
                func: spec.func,
                limit: limit_arg.map_or(u64::MAX, |a| args[a]),
            },
            CallKind::Free { ptr_arg } => {
                self.out.buf().push(Record::Free {
                    ts: ev.ts,
                    tid: ev.tid as u32,
                    func: spec.func,
                    address: args[ptr_arg],
                    stack,
                });
                AllocCall::Free {
                    address: args[ptr_arg],
                }
            }
        };
        let outptr = match spec.kind {
            CallKind::PosixMemalign { out_arg, .. } => args[out_arg],
            _ => 0,
        };
        (call, outptr)
    }

    /// Interns `addresses` (innermost first), a stack of thread `tid` that is not an
    /// allocator call's (a thread's stack at a snapshot): new trie nodes are written.
    pub(crate) fn intern(&mut self, tid: Tid, addresses: &[u64]) -> StackId {
        self.trie.intern(tid, addresses, self.out.buf())
    }

    /// The records waiting for the writer thread, to append to.
    pub(crate) fn buf(&mut self) -> &mut Vec<Record> {
        self.out.buf()
    }

    /// Hands the records so far to the writer thread.
    pub(crate) fn publish(&mut self) {
        self.out.publish()
    }

    /// The writer thread, to finish the trace with.
    pub(crate) fn into_writer(self) -> WriterThread {
        self.out
    }
}
