//! Ring recording: hooked calls write their events into per-thread rings in the shared
//! probe memory instead of stopping; the recorder drains the rings while the program runs.
//!
//! This module is the groundwork of that mode: the layout of a *ring region*, the entry
//! trampoline that fills it ([`ring_entry_trampoline`]), and the recorder's side
//! ([`RingRegion`], [`Merger`]). Nothing here stops a thread on the hot path or makes a
//! system call there; the only system call in the generated code is a `futex` wait when
//! the thread's ring is full (backpressure).
//!
//! # Layout
//!
//! All offsets are bytes from the region's base, which can lie anywhere page-aligned in
//! the probe memory (e.g. after its data part). The region is mapped in the tracee (read-
//! write: the trampolines write it) and in the recorder ([`SharedMap`]).
//!
//! ```text
//! COUNTER_OFF = 0       u64 global sequence counter (own 128 bytes: no false sharing)
//! TABLE_OFF   = 128     thread-pointer table: TABLE_ENTRIES + PROBES slots of 16 bytes
//!                         { key: u64 thread pointer (0 empty, 1 tombstone),
//!                           area: u64 tracee address of the area + AREA_BIAS }
//! MAPPINGS_OFF          u32 (after the table): 1 when mapping calls made inside a
//!                         ring-recorded call go to the stop path (see
//!                         [`ring_gate_trampoline`]), 0 when they go straight through
//! AREAS_OFF   = 69632   areas[0..layout.areas], each HEADER_BYTES + layout.ring_bytes:
//!   +64  H_HEAD     u64  producer: end of the published entries (byte count, never wraps)
//!   +72  H_LEVEL    u32  producer: 1 while a hooked call of the thread is in flight
//!   +76  H_WAITING  u32  producer sets, recorder clears: 1 while it waits for space
//!   +80  H_CLAIM    u64  producer: lower bound of its unpublished sequence number, or
//!                        CLAIM_IDLE (u64::MAX) when it has none
//!   +88  H_NEXT     u64  producer-private: head once the entry being written is published
//!   +96  H_CUR      u64  producer-private: address of that entry (tracee view)
//!   +104 H_WAITS    u64  producer: how many futex waits it made (statistics)
//!   +192 H_TAIL     u64  recorder: end of the consumed entries (byte count); the futex
//!                        word is its low 32 bits
//!   +200 H_LO, +208 H_SPAN, +216 H_HI  u64  recorder: the thread's stack [lo, lo+span)
//!   +224 H_COUNTER  u64  recorder: tracee address of the counter
//!   +256 ring       layout.ring_bytes (a power of two), entries at (position mod size)
//! ```
//!
//! The producer's line (+64) and the recorder's line (+192) are 128 bytes apart, so the
//! adjacent-line prefetcher does not pair them; the trampoline addresses the area through
//! `area + AREA_BIAS` (= +192), which puts every field and the ring within an 8-bit
//! displacement (the code must fit [`RING_TRAMPOLINE_LEN`]). The table has no wrap-around:
//! a key hashing to slot `h` lives in `h..h+PROBES`, which the extra `PROBES` slots make
//! valid.
//!
//! ## Choices
//!
//! - [`DEFAULT_RING_BYTES`] = 2 MiB per thread. The recorder copies up to 8 KiB of stack
//!   per event (`tracer/ring.rs`), so a full entry is 8.3 KiB: 240 events of slack, ~740
//!   of cc1plus's typical ones (2.8 KiB). The ring absorbs the program's bursts of
//!   allocations while the recorder catches up; every time it is full the thread sleeps
//!   on a futex and the recorder wakes it, a cross-CPU wake-up on both sides. cc1plus
//!   (A/B, 11 interleaved rounds, session 13): 512 KiB 2.64x native, 1 MiB 2.03-2.09x,
//!   2 MiB 1.86x, 4 MiB 1.82x (session 8: 256 KiB waited 23,000 times in 827 k calls).
//!   Only touched pages use memory (the memfd is sparse), so idle threads cost nothing;
//!   a thread that allocates without pause cycles through its whole ring, 2 MiB of
//!   shared memory in the program's RSS (`RssShmem`, not `RssAnon`).
//!   [`RingLayout::ring_bytes`] is a parameter for the tests and for tuning.
//! - [`DEFAULT_AREAS`] = 256 threads alive at once take the ring path (512 MiB of address
//!   space per process, sparse); the others (and any thread whose slot window is full)
//!   take the stop path (`fallback`).
//! - `TABLE_ENTRIES` = 4096 for 256 areas: load at most 1/16, so 8 probes nearly never
//!   overflow; a multiplicative hash of the thread pointer (Fibonacci hashing, top 12 bits
//!   of `tp * HASH_MUL`) spreads the TCB addresses, which differ in their high bits.
//!
//! # Entry format
//!
//! Entries are 8-byte aligned, variable length, never straddle the ring's end (a *pad*
//! entry fills the rest of the ring when the next entry would not fit before the end).
//!
//! ```text
//! +0   word0: len u32 (whole entry, multiple of 8), kind u8 at +4, flags u8 at +5,
//!             +6..+8 unspecified. kind: KIND_PAD (0; only len is meaningful) or
//!             Publish::tag(); flags: FLAG_STACK_TOP (the copy reached the top of the
//!             thread's stack; else it was cut at stack_copy or at rsp's page end)
//! +8   E_ENTRY     the hooked function's entry address
//! +16  E_SEQ       sequence number (Both: the free part's)
//! +24  E_SEQ2      Both: the allocation part's sequence number
//! +32  E_RSP       rsp at the entry (pointing at the return address)
//! +40  E_RBP       rbp at the entry
//! +48  E_TSC       rdtsc at the entry (time axis only, never order)
//! +56  E_RESULT    rax after the return (AtReturn, AtReturnOutPtr, Both)
//! +64  E_RESULT2   *outptr (AtReturnOutPtr, meaningful when (u32) E_RESULT == 0)
//! +72  E_STACK_LEN bytes of stack copied
//! +80  E_ARGS      rdi, rsi, rdx, rcx at the entry
//! +112 the stack copy from E_RSP, then padding to 8
//! ```
//!
//! The trampoline saves rdi, rsi, rdx, rcx just below the entry's rsp, so one `rep movsb`
//! copies the arguments and the stack together (hence their place right before it).
//!
//! # Protocol
//!
//! One producer per ring (the thread owning the area), one consumer (the recorder).
//!
//! **Lookup.** The trampoline loads the thread pointer (`fs:[0]`, the TCB's self-pointer
//! in glibc and musl), scans its slot window until the key or an empty slot. The recorder
//! inserts a key by writing the area number, then the key (x86 stores are seen in program
//! order, so a reader that sees the key sees the area). It deletes a key by writing the
//! tombstone; slots never become empty again and an insertion takes the window's first
//! empty or tombstone slot, so a reader scanning for its own key never stops before it
//! (every slot before it was non-empty when it was inserted, and stays so). A thread not
//! in the table (not registered, window full, tp changed by a green-thread runtime) jumps
//! to `fallback` with every register as at the entry.
//!
//! **Publishing.** The producer writes the entry at `head` (after a pad entry if needed),
//! then stores the new `head` with a plain store: on x86 (TSO) stores become visible in
//! program order, so a consumer that reads `head` and then the entry sees it whole (a
//! producer that dies mid-write leaves `head` unpublished: its half entry is never read).
//! The consumer reads entries in `[tail, head)` in place and then stores `tail`; the
//! producer never writes below `tail + ring_bytes`.
//!
//! **Space.** Before it writes anything (and before it takes a sequence number, so a
//! waiting thread never holds back the watermark) the producer checks
//! `head + pad + len - tail <= ring_bytes`. If not: it sets `waiting`, `mfence`s, checks
//! again, and then loops on `futex(FUTEX_WAIT, &tail (low 32 bits), tail, 1 ms)` (a shared
//! futex: the two mappings of the memfd share it). The consumer stores `tail`, `mfence`s,
//! reads `waiting` and, if set, clears it and `FUTEX_WAKE`s (the Dekker pair makes a lost
//! wake-up impossible; the 1 ms timeout is a second safety net). The producer sets
//! `waiting` again, fenced, before each wait, so the consumer's clearing cannot hide one.
//! EINTR, EAGAIN and ETIMEDOUT just loop. Nothing is dropped. A [`Merger::round`] stores
//! `tail` as it goes (every 32 parts handed over), not only at its end, so a producer
//! that filled its ring runs again while the recorder works through the rest; it is
//! woken there only once a quarter of the ring is free (each wake-up costs both sides
//! a system call), and at the round's end in any case.
//!
//! **Sequence numbers.** A shared counter, taken with `lock xadd`, orders events across
//! threads the way the allocator saw them:
//! - [`Publish::AtEntry`] (free, cfree, operator delete): the number is taken and the
//!   entry published *before* the function runs, so a free of X precedes any allocation
//!   that hands X out again;
//! - [`Publish::AtReturn`] / [`Publish::AtReturnOutPtr`] (malloc, calloc, memalign,
//!   aligned_alloc, valloc, pvalloc, operator new / posix_memalign): taken *after* the
//!   function returned, then the result is stored and the entry published;
//! - [`Publish::Both`] (realloc, reallocarray): one number before the call (the free
//!   part) and one after (the allocation part), published after the return. The consumer
//!   replays the two parts at their own numbers ([`Part`]).
//!
//! **Claims and the watermark.** To take a number, the producer stores `claim = counter`
//! (a plain read of the counter: a lower bound of the number it is about to get), then
//! `lock xadd`s, then stores `claim = seq` (tighter; `AtReturn` skips this store, as it
//! publishes two stores later), and stores `claim = CLAIM_IDLE` after publishing. For `Both` the claim keeps the first number until the publication. So
//! `claim` is always a lower bound of the thread's unpublished numbers.
//!
//! *Drainer rule*: read the counter `G`, then every live area's claim `C_i`, then the
//! heads. `W = min(G, min_i C_i)` is a watermark: every event with a number below `W` is
//! published and visible at the heads read afterwards. (An event numbered `s < W <= G`
//! took `s` before the counter read; its claim store preceded its `lock xadd`, so the
//! claim read sees that store or a later one: its own `<= s < W` is excluded, so the read
//! saw `CLAIM_IDLE` stored after its publication, or a later event's claim.) Drain every
//! published entry, hand over those below `W` in number order, and hold back (copy) the
//! rest until a later `W` passes them ([`Merger`]). The numbers are dense: every number
//! below the counter belongs to exactly one event part, unless its thread died between
//! taking it and publishing (SIGKILL); [`RingRegion::unregister_thread`] clears the claim
//! of such a thread so the watermark moves on.
//!
//! **Nesting.** `level` is 1 from the start of the recording to the function's return:
//! hooked calls made meanwhile (operator new calling malloc, a signal handler that
//! interrupted the trampoline or the function) go straight to the function, unrecorded,
//! and never touch the ring, so a handler cannot corrupt an entry being written or wait
//! for space the interrupted code holds.

