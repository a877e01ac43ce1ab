//! Stack unwinding at an allocator's entry, from a copy of the tracee's stack.
//!
//! Every allocation the recorder sees comes with a call stack. At the
//! breakpoint on the allocator's first instruction the recorder has the
//! registers and a copy of the top of the stack, and turns them into return
//! addresses here. Unwinding uses the modules' DWARF CFI (`.eh_frame` with
//! its `.eh_frame_hdr` index) through `framehop`, whose rule cache makes the
//! common case, the same call sites again and again, a handful of table
//! look-ups per frame; where a module has no CFI the rule falls back to the
//! frame-pointer chain.
//!
//! This module never reads the tracee itself: stack words come from the copy,
//! and, past its end, from an optional caller-supplied closure (which the
//! recorder can implement with `process_vm_readv`).

use std::ops::Range;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use crate::hooks::elf::{ElfModule, SectionBytes};

/// The registers that matter for unwinding, as read at the breakpoint on an
/// allocator's first instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryRegs {
    /// Instruction pointer: the allocator's entry address (the breakpoint
    /// address, not the `rip` after the `int3`). Frame 0 is always at a
    /// function entry, so the unwind itself does not need it; it is kept for
    /// diagnostics and for callers that unwind from other points later.
    pub rip: u64,
    /// Stack pointer: points at the return address into the caller.
    pub rsp: u64,
    /// Frame pointer (used only where CFI is missing).
    pub rbp: u64,
}

/// A per-process unwinder: the process's modules plus a rule cache.
pub struct StackUnwinder {
    unwinder: UnwinderX86_64<SectionBytes>,
    /// framehop's rule caches, chosen by a hash of the address: one holds 509 rules,
    /// direct-mapped, and a compiler's deep stacks touch many more return addresses
    /// (cc1plus: unwinding + trie went from 2.35 to 1.38 us per call with 32; 128 gave
    /// no more).
    caches: Vec<CacheX86_64>,
    /// Each thread's last unwind, to reuse its outer frames (see [`Memo`]); a few
    /// direct-mapped slots keyed by thread.
    memos: Vec<Memo>,
    /// A spare memo, reused for the next unwind's record.
    spare: Memo,
    /// Bumped when a module comes or goes: memos of an older generation are stale.
    generation: u64,
    /// Frames taken from a thread's last unwind instead of unwound again.
    reused: u64,
}

/// A thread's last unwind, step by step, with every stack word each step read.
///
/// Unwinding is a function of the registers (ip, sp, bp) a step starts from, the words
/// it reads and the modules' rules. When a new unwind of the same thread reaches a state
/// a step of the last one started from, and every word read from that step on still
/// holds the same value, the rest of the unwind is the last one's: the outer frames of
/// a thread's stacks (its event loop, its request handler) are unwound once, not at
/// every call. redis-server under load reuses all but two or three frames.
#[derive(Default)]
struct Memo {
    /// Thread of the unwind (`u32::MAX`: none).
    thread: u32,
    /// [`StackUnwinder::generation`] when it was made.
    generation: u64,
    /// Return addresses, innermost first, as the unwind returned them.
    frames: Vec<u64>,
    /// `steps[k]`: the state the unwind of `frames[k + 1]` started from (the last one
    /// may be the step that ended the unwind).
    steps: Vec<Step>,
    /// Stack words read, in order: (address, value).
    reads: Vec<(u64, u64)>,
    /// The unwind stopped at `max_depth`, not at the end of the stack.
    by_depth: bool,
}

/// One unwind step's starting state and where its reads begin in [`Memo::reads`].
#[derive(Clone, Copy, PartialEq, Eq)]
struct Step {
    ip: u64,
    sp: u64,
    bp: u64,
    reads_from: u32,
}

/// Memo slots per unwinder.
const MEMOS: usize = 16;

impl Memo {
    fn empty() -> Memo {
        Memo {
            thread: u32::MAX,
            ..Memo::default()
        }
    }