use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{compiler_fence, fence, Ordering};

use iced_x86::IcedError;

use crate::sys::SharedMap;

/// Offset of the global sequence counter in a ring region.
pub const COUNTER_OFF: usize = 0;
/// Offset of the thread-pointer table.
pub const TABLE_OFF: usize = 128;
/// log2 of the number of table slots that keys hash to.
pub const TABLE_BITS: u32 = 12;
/// Table slots keys hash to (the table has [`PROBES`] more, so windows never wrap).
pub const TABLE_ENTRIES: usize = 1 << TABLE_BITS;
/// Slots a lookup scans at most (from the key's hash slot).
pub const PROBES: usize = 8;
/// Bytes per table slot: key u64, area u32, padding.
pub const SLOT_BYTES: usize = 16;
/// Multiplier of the table's hash (2^64 / golden ratio).
pub const HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// Key of a slot never used.
pub const EMPTY_KEY: u64 = 0;
/// Key of a slot whose thread was unregistered (never a thread pointer).
pub const TOMBSTONE_KEY: u64 = 1;
/// Offset of the word that sends mapping calls nested in ring-recorded calls to the stop
/// path (u32, 1 or 0; see [`ring_gate_trampoline`]), right after the table.
pub const MAPPINGS_OFF: usize = TABLE_OFF + (TABLE_ENTRIES + PROBES) * SLOT_BYTES;
/// Offset of the first area.
pub const AREAS_OFF: usize = round_up(MAPPINGS_OFF + 64, 4096);

/// Area header: end of the published entries (producer).
pub const H_HEAD: usize = 64;
/// Area header: u32, 1 while a hooked call of the thread is in flight (producer).
pub const H_LEVEL: usize = 72;
/// Area header: u32, 1 while the producer waits for space (producer).
pub const H_WAITING: usize = 76;
/// Area header: lower bound of the producer's unpublished sequence numbers, or
/// [`CLAIM_IDLE`].
pub const H_CLAIM: usize = 80;
/// Area header: head once the entry being written is published (producer-private).
pub const H_NEXT: usize = 88;
/// Area header: tracee address of the entry being written (producer-private).
pub const H_CUR: usize = 96;
/// Area header: futex waits the producer made (statistics).
pub const H_WAITS: usize = 104;
/// Area header: end of the consumed entries (recorder); low 32 bits: the futex word.
pub const H_TAIL: usize = 192;
/// Area header: low end of the thread's stack (recorder).
pub const H_LO: usize = 200;
/// Area header: size of the thread's stack (recorder).
pub const H_SPAN: usize = 208;
/// Area header: high end of the thread's stack (recorder).
pub const H_HI: usize = 216;
/// Area header: tracee address of the region's sequence counter (recorder).
pub const H_COUNTER: usize = 224;
/// What a table slot's value points at: the area plus this bias, so that the trampoline
/// reaches every header field with an 8-bit displacement.
pub const AREA_BIAS: usize = 192;
/// Bytes of an area before its ring.
pub const HEADER_BYTES: usize = 256;
/// The claim word's value when the producer has no unpublished sequence number.
pub const CLAIM_IDLE: u64 = u64::MAX;

/// Entry: word0 (length, kind, flags).
pub const E_WORD0: usize = 0;
/// Entry: the hooked function's entry address.
pub const E_ENTRY: usize = 8;
/// Entry: sequence number (the free part's for [`Publish::Both`]).
pub const E_SEQ: usize = 16;
/// Entry: the allocation part's sequence number ([`Publish::Both`]).
pub const E_SEQ2: usize = 24;
/// Entry: rsp at the entry.
pub const E_RSP: usize = 32;
/// Entry: rbp at the entry.
pub const E_RBP: usize = 40;
/// Entry: time stamp counter at the entry.
pub const E_TSC: usize = 48;
/// Entry: rax after the return.
pub const E_RESULT: usize = 56;
/// Entry: `*outptr` after posix_memalign returned 0.
pub const E_RESULT2: usize = 64;
/// Entry: bytes of stack copied.
pub const E_STACK_LEN: usize = 72;
/// Entry: rdi, rsi, rdx, rcx at the entry (copied with the stack: they are saved just
/// below the entry's rsp).
pub const E_ARGS: usize = 80;
/// Entry: bytes before the stack copy.
pub const ENTRY_HEADER: usize = 112;
/// word0 flag: the stack copy reached the top of the thread's stack.
pub const FLAG_STACK_TOP: u8 = 1;
/// word0 kind of a pad entry.
pub const KIND_PAD: u8 = 0;

/// Default ring size per thread (see the module doc for the choice).
pub const DEFAULT_RING_BYTES: usize = 1 << 21;
/// Default number of areas (threads that take the ring path at once).
pub const DEFAULT_AREAS: u32 = 256;
/// Bytes reserved for a ring entry trampoline (its code is at most this long).
pub const RING_TRAMPOLINE_LEN: u64 = 512;
/// How long a producer waits on the futex before it looks at the ring again.
pub const WAIT_TIMEOUT_NS: i32 = 1_000_000;

const _: () = assert!(AREAS_OFF % 4096 == 0);
const _: () = assert!(MAPPINGS_OFF + 4 <= AREAS_OFF && MAPPINGS_OFF % 64 == 0);
const _: () = assert!(H_WAITS + 8 <= H_TAIL && H_TAIL - H_HEAD >= 128 && H_HEAD % 64 == 0);
const _: () = assert!(H_COUNTER + 8 <= HEADER_BYTES && H_TAIL % 64 == 0);
const _: () = assert!(ENTRY_HEADER == E_ARGS + 32 && E_STACK_LEN + 8 == E_ARGS);

const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Slot index a thread pointer hashes to (the first of its window).
pub fn table_hash(tp: u64) -> usize {
    (tp.wrapping_mul(HASH_MUL) >> (64 - TABLE_BITS)) as usize
}

/// Bytes of the largest entry a trampoline copying at most `stack_copy` bytes writes.
pub const fn max_entry(stack_copy: usize) -> usize {
    ENTRY_HEADER + round_up(stack_copy, 8)
}

/// Sizes of a ring region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Bytes of each thread's ring: a power of two, at most 1 GiB, and at least twice the
    /// largest entry of every trampoline writing into it (an entry plus the pad before it
    /// must fit in an empty ring).
    pub ring_bytes: usize,
    /// Number of areas.
    pub areas: u32,
}

impl Default for RingLayout {
    fn default() -> RingLayout {
        RingLayout {
            ring_bytes: DEFAULT_RING_BYTES,
            areas: DEFAULT_AREAS,
        }
    }
}

impl RingLayout {
    /// Bytes from one area to the next.
    pub fn stride(&self) -> usize {
        HEADER_BYTES + self.ring_bytes
    }

    /// Offset of `area` (from 0) in the region.
    pub fn area_off(&self, area: u32) -> usize {
        AREAS_OFF + area as usize * self.stride()
    }

    /// Bytes of the whole region (sparse: only touched pages use memory).
    pub fn region_len(&self) -> usize {
        self.area_off(self.areas)
    }

    fn check(&self, stack_copy: usize) {
        assert!(
            self.ring_bytes.is_power_of_two() && self.ring_bytes <= 1 << 30,
            "ring size must be a power of two up to 1 GiB"
        );
        assert!(
            self.ring_bytes >= 2 * max_entry(stack_copy),
            "ring too small for the stack copy"
        );
    }
}

/// When a hooked function's event takes its sequence number(s) and is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Publish {
    /// Before the call (functions that free: free, cfree, operator delete...).
    AtEntry,
    /// After the return, with the result (malloc, calloc, memalign, aligned_alloc,
    /// valloc, pvalloc, operator new...).
    AtReturn,
    /// As `AtReturn`, plus `*rdi` (the out-pointer) when the call returned 0
    /// (posix_memalign).
    AtReturnOutPtr,
    /// A number before the call (the free part) and one after (the allocation part),
    /// published after the return (realloc, reallocarray).
    Both,
}

impl Publish {
    /// The kind byte of word0.
    pub fn tag(self) -> u8 {
        match self {
            Publish::AtEntry => 1,
            Publish::AtReturn => 2,
            Publish::AtReturnOutPtr => 3,
            Publish::Both => 4,
        }
    }

    /// The variant with kind byte `tag`.
    pub fn from_tag(tag: u8) -> Option<Publish> {
        Some(match tag {
            1 => Publish::AtEntry,
            2 => Publish::AtReturn,
            3 => Publish::AtReturnOutPtr,
            4 => Publish::Both,
            _ => return None,
        })
    }
}

/// A ring entry trampoline assembled for its address.
#[derive(Debug, Clone)]
pub struct RingTrampoline {
    /// Machine code, at most [`RING_TRAMPOLINE_LEN`] bytes when its branch targets are
    /// within ±2 GiB (farther ones take 8 more bytes each, for an indirect branch).
    pub code: Vec<u8>,
}