    fn clear(&mut self) {
        self.thread = u32::MAX;
        self.frames.clear();
        self.steps.clear();
        self.reads.clear();
        self.by_depth = false;
    }
}

impl Default for StackUnwinder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StackUnwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackUnwinder")
            .field(
                "max_known_code_address",
                &self.unwinder.max_known_code_address(),
            )
            .finish_non_exhaustive()
    }
}

/// Rule caches per unwinder (see [`StackUnwinder`]'s `caches`).
const CACHES: usize = 32;

/// The rule cache of `address`: a hash uncorrelated with framehop's slot (`% 509`).
fn cache_of(address: u64) -> usize {
    ((address.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> (64 - CACHES.trailing_zeros())) as usize
}

impl StackUnwinder {
    /// An unwinder with no modules.
    pub fn new() -> Self {
        Self {
            unwinder: UnwinderX86_64::new(),
            caches: (0..CACHES).map(|_| CacheX86_64::new()).collect(),
            memos: (0..MEMOS).map(|_| Memo::empty()).collect(),
            spare: Memo::empty(),
            generation: 0,
            reused: 0,
        }
    }

    /// Register a module loaded at `bias` (runtime minus link-time address,
    /// see [`ElfModule::load_bias`]) and covering `avma_range` in the process
    /// (e.g. [`crate::procfs::maps::MappedModule::avma_range`]). Its `.eh_frame` and
    /// `.eh_frame_hdr` (or `.debug_frame`) are shared, not copied. A module
    /// without any CFI is still registered: addresses in it unwind through
    /// the frame pointer.
    pub fn add_module(&mut self, module: &ElfModule, bias: u64, avma_range: Range<u64>) {
        let section =
            |r: Option<&crate::hooks::elf::SectionRange>| r.and_then(|r| module.section_bytes(r));
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: module.text().map(|t| t.svma.clone()),
            text: None,
            got_svma: module.got_svma(),
            eh_frame_svma: module.eh_frame().map(|r| r.svma.clone()),
            eh_frame: section(module.eh_frame()),
            eh_frame_hdr_svma: module.eh_frame_hdr().map(|r| r.svma.clone()),
            eh_frame_hdr: section(module.eh_frame_hdr()),
            debug_frame: module.debug_frame(),
            stubs_svma: None,
            stub_helper_svma: None,
            unwind_info: None,
            text_segment_svma: None,
            text_segment: None,
        };
        let m = Module::new(module.name().to_string(), avma_range, bias, info);
        self.unwinder.add_module(m);
        self.generation += 1;
    }

    /// Frames taken so far from a thread's last unwind (see [`StackUnwinder::unwind_thread`]).
    pub fn reused_frames(&self) -> u64 {
        self.reused
    }

    /// Forget the module registered with an `avma_range` starting at
    /// `avma_start` (after `dlclose` or `munmap`).
    pub fn remove_module(&mut self, avma_start: u64) {
        self.unwinder.remove_module(avma_start);
        self.generation += 1;
    }

    /// Unwind from an allocator's entry using only the stack copy `stack`,
    /// whose first byte is at `stack_start` (normally `regs.rsp`). Appends
    /// to `out` (after clearing it) up to `max_depth` return addresses,
    /// innermost first: the first is the return address into the
    /// allocator's caller; the allocator's own frame is not included.
    /// The addresses are return addresses as found on the stack (subtract 1
    /// to look up the call instruction). A read outside the copy ends the
    /// unwind.
    pub fn unwind(
        &mut self,
        regs: EntryRegs,
        stack: &[u8],
        stack_start: u64,
        max_depth: usize,
        out: &mut Vec<u64>,
    ) {
        self.unwind_with(regs, stack, stack_start, max_depth, out, &mut |_| None);
    }

    /// Like [`StackUnwinder::unwind`], but a stack word outside the copy is
    /// asked of `read_more(address)` (e.g. `process_vm_readv` of the tracee);
    /// `None` ends the unwind.
    ///
    /// The unwind stops at `max_depth` frames, at a zero return address, at
    /// the end of the CFI (e.g. `_start`), when the stack pointer does not
    /// increase, or when a stack read fails.
    pub fn unwind_with(
        &mut self,
        regs: EntryRegs,
        stack: &[u8],
        stack_start: u64,
        max_depth: usize,
        out: &mut Vec<u64>,
        read_more: &mut dyn FnMut(u64) -> Option<u64>,
    ) {
        self.unwind_inner(None, regs, stack, stack_start, max_depth, out, read_more);
    }

    /// Like [`StackUnwinder::unwind_with`], for a stack of thread `thread`: the outer
    /// frames the thread's last unwind went through are reused when every stack word
    /// they were unwound from is unchanged (the same return addresses as a full unwind).
    #[allow(clippy::too_many_arguments)]
    pub fn unwind_thread(
        &mut self,
        thread: u32,
        regs: EntryRegs,
        stack: &[u8],
        stack_start: u64,
        max_depth: usize,
        out: &mut Vec<u64>,
        read_more: &mut dyn FnMut(u64) -> Option<u64>,
    ) {
        self.unwind_inner(
            Some(thread),
            regs,
            stack,
            stack_start,
            max_depth,
            out,
            read_more,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn unwind_inner(
        &mut self,
        thread: Option<u32>,
        regs: EntryRegs,
        stack: &[u8],
        stack_start: u64,
        max_depth: usize,
        out: &mut Vec<u64>,
        read_more: &mut dyn FnMut(u64) -> Option<u64>,
    ) {
        out.clear();
        if max_depth == 0 {
            return;
        }
        let stack_end = stack_start.saturating_add(stack.len() as u64);
        let mut read = |addr: u64| -> Result<u64, ()> {
            if addr >= stack_start && addr.checked_add(8).is_some_and(|e| e <= stack_end) {
                let off = (addr - stack_start) as usize;
                let word = stack.get(off..off + 8).ok_or(())?;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(word);
                Ok(u64::from_le_bytes(bytes))
            } else {
                read_more(addr).ok_or(())
            }
        };
        // Frame 0 needs no unwind information: at a function's first
        // instruction the return address is at rsp, and the caller's rsp is
        // 8 above it with rbp untouched. Doing it here also covers
        // allocators in modules without CFI, where framehop's frame-pointer
        // fallback would skip the caller.
        let Ok(ra) = read(regs.rsp) else {
            return;
        };
        let (Some(mut address), Some(sp)) = (
            FrameAddress::from_return_address(ra),
            regs.rsp.checked_add(8),
        ) else {
            return;
        };
        out.push(ra);
        let mut uregs = UnwindRegsX86_64::new(ra, sp, regs.rbp);
        // The thread's last unwind, if its modules are still the same.
        let slot = thread.map(|t| t as usize % MEMOS);
        let last = slot
            .map(|s| &self.memos[s])
            .filter(|m| Some(m.thread) == thread && m.generation == self.generation);
        let mut next = std::mem::take(&mut self.spare);
        next.clear();
        let mut j = 0;
        let mut failed = false;
        let mut reused = false;
        while out.len() < max_depth {
            let sp = uregs.sp();
            let step = Step {
                ip: uregs.ip(),
                sp,
                bp: uregs.bp(),
                reads_from: next.reads.len() as u32,
            };
            if let Some(m) = last {
                while j < m.steps.len() && m.steps[j].sp < sp {
                    j += 1;
                }
                if j < m.steps.len() && m.steps[j].same_state(&step) {
                    // From here the last unwind is this one if the words it read hold
                    // the same values, and it went deep enough.
                    // (A memo cut at its `max_depth` only serves while it reaches ours.)
                    let from = m.steps[j].reads_from as usize;
                    let rest = m.frames.len() - (j + 1);
                    let deep_enough = !m.by_depth || rest >= max_depth - out.len();
                    if deep_enough && m.reads[from..].iter().all(|&(a, v)| read(a) == Ok(v)) {
                        let take = rest.min(max_depth - out.len());
                        out.extend_from_slice(&m.frames[j + 1..j + 1 + take]);
                        // The steps of the frames taken; all of the rest (with the
                        // step that ended the unwind) unless cut at `max_depth`.
                        let steps = if take < rest { take } else { m.steps.len() - j };
                        let shift = next.reads.len() as i64 - from as i64;
                        next.steps
                            .extend(m.steps[j..j + steps].iter().map(|s| Step {
                                reads_from: (s.reads_from as i64 + shift) as u32,
                                ..*s
                            }));
                        next.reads.extend_from_slice(&m.reads[from..]);
                        next.by_depth = take < rest || m.by_depth;
                        self.reused += take as u64;
                        reused = true;
                        break;
                    }
                }
            }
            next.steps.push(step);
            let reads = &mut next.reads;
            let mut logged = |addr: u64| {
                let r = read(addr);
                match r {
                    Ok(v) => reads.push((addr, v)),
                    Err(()) => failed = true,
                }
                r
            };
            let Some((ra, next_address)) = unwind_step(
                &self.unwinder,
                &mut self.caches,
                address,
                &mut uregs,
                &mut logged,
            ) else {
                break;
            };
            out.push(ra);
            address = next_address;
        }
        if !reused {
            next.by_depth = out.len() == max_depth;
        }
        match (slot, thread) {
            (Some(s), Some(t)) if !failed => {
                next.thread = t;
                next.generation = self.generation;
                next.frames.clear();
                next.frames.extend_from_slice(out);
                self.spare = std::mem::replace(&mut self.memos[s], next);
            }
            _ => self.spare = next,
        }
    }
}

impl StackUnwinder {
    /// Unwinds a stopped thread from any instruction (`regs.rip`, not necessarily a
    /// function's entry), reading only `stack` (whose first byte is at `stack_start`).
    /// Appends up to `max_depth` frames to `out` (after clearing it), innermost first:
    /// (the return address found, the caller's stack pointer after that return).
    pub fn frames_from(
        &mut self,
        regs: EntryRegs,
        stack: &[u8],
        stack_start: u64,
        max_depth: usize,
        out: &mut Vec<(u64, u64)>,
    ) {
        out.clear();
        let stack_end = stack_start.saturating_add(stack.len() as u64);
        let mut read = |addr: u64| -> Result<u64, ()> {
            if addr < stack_start || addr.checked_add(8).is_none_or(|e| e > stack_end) {
                return Err(());
            }
            let off = (addr - stack_start) as usize;
            let word = stack.get(off..off + 8).ok_or(())?;
            Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
        };
        let mut address = FrameAddress::from_instruction_pointer(regs.rip);
        let mut uregs = UnwindRegsX86_64::new(regs.rip, regs.rsp, regs.rbp);
        while out.len() < max_depth {
            let Some((ra, next)) = unwind_step(
                &self.unwinder,
                &mut self.caches,
                address,
                &mut uregs,
                &mut read,
            ) else {
                break;
            };
            out.push((ra, uregs.sp()));
            address = next;
        }
    }
}

/// One unwind step from the frame at `address` with registers `uregs` (updated to the
/// caller's): the return address and the caller's frame address, or `None` where the
/// stack ends: no rule or a failed read, a zero return address, or a stack pointer that
/// did not move up (a loop).
fn unwind_step<F: FnMut(u64) -> Result<u64, ()>>(
    unwinder: &UnwinderX86_64<SectionBytes>,
    caches: &mut [CacheX86_64],
    address: FrameAddress,
    uregs: &mut UnwindRegsX86_64,
    read: &mut F,
) -> Option<(u64, FrameAddress)> {
    let sp = uregs.sp();
    let ra = unwinder
        .unwind_frame(
            address,
            uregs,
            &mut caches[cache_of(address.address())],
            read,
        )
        .ok()??;
    let next = FrameAddress::from_return_address(ra)?;
    (uregs.sp() > sp).then_some((ra, next))
}

impl Step {
    /// Whether both steps start from the same registers.
    fn same_state(&self, other: &Step) -> bool {
        (self.ip, self.sp, self.bp) == (other.ip, other.sp, other.bp)
    }
}