/// Assembles the ring entry trampoline of the function at `entry`, to run at `at`, for a
/// ring region mapped in the tracee at `region_base` with `layout`; `displaced` runs the
/// function (its displaced first instructions, which jump back into it), `fallback` is
/// where unregistered threads go (the function's stop trampoline), `publish` says when
/// the event is numbered and published, `stack_copy` bounds the stack copy.
///
/// ```text
///   push rcx; push rdx; push rsi; push rdi    ; at R-32..R (R: rsp at the entry), E_ARGS order
///   push r11; push r10; push rax
///   rax = fs:[0]                              ; thread pointer
///   r11 = &table[(rax * HASH_MUL) >> 52]; r10 = r11 + PROBES slots
/// probe: if [r11] == rax: goto found
///   if [r11] == 0 or (r11 += 16) == r10: goto out        ; ZF=1
///   goto probe
/// out: pop rax, r10, r11, rdi, rsi, rdx, rcx               ; all as at the entry
///   ZF ? jmp fallback : jmp displaced
/// found:
///   r11 = [r11+8]                             ; area + AREA_BIAS
///   if level != 0: goto out (ZF=0)            ; nested: unrecorded, straight to the function
///   level = 1
///   rcx, r10 = stack length, FLAG_STACK_TOP or 0:
///     R in [lo, lo+span): min(hi - R, stack_copy), top if hi - R <= stack_copy
///     else:               min(4096 - R % 4096, stack_copy)      ; never past a mapping
///   rdx = ENTRY_HEADER + round8(rcx)          ; entry length
///   goto reserve
/// full:
///   if !waiting: waiting = 1; mfence; goto reserve         ; re-check after the flag
///   waits += 1; save rcx, rdx, r10, r11
///   futex(&tail, FUTEX_WAIT, (u32)tail, {0, 1 ms}); restore
/// reserve:
///   rax = head; pad = (head % ring + rdx > ring) ? ring - head % ring : 0
///   if head + pad + rdx - tail > ring: goto full
///   if pad: ring[head % ring] = pad (a pad entry); rax += pad
///   rdi = cur = &ring[rax % ring]; next = rax + rdx
///   word0 = rdx, kind, r10; entry; R; rbp; stack length rcx; rdtsc
///   AtEntry, Both: claim = [counter]; rax = lock xadd [counter], 1; claim = rax; seq = rax
///   rep movsb [rdi+E_ARGS], [R-32], rcx+32   ; the saved arguments, then the stack
///   sfence                                    ; string stores before the publishing store
///   AtEntry:       head = next; claim = IDLE
///   pop rax; pop r10; add rsp, 8; pop rdi; pop rsi; pop rdx; pop rcx  ; all as at the entry
///   push r11; call displaced; pop r11         ; the area's slot is where the saved rcx was
///   zero_first: if rax: [rax] = 0             ; see emit_zero_first
///   AtReturn*, Both: rdi = cur; result = rax
///     AtReturnOutPtr: if eax == 0: result2 = *args[0]
///     not Both: claim = [counter]
///     rcx = lock xadd [counter], 1; (Both ? seq2 : seq) = rcx
///     head = next; claim = IDLE
///   level = 0; ret
/// ```
///
/// Registers: the function gets rdi, rsi, rdx, rcx, r8, r9 and rax (al of variadic
/// calls) exactly as at the entry, and rsp 16 bytes lower (the trampoline's return address,
/// then the area, then the caller's return address): same alignment. r10 and r11
/// (scratch at a call in the SysV ABI) and the flags differ (DF stays clear). The caller
/// gets rax and rdx as the function returned them and every callee-saved register
/// untouched (the trampoline never writes rbx, rbp, r12-r15; a unit test checks the
/// code). `fallback` and the nested path get every register as at the entry, the flags
/// aside.
///
/// `zero_first` (a replacement allocator's functions that return a new block, not a
/// copy: see [`emit_zero_first`]) clears the first word of the block returned.
///
/// # Panics
/// If `layout` is invalid for `stack_copy` (see [`RingLayout::ring_bytes`]) or
/// `stack_copy` is 1 GiB or more.
#[allow(clippy::too_many_arguments)]
pub fn ring_entry_trampoline(
    layout: &RingLayout,
    at: u64,
    region_base: u64,
    entry: u64,
    displaced: u64,
    publish: Publish,
    stack_copy: usize,
    fallback: u64,
    zero_first: bool,
) -> Result<RingTrampoline, IcedError> {
    use iced_x86::code_asm::*;
    layout.check(stack_copy);
    assert!(stack_copy < 1 << 30, "stack copy too large");
    // r11 holds the area + AREA_BIAS: every header field is within a disp8.
    let h = |off: usize| off as i32 - AREA_BIAS as i32;
    let d = |off: usize| off as i32;
    let ring = layout.ring_bytes as i32;
    let mask = ring - 1;
    let sc = stack_copy as i32;
    // R, the entry's rsp, once the seven registers are saved; the saved rdi, rsi, rdx,
    // rcx lie at R-32..R, in the order of E_ARGS, right below the stack to copy.
    let r_off = 56;
    let args_off = r_off - 32;

    let mut a = CodeAssembler::new(64)?;
    let mut found = a.create_label();
    let mut miss = a.create_label();
    let mut page_rule = a.create_label();
    let mut clamp = a.create_label();
    let mut have_len = a.create_label();
    let mut reserve = a.create_label();
    let mut no_pad = a.create_label();
    let mut no_pad_entry = a.create_label();
    let mut full = a.create_label();
    let mut wait = a.create_label();
    let mut no_out = a.create_label();

    emit_lookup(
        &mut a,
        region_base,
        &mut found,
        &mut miss,
        displaced,
        fallback,
    )?;

    a.set_label(&mut found)?;
    a.mov(r11, qword_ptr(r11 + 8))?;
    a.cmp(dword_ptr(r11 + h(H_LEVEL)), 0)?;
    a.jne(miss)?;
    a.or(dword_ptr(r11 + h(H_LEVEL)), 1)?;

    // Stack length (rcx) and flag (r10).
    a.lea(rax, qword_ptr(rsp + r_off))?;
    a.mov(rcx, rax)?;
    a.sub(rcx, qword_ptr(r11 + h(H_LO)))?;
    a.xor(r10d, r10d)?;
    a.cmp(rcx, qword_ptr(r11 + h(H_SPAN)))?;
    a.jae(page_rule)?;
    a.mov(rcx, qword_ptr(r11 + h(H_HI)))?;
    a.sub(rcx, rax)?;
    a.inc(r10d)?; // FLAG_STACK_TOP
    a.jmp(clamp)?;
    a.set_label(&mut page_rule)?;
    a.mov(ecx, eax)?;
    a.not(ecx)?;
    a.and(ecx, 4095)?;
    a.inc(ecx)?; // 4096 - rsp % 4096
    a.set_label(&mut clamp)?;
    a.cmp(rcx, sc)?;
    a.jbe(have_len)?;
    a.xor(r10d, r10d)?;
    a.mov(ecx, sc as u32)?;
    a.set_label(&mut have_len)?;
    a.lea(rdx, qword_ptr(rcx + d(ENTRY_HEADER + 7)))?;
    a.and(rdx, -8)?;

    a.jmp(reserve)?;

    // Backpressure: the ring is full.
    a.set_label(&mut full)?;
    a.cmp(dword_ptr(r11 + h(H_WAITING)), 0)?;
    a.jne(wait)?;
    a.or(dword_ptr(r11 + h(H_WAITING)), 1)?;
    a.mfence()?;
    a.jmp(reserve)?;
    a.set_label(&mut wait)?;
    a.inc(qword_ptr(r11 + h(H_WAITS)))?;
    for r in [rcx, rdx, r10, r11] {
        a.push(r)?;
    }
    a.push(WAIT_TIMEOUT_NS)?; // tv_nsec
    a.push(0)?; // tv_sec
    a.mov(eax, libc::SYS_futex as u32)?;
    a.lea(rdi, qword_ptr(r11 + h(H_TAIL)))?;
    a.xor(esi, esi)?; // FUTEX_WAIT (shared: the recorder wakes it through its own mapping)
    a.mov(edx, dword_ptr(rdi))?;
    a.mov(r10, rsp)?;
    a.syscall()?; // clobbers rcx, r11
    a.add(rsp, 16)?;
    for r in [r11, r10, rdx, rcx] {
        a.pop(r)?;
    }

    // Reserve rdx bytes (plus a pad entry) at the head.
    a.set_label(&mut reserve)?;
    a.mov(rax, qword_ptr(r11 + h(H_HEAD)))?;
    a.mov(edi, eax)?;
    a.and(edi, mask)?;
    a.add(rdi, rdx)?;
    a.xor(esi, esi)?;
    a.cmp(rdi, ring)?;
    a.jbe(no_pad)?;
    a.mov(esi, ring as u32)?;
    a.sub(rsi, rdi)?;
    a.add(rsi, rdx)?;
    a.set_label(&mut no_pad)?;
    a.lea(rdi, qword_ptr(rax + rsi))?;
    a.add(rdi, rdx)?;
    a.sub(rdi, qword_ptr(r11 + h(H_TAIL)))?;
    a.cmp(rdi, ring)?;
    a.ja(full)?;
    a.test(rsi, rsi)?;
    a.jz(no_pad_entry)?;
    a.mov(edi, eax)?;
    a.and(edi, mask)?;
    a.mov(qword_ptr(r11 + rdi + h(HEADER_BYTES)), rsi)?;
    a.add(rax, rsi)?;
    a.set_label(&mut no_pad_entry)?;
    a.mov(edi, eax)?;
    a.and(edi, mask)?;
    a.lea(rdi, qword_ptr(r11 + rdi + h(HEADER_BYTES)))?;
    a.mov(qword_ptr(r11 + h(H_CUR)), rdi)?;
    a.add(rax, rdx)?;
    a.mov(qword_ptr(r11 + h(H_NEXT)), rax)?;

    // The entry.
    a.mov(dword_ptr(rdi + d(E_WORD0)), edx)?;
    a.mov(byte_ptr(rdi + d(E_WORD0 + 4)), publish.tag() as u32)?;
    a.mov(byte_ptr(rdi + d(E_WORD0 + 5)), r10b)?;
    a.mov(rax, entry)?;
    a.mov(qword_ptr(rdi + d(E_ENTRY)), rax)?;
    a.lea(rax, qword_ptr(rsp + r_off))?;
    a.mov(qword_ptr(rdi + d(E_RSP)), rax)?;
    a.mov(qword_ptr(rdi + d(E_RBP)), rbp)?;
    a.mov(qword_ptr(rdi + d(E_STACK_LEN)), rcx)?;
    a.rdtsc()?;
    a.mov(dword_ptr(rdi + d(E_TSC)), eax)?;
    a.mov(dword_ptr(rdi + d(E_TSC + 4)), edx)?;
    if matches!(publish, Publish::AtEntry | Publish::Both) {
        // Numbered before the call (and before the copy: the claim is held a little
        // longer, one load fewer).
        a.mov(rsi, qword_ptr(r11 + h(H_COUNTER)))?;
        a.mov(rax, qword_ptr(rsi))?;
        a.mov(qword_ptr(r11 + h(H_CLAIM)), rax)?;
        a.mov(eax, 1)?;
        a.lock().xadd(qword_ptr(rsi), rax)?;
        a.mov(qword_ptr(r11 + h(H_CLAIM)), rax)?;
        a.mov(qword_ptr(rdi + d(E_SEQ)), rax)?;
    }
    // The saved argument registers and the stack, in one copy.
    a.lea(rsi, qword_ptr(rsp + args_off))?;
    a.add(rdi, E_ARGS as i32)?;
    a.add(ecx, 32)?;
    a.rep().movsb()?; // DF is clear at a call (SysV ABI)
                      // Fast-string stores may be weakly ordered among themselves; keep them before the
                      // head store that publishes the entry (cheap insurance on AMD and Intel alike).
    a.sfence()?;

    if publish == Publish::AtEntry {
        a.mov(rax, qword_ptr(r11 + h(H_NEXT)))?;
        a.mov(qword_ptr(r11 + h(H_HEAD)), rax)?;
        a.or(qword_ptr(r11 + h(H_CLAIM)), -1)?;
    }
    a.pop(rax)?;
    a.pop(r10)?;
    a.add(rsp, 8)?; // the saved r11
    a.pop(rdi)?;
    a.pop(rsi)?;
    a.pop(rdx)?;
    a.pop(rcx)?;
    a.push(r11)?;
    a.call(displaced)?;
    a.pop(r11)?;
    if zero_first {
        emit_zero_first(&mut a)?;
    }
    if publish != Publish::AtEntry {
        a.mov(rdi, qword_ptr(r11 + h(H_CUR)))?;
        a.mov(qword_ptr(rdi + d(E_RESULT)), rax)?;
        if publish == Publish::AtReturnOutPtr {
            a.test(eax, eax)?;
            a.jnz(no_out)?;
            a.mov(rsi, qword_ptr(rdi + d(E_ARGS)))?;
            a.mov(rsi, qword_ptr(rsi))?;
            a.mov(qword_ptr(rdi + d(E_RESULT2)), rsi)?;
            a.set_label(&mut no_out)?;
        }
        a.mov(rsi, qword_ptr(r11 + h(H_COUNTER)))?;
        let both = publish == Publish::Both;
        if !both {
            a.mov(rcx, qword_ptr(rsi))?;
            a.mov(qword_ptr(r11 + h(H_CLAIM)), rcx)?;
        }
        a.mov(ecx, 1)?;
        a.lock().xadd(qword_ptr(rsi), rcx)?;
        a.mov(qword_ptr(rdi + d(if both { E_SEQ2 } else { E_SEQ })), rcx)?;
        a.mov(rcx, qword_ptr(r11 + h(H_NEXT)))?;
        a.mov(qword_ptr(r11 + h(H_HEAD)), rcx)?;
        a.or(qword_ptr(r11 + h(H_CLAIM)), -1)?;
    }
    a.and(dword_ptr(r11 + h(H_LEVEL)), 0)?;
    a.ret()?;

    let code = a.assemble(at)?;
    Ok(RingTrampoline { code })
}

/// Emits the clearing of the first word of the block a replacement allocator returned
/// in rax (when not NULL): tcmalloc and mimalloc hand out a block with their free list's
/// link to the next free block still in its first word, which the reachability snapshot
/// would take for the program's pointer (memcheck, whose allocator gives fresh blocks,
/// and which ignores words the program never wrote, never sees it). The block's bytes
/// are the program's to write before it reads them, so the program cannot tell.
/// Clobbers nothing but flags.
pub(crate) fn emit_zero_first(a: &mut iced_x86::code_asm::CodeAssembler) -> Result<(), IcedError> {
    use iced_x86::code_asm::*;
    let mut null = a.create_label();
    a.test(rax, rax)?;
    a.jz(null)?;
    a.mov(qword_ptr(rax), 0)?;
    a.set_label(&mut null)?;
    a.nop()?;
    Ok(())
}

/// Emits the thread-pointer lookup shared by [`ring_entry_trampoline`] and
/// [`ring_gate_trampoline`]: saves rcx, rdx, rsi, rdi, r11, r10, rax, finds the thread's
/// slot and jumps to `found` with r11 at the slot (`[r11 + 8]`: area + AREA_BIAS). Also
/// emits `miss`: every register restored, then `fallback` if ZF=1 (not registered) or
/// `displaced` if ZF=0 (nested).
fn emit_lookup(
    a: &mut iced_x86::code_asm::CodeAssembler,
    region_base: u64,
    found: &mut iced_x86::code_asm::CodeLabel,
    miss: &mut iced_x86::code_asm::CodeLabel,
    displaced: u64,
    fallback: u64,
) -> Result<(), IcedError> {
    use iced_x86::code_asm::*;
    let d = |off: usize| off as i32;
    let mut probe = a.create_label();
    for r in [rcx, rdx, rsi, rdi, r11, r10, rax] {
        a.push(r)?;
    }
    a.mov(rax, qword_ptr(0).fs())?;
    a.mov(r11, HASH_MUL)?;
    a.imul_2(r11, rax)?;
    a.shr(r11, 64 - TABLE_BITS)?;
    a.shl(r11, SLOT_BYTES.trailing_zeros())?;
    a.mov(r10, region_base + TABLE_OFF as u64)?;
    a.add(r11, r10)?;
    a.lea(r10, qword_ptr(r11 + d(PROBES * SLOT_BYTES)))?;
    a.set_label(&mut probe)?;
    a.cmp(qword_ptr(r11), rax)?;
    a.je(*found)?;
    a.cmp(qword_ptr(r11), EMPTY_KEY as i32)?;
    a.je(*miss)?;
    a.add(r11, SLOT_BYTES as i32)?;
    a.cmp(r11, r10)?;
    a.jb(probe)?;
    // Not found (ZF=1: an empty slot, or the window's end) or nested (ZF=0): every
    // register back as at the entry (pop leaves the flags alone).
    a.set_label(miss)?;
    for r in [rax, r10, r11, rdi, rsi, rdx, rcx] {
        a.pop(r)?;
    }
    a.je(fallback)?;
    a.jmp(displaced)?;

    Ok(())
}

/// Bytes a [`ring_gate_trampoline`] takes at most.
pub const RING_GATE_LEN: u64 = 128;

/// Assembles the *gate* of a hooked function that ring recording does not record itself
/// (descriptor and mapping calls, which keep their stop trampoline `fallback`): a thread
/// inside a ring-recorded call (its area's level set: malloc's own mmap) goes straight to
/// `displaced`, unrecorded, as the stop path does for calls nested in its own calls;
/// every other thread goes to `fallback`. Registers as at the entry either way.
///
/// A `mapping` gate (mmap, munmap, mremap) sends nested calls to `fallback` too while the
/// region's [`MAPPINGS_OFF`] word is 1 ([`RingRegion::set_nested_mappings`]): the
/// recorder then sees the memory an allocator maps for itself (which is neither a root
/// nor a block of the reachability snapshot) without recording it as the program's.
pub fn ring_gate_trampoline(
    at: u64,
    region_base: u64,
    displaced: u64,
    fallback: u64,
    mapping: bool,
) -> Result<RingTrampoline, IcedError> {
    use iced_x86::code_asm::*;
    let h = |off: usize| off as i32 - AREA_BIAS as i32;
    let mut a = CodeAssembler::new(64)?;
    let mut found = a.create_label();
    let mut miss = a.create_label();
    emit_lookup(
        &mut a,
        region_base,
        &mut found,
        &mut miss,
        displaced,
        fallback,
    )?;
    a.set_label(&mut found)?;
    a.mov(r11, qword_ptr(r11 + 8))?;
    a.cmp(dword_ptr(r11 + h(H_LEVEL)), 0)?; // ZF=0 (nested): displaced; ZF=1: fallback
    if mapping {
        // Nested: ZF=1 (fallback) when the word is 1, ZF=0 (displaced) otherwise. r10 is
        // restored at `miss`.
        a.je(miss)?;
        a.mov(r10, region_base + MAPPINGS_OFF as u64)?;
        a.cmp(dword_ptr(r10), 1)?;
    }
    a.jmp(miss)?;
    let code = a.assemble(at)?;
    Ok(RingTrampoline { code })
}

/// One event read from a ring (see the module doc's entry format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingEvent<'a> {
    /// The area (thread) it came from.
    pub area: u32,
    /// When it was numbered: tells which fields below are meaningful.
    pub publish: Publish,
    /// The hooked function's entry address.
    pub entry: u64,
    /// Its sequence number (for [`Publish::Both`], the free part's).
    pub seq: u64,
    /// For [`Publish::Both`], the allocation part's sequence number.
    pub seq2: Option<u64>,
    /// rdi, rsi, rdx, rcx at the entry.
    pub args: [u64; 4],
    /// rsp at the entry (pointing at the return address).
    pub rsp: u64,
    /// rbp at the entry.
    pub rbp: u64,
    /// Time stamp counter at the entry.
    pub tsc: u64,
    /// rax after the return (None for [`Publish::AtEntry`]).
    pub result: Option<u64>,
    /// posix_memalign's `*outptr` when it returned 0.
    pub out: Option<u64>,
    /// The stack copy from `rsp` (in place in the ring, or held by a [`Merger`]).
    pub stack: &'a [u8],
    /// Whether the copy reached the top of the thread's stack (else it was cut at
    /// the copy limit, or the stack was unknown and the copy ended at rsp's page end).
    pub stack_top: bool,
}

/// An entry in a ring broke the format (a tracee wrote over its own area): the area's
/// entries from `pos` on were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring of area {area} corrupt at position {pos}")]
pub struct RingCorrupt {
    /// The area.
    pub area: u32,
    /// Ring position (byte count) of the bad entry.
    pub pos: u64,
}

/// The recorder's side of a ring region in a [`SharedMap`].
pub struct RingRegion {
    map: Rc<SharedMap>,
    base: usize,
    tracee_base: u64,
    layout: RingLayout,
    free: Vec<u32>,
    threads: HashMap<u64, u32>,
    live: Vec<u32>,
}

impl RingRegion {
    /// The ring region at byte offset `base` of `map` (page-aligned), with `layout`,
    /// mapped in the tracee at `tracee_base`. Resets the counter and the table; every area
    /// starts free.
    ///
    /// # Panics
    /// If the region does not fit in `map` or `base` is not page-aligned.
    pub fn new(
        map: Rc<SharedMap>,
        base: usize,
        tracee_base: u64,
        layout: RingLayout,
    ) -> RingRegion {
        assert!(base % 4096 == 0, "ring region not page-aligned");
        assert!(
            base + layout.region_len() <= map.byte_len(),
            "ring region does not fit"
        );
        map.write_u64(base + COUNTER_OFF, 0);
        for slot in 0..TABLE_ENTRIES + PROBES {
            map.write_u64(base + TABLE_OFF + slot * SLOT_BYTES, EMPTY_KEY);
        }
        map.write_u32(base + MAPPINGS_OFF, 0);
        RingRegion {
            map,
            base,
            tracee_base,
            layout,
            free: (0..layout.areas).rev().collect(),
            threads: HashMap::new(),
            live: Vec::new(),
        }
    }

    /// The layout.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    fn area_off(&self, area: u32) -> usize {
        self.base + self.layout.area_off(area)
    }

    fn slot_off(&self, slot: usize) -> usize {
        self.base + TABLE_OFF + slot * SLOT_BYTES
    }

    /// Gives the thread whose thread pointer (fs base) is `tp` an area, with its stack
    /// mapping `stack` (empty if unknown), so its hooked calls take the ring path. Call it
    /// before the thread runs (at its clone event). A `tp` still registered (its thread
    /// exited unnoticed and the TCB was reused) gets a fresh area; drain the old one first.
    /// `None` when every area is taken or `tp`'s slot window is full: the thread then
    /// takes the fallback path.
    pub fn register_thread(&mut self, tp: u64, stack: Range<u64>) -> Option<u32> {
        if tp == EMPTY_KEY || tp == TOMBSTONE_KEY {
            return None;
        }
        if self.threads.contains_key(&tp) {
            self.unregister_thread(tp);
        }
        let h = table_hash(tp);
        let slot = (h..h + PROBES).find(|&s| {
            let k = self.map.read_u64(self.slot_off(s));
            k == EMPTY_KEY || k == TOMBSTONE_KEY
        })?;
        let area = self.free.pop()?;
        let a = self.area_off(area);
        for off in [H_HEAD, H_LEVEL, H_NEXT, H_CUR, H_WAITS, H_TAIL] {
            self.map.write_u64(a + off, 0);
        }
        self.map.write_u64(a + H_CLAIM, CLAIM_IDLE);
        self.map.write_u64(a + H_LO, stack.start);
        self.map
            .write_u64(a + H_SPAN, stack.end.saturating_sub(stack.start));
        self.map.write_u64(a + H_HI, stack.end);
        self.map
            .write_u64(a + H_COUNTER, self.tracee_base + COUNTER_OFF as u64);
        // The area before the key: a reader that sees the key sees its area.
        let biased = self.tracee_base + (self.layout.area_off(area) + AREA_BIAS) as u64;
        self.map.write_u64(self.slot_off(slot) + 8, biased);
        self.map.write_u64(self.slot_off(slot), tp);
        self.threads.insert(tp, area);
        self.live.push(area);
        Some(area)
    }

    /// Removes the thread `tp` from the table (its next hooked calls take the fallback
    /// path) and frees its area, whose ring must have been drained. Call it when the thread
    /// has exited or is stopped outside the trampoline: a thread still inside one keeps
    /// writing its area. Clears the area's claim, so that a thread killed between taking a
    /// sequence number and publishing it does not hold the watermark back for ever.
    /// Returns the area.
    pub fn unregister_thread(&mut self, tp: u64) -> Option<u32> {
        let area = self.threads.remove(&tp)?;
        let h = table_hash(tp);
        if let Some(slot) = (h..h + PROBES).find(|&s| self.map.read_u64(self.slot_off(s)) == tp) {
            self.map.write_u64(self.slot_off(slot), TOMBSTONE_KEY);
        }
        self.map
            .write_u64(self.area_off(area) + H_CLAIM, CLAIM_IDLE);
        self.live.retain(|&a| a != area);
        self.free.push(area);
        Some(area)
    }

    /// The area of thread `tp`, if registered.
    pub fn area_of(&self, tp: u64) -> Option<u32> {
        self.threads.get(&tp).copied()
    }

    /// Whether the thread of `area` is inside a ring-recorded call (its level is set:
    /// from the start of the recording to the function's return). Read while the thread
    /// is stopped, this tells a call it made from inside that one (malloc's own mmap).
    pub fn in_call(&self, area: u32) -> bool {
        self.map.read_u32(self.area_off(area) + H_LEVEL) != 0
    }

    /// Sends the mapping calls (mmap, munmap, mremap) that threads make inside ring-
    /// recorded calls to the stop path (`true`: the recorder learns what memory an
    /// allocator maps for itself) or straight to the function (`false`, the default).
    pub fn set_nested_mappings(&self, to_stop_path: bool) {
        self.map
            .write_u32(self.base + MAPPINGS_OFF, u32::from(to_stop_path));
    }

    /// Whether nested mapping calls go to the stop path (see
    /// [`RingRegion::set_nested_mappings`]).
    pub fn nested_mappings(&self) -> bool {
        self.map.read_u32(self.base + MAPPINGS_OFF) != 0
    }

    /// Areas in use, in registration order.
    pub fn live_areas(&self) -> &[u32] {
        &self.live
    }

    /// Futex waits the producer of `area` made since it was registered.
    pub fn waits(&self, area: u32) -> u64 {
        self.map.read_u64(self.area_off(area) + H_WAITS)
    }

    /// The next sequence number to be taken.
    pub fn counter(&self) -> u64 {
        self.map.read_u64(self.base + COUNTER_OFF)
    }

    /// A sequence number below which every event is published (the module doc's drainer
    /// rule): drain after calling this, and hand over only events numbered below it.
    pub fn watermark(&self) -> u64 {
        let g = self.counter();
        let w = self
            .live
            .iter()
            .map(|&a| self.map.read_u64(self.area_off(a) + H_CLAIM))
            .fold(g, u64::min);
        compiler_fence(Ordering::SeqCst);
        w
    }

    /// The published entries of `area` not yet consumed, read in place. The head is
    /// read once, now.
    pub fn published(&self, area: u32) -> Published<'_> {
        let a = self.area_off(area);
        let tail = self.map.read_u64(a + H_TAIL);
        let head = self.map.read_u64(a + H_HEAD);
        // Entry reads must not move above the head read.
        compiler_fence(Ordering::SeqCst);
        Published {
            region: self,
            area,
            pos: tail,
            head,
            corrupt: None,
        }
    }

    /// Marks `area`'s entries before ring position `pos` consumed, and wakes its producer
    /// if it waits for space.
    pub fn consume(&self, area: u32, pos: u64) {
        self.release(area, pos, true);
    }

    /// Marks `area`'s entries before `pos` consumed (the rest of the round's entries are
    /// still being handed over). A waiting producer is woken only once a quarter of the
    /// ring is free: each wake-up costs both sides a system call and the producer a
    /// trip through the scheduler, so it should come back to enough room.
    fn consume_some(&self, area: u32, pos: u64) {
        self.release(area, pos, false);
    }

    fn release(&self, area: u32, pos: u64, always_wake: bool) {
        let a = self.area_off(area);
        // Entry reads (done: their borrows ended) must not move below the tail store.
        compiler_fence(Ordering::SeqCst);
        self.map.write_u64(a + H_TAIL, pos);
        // Store tail, then load waiting: with the producer's store waiting, mfence, load
        // tail, one of the two sees the other (no lost wake-up).
        fence(Ordering::SeqCst);
        if self.map.read_u32(a + H_WAITING) != 0 {
            let used = self.map.read_u64(a + H_HEAD).saturating_sub(pos);
            if !always_wake && used > (self.layout.ring_bytes as u64 / 4) * 3 {
                // Left waiting: a later release (at the latest the round's last) wakes it.
                return;
            }
            // Cleared here, not by the producer's fast path: it sets the flag again (and
            // re-checks the tail) before each wait.
            self.map.write_u32(a + H_WAITING, 0);
            self.map.futex_wake(a + H_TAIL);
        }
    }

    /// Hands every published entry of `area` to `f` (in ring order, which is sequence
    /// order within a thread), then consumes them. Returns how many, or where the ring
    /// broke (the entries before were handed over; the rest up to the head are skipped).
    pub fn drain(&self, area: u32, mut f: impl FnMut(RingEvent<'_>)) -> Result<usize, RingCorrupt> {
        let mut it = self.published(area);
        let mut n = 0;
        for ev in &mut it {
            f(ev);
            n += 1;
        }
        let end = it.resume_pos();
        let corrupt = it.corrupt;
        self.consume(area, end);
        match corrupt {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn read_event(
        &self,
        area: u32,
        pos: u64,
        head: u64,
    ) -> Result<(Option<RingEvent<'_>>, u64), RingCorrupt> {
        let ring = self.layout.ring_bytes;
        let off = (pos as usize) & (ring - 1);
        let e = self.area_off(area) + HEADER_BYTES + off;
        let bad = RingCorrupt { area, pos };
        if off % 8 != 0 {
            return Err(bad);
        }
        let word0 = self.map.read_u64(e + E_WORD0);
        let len = word0 as u32 as usize;
        let kind = (word0 >> 32) as u8;
        let flags = (word0 >> 40) as u8;
        if len < 8 || len % 8 != 0 || off + len > ring || pos + len as u64 > head {
            return Err(bad);
        }
        let next = pos + len as u64;
        if kind == KIND_PAD {
            return Ok((None, next));
        }
        let publish = Publish::from_tag(kind).ok_or(bad)?;
        if len < ENTRY_HEADER {
            return Err(bad);
        }
        let r = |f: usize| self.map.read_u64(e + f);
        let stack_len = r(E_STACK_LEN) as usize;
        if stack_len > len - ENTRY_HEADER {
            return Err(bad);
        }
        let returned = publish != Publish::AtEntry;
        let map: &SharedMap = &self.map;
        Ok((
            Some(RingEvent {
                area,
                publish,
                entry: r(E_ENTRY),
                seq: r(E_SEQ),
                seq2: (publish == Publish::Both).then(|| r(E_SEQ2)),
                args: [r(E_ARGS), r(E_ARGS + 8), r(E_ARGS + 16), r(E_ARGS + 24)],
                rsp: r(E_RSP),
                rbp: r(E_RBP),
                tsc: r(E_TSC),
                result: returned.then(|| r(E_RESULT)),
                out: (publish == Publish::AtReturnOutPtr && r(E_RESULT) as u32 == 0)
                    .then(|| r(E_RESULT2)),
                stack: map.bytes(e + ENTRY_HEADER, stack_len),
                stack_top: flags & FLAG_STACK_TOP != 0,
            }),
            next,
        ))
    }
}

/// Iterator over an area's published entries ([`RingRegion::published`]).
pub struct Published<'r> {
    region: &'r RingRegion,
    area: u32,
    pos: u64,
    head: u64,
    corrupt: Option<RingCorrupt>,
}

impl Published<'_> {
    /// Where consuming should resume: after the entries handed out, or the head when the
    /// ring broke (the rest is skipped).
    pub fn resume_pos(&self) -> u64 {
        if self.corrupt.is_some() {
            self.head
        } else {
            self.pos
        }
    }

    /// Where the ring broke, if it did.
    pub fn corrupt(&self) -> Option<RingCorrupt> {
        self.corrupt
    }
}

impl<'r> Iterator for Published<'r> {
    type Item = RingEvent<'r>;

    fn next(&mut self) -> Option<RingEvent<'r>> {
        while self.pos < self.head && self.corrupt.is_none() {
            match self.region.read_event(self.area, self.pos, self.head) {
                Ok((ev, next)) => {
                    self.pos = next;
                    if ev.is_some() {
                        return ev;
                    }
                }
                Err(e) => self.corrupt = Some(e),
            }
        }
        None
    }
}

/// Which part of an event a sequence number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole event (every [`Publish`] but `Both`).
    Whole,
    /// The free part of a `Both` event (its `seq`: replay the release of `args[0]`).
    Free,
    /// The allocation part of a `Both` event (its `seq2`: replay the new block).
    Alloc,
}

/// An event part in global order ([`Merger`]).
#[derive(Debug, Clone, Copy)]
pub struct Ordered<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// Which part of the event it stands for.
    pub part: Part,
    /// The event.
    pub event: RingEvent<'a>,
}

/// Parts handed over between two partial releases of ring space in a [`Merger::round`].
const RELEASE_EVERY: usize = 32;

/// An event copied out of its ring because one of its parts could not be handed over yet.
struct Held {
    event: RingEvent<'static>,
    stack: Vec<u8>,
}

impl Held {
    fn new(ev: &RingEvent<'_>) -> Held {
        Held {
            event: RingEvent { stack: &[], ..*ev },
            stack: ev.stack.to_vec(),
        }
    }

    fn view(&self) -> RingEvent<'_> {
        RingEvent {
            stack: &self.stack,
            ..self.event
        }
    }
}

/// Where a part waiting to be handed over lives.
#[derive(Clone, Copy)]
enum Src {
    Fresh(usize),
    Held(usize),
}

/// Merges the events of every area of a region into global sequence order: each
/// [`Merger::round`] drains every live area, hands over in order the parts numbered below
/// the watermark (reading them in place in the rings), and copies only the parts above
/// it, which it holds until a later round's watermark passes them. Every ring is emptied
/// each round, so a thread slow to publish never makes the others wait for space.
#[derive(Default)]
pub struct Merger {
    held: Vec<(u64, Part, Held)>,
    next: u64,
}

/// What one [`Merger::round`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Parts handed over.
    pub emitted: usize,
    /// Parts held back (copied) for a later round.
    pub held: usize,
    /// The watermark used.
    pub watermark: u64,
    /// The most bytes one ring held at the round's start (what the round drained from
    /// it), in 1/1024 of the ring's size: how full the rings get between two rounds.
    pub fullest: u32,
}

impl Merger {
    /// An empty merger.
    pub fn new() -> Merger {
        Merger::default()
    }

    /// The sequence number the next part handed over should carry (every number below
    /// it was handed over, or belonged to a thread that died before publishing).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Parts held back now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Drains every live area of `region` once and hands the parts below the watermark to
    /// `f` in sequence order. Broken rings are reported after the round (their good
    /// entries were handed over or held).
    pub fn round(
        &mut self,
        region: &RingRegion,
        mut f: impl FnMut(Ordered<'_>),
    ) -> (RoundStats, Vec<RingCorrupt>) {
        let w = region.watermark();
        let mut fresh: Vec<RingEvent<'_>> = Vec::new();
        // Per fresh event: the ring position after it.
        let mut fresh_end: Vec<u64> = Vec::new();
        // Per live area: (area, its fresh events' range in `fresh`, where its round ends).
        let mut areas = Vec::with_capacity(region.live_areas().len());
        let mut broken = Vec::new();
        let mut most = 0u64;
        for &area in region.live_areas() {
            let first = fresh.len();
            let mut it = region.published(area);
            most = most.max(it.head.wrapping_sub(it.pos));
            while let Some(ev) = it.next() {
                fresh.push(ev);
                fresh_end.push(it.pos);
            }
            areas.push((area, first..fresh.len(), it.resume_pos()));
            broken.extend(it.corrupt());
        }
        let mut ready: Vec<(u64, Part, Src)> = Vec::new();
        let mut keep: Vec<(u64, Part, Held)> = Vec::new();
        // Per fresh event: its parts still to hand over from the ring (held parts are
        // copies: they do not count).
        let mut left: Vec<u8> = vec![0; fresh.len()];
        for (i, ev) in fresh.iter().enumerate() {
            let mut part = |seq: u64, part: Part| {
                if seq < w {
                    ready.push((seq, part, Src::Fresh(i)));
                    left[i] += 1;
                } else {
                    keep.push((seq, part, Held::new(ev)));
                }
            };
            match ev.seq2 {
                Some(s2) => {
                    part(ev.seq, Part::Free);
                    part(s2, Part::Alloc);
                }
                None => part(ev.seq, Part::Whole),
            }
        }
        let old = std::mem::take(&mut self.held);
        let mut old_ready = Vec::new();
        for (seq, part, h) in old {
            if seq < w {
                ready.push((seq, part, Src::Held(old_ready.len())));
                old_ready.push(h);
            } else {
                keep.push((seq, part, h));
            }
        }
        // Runs from each area are already sorted: a stable sort merges them cheaply.
        ready.sort_by_key(|r| r.0);
        let ring = region.layout().ring_bytes as u64;
        let stats = RoundStats {
            emitted: ready.len(),
            held: keep.len(),
            watermark: w,
            fullest: (most.min(ring) * 1024 / ring) as u32,
        };
        // Per area: the first of its fresh events not yet handed over entirely.
        let mut done: Vec<usize> = areas.iter().map(|(_, r, _)| r.start).collect();
        for (k, &(seq, part, src)) in ready.iter().enumerate() {
            let event = match src {
                Src::Fresh(i) => fresh[i],
                Src::Held(i) => old_ready[i].view(),
            };
            debug_assert!(seq >= self.next, "sequence numbers out of order");
            self.next = seq + 1;
            f(Ordered { seq, part, event });
            if let Src::Fresh(i) = src {
                left[i] -= 1;
            }
            // Give space back while the round goes on, so that a producer waiting for it
            // runs at the same time as the recorder: every RELEASE_EVERY parts, each area's
            // entries up to the first still needed (never read again after this).
            if k % RELEASE_EVERY == RELEASE_EVERY - 1 {
                for (j, (area, range, _)) in areas.iter().enumerate() {
                    let from = done[j];
                    while done[j] < range.end && left[done[j]] == 0 {
                        done[j] += 1;
                    }
                    if done[j] > from {
                        region.consume_some(*area, fresh_end[done[j] - 1]);
                    }
                }
            }
        }
        // No borrow of the rings survives past here.
        drop(fresh);
        for (area, _, pos) in areas {
            region.consume(area, pos);
        }
        self.held = keep;
        (stats, broken)
    }

    /// Hands over every held part in sequence order, watermark or not: for the end of a
    /// recording, after the last round, when no thread can publish any more (a thread
    /// killed mid-call may have left a number unpublished).
    pub fn flush(&mut self, mut f: impl FnMut(Ordered<'_>)) -> usize {
        let mut held = std::mem::take(&mut self.held);
        held.sort_by_key(|h| h.0);
        for (seq, part, h) in &held {
            self.next = seq + 1;
            f(Ordered {
                seq: *seq,
                part: *part,
                event: h.view(),
            });
        }
        held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{
        Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, Register,
    };

    fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
        Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
            .iter()
            .collect()
    }

    #[test]
    fn layout_offsets_are_consistent() {
        // Every header field and the ring within a disp8 of area + AREA_BIAS.
        for off in [H_HEAD, H_WAITS, H_COUNTER, HEADER_BYTES] {
            let rel = off as i64 - AREA_BIAS as i64;
            assert!((-128..=127).contains(&rel), "{off}");
        }
        let l = RingLayout::default();
        assert_eq!(l.stride(), HEADER_BYTES + DEFAULT_RING_BYTES);
        assert_eq!(
            l.region_len(),
            AREAS_OFF + DEFAULT_AREAS as usize * l.stride()
        );
        assert_eq!(l.region_len(), crate::tracee::probe::RING_LEN);
        assert!(l.ring_bytes >= 2 * max_entry(8192));
    }

    #[test]
    fn trampolines_fit_and_never_write_callee_saved_registers() {
        let at = 0x7f00_0000_1000u64;
        let layout = RingLayout::default();
        for (publish, zero_first) in [
            (Publish::AtEntry, false),
            (Publish::AtReturn, false),
            (Publish::AtReturn, true),
            (Publish::AtReturnOutPtr, false),
            (Publish::Both, false),
        ] {
            let t = ring_entry_trampoline(
                &layout,
                at,
                0x7f10_0000_0000,
                0x7f00_2000_0000,
                at + 0x800,
                publish,
                4096,
                at + 0x1000,
                zero_first,
            )
            .unwrap();
            assert!(
                t.code.len() as u64 <= RING_TRAMPOLINE_LEN,
                "{publish:?}: {} bytes",
                t.code.len()
            );
            let ins = decode(&t.code, at);
            assert!(ins.iter().all(|i| !i.is_invalid()));
            // The thread pointer comes from fs:[0].
            assert_eq!(ins[7].memory_segment(), Register::FS);
            assert_eq!(ins[7].memory_displacement64(), 0);
            assert_eq!(ins[7].memory_base(), Register::None);
            assert_eq!(ins[7].memory_index(), Register::None);
            let mut info = InstructionInfoFactory::new();
            for i in &ins {
                for r in info.info(i).used_registers() {
                    let written = matches!(
                        r.access(),
                        OpAccess::Write
                            | OpAccess::ReadWrite
                            | OpAccess::CondWrite
                            | OpAccess::ReadCondWrite
                    );
                    let full = r.register().full_register();
                    assert!(
                        !(written
                            && matches!(
                                full,
                                Register::RBX
                                    | Register::RBP
                                    | Register::R12
                                    | Register::R13
                                    | Register::R14
                                    | Register::R15
                                    | Register::R8
                                    | Register::R9
                            )),
                        "{publish:?}: {i} writes {:?}",
                        r.register()
                    );
                }
            }
            // Exactly one syscall (the futex wait), no int3.
            assert_eq!(
                ins.iter()
                    .filter(|i| i.mnemonic() == Mnemonic::Syscall)
                    .count(),
                1
            );
            assert!(ins.iter().all(|i| i.mnemonic() != Mnemonic::Int3));
        }
    }

    #[test]
    fn hash_windows_stay_in_the_table() {
        for tp in [0x7fff_f7d8_a740u64, 0x7fff_f758_9640, u64::MAX, 2] {
            assert!(table_hash(tp) + PROBES <= TABLE_ENTRIES + PROBES);
        }
    }
}
