//! The probe area: a memfd mapped into the tracee (code read-execute, data read-write)
//! and into the tracer (read-write), so the tracee can hand results back without a stop.
//!
//! Why: a breakpoint gives us a function's arguments, but an allocation's result (the
//! pointer) only exists when the function returns. Putting a second breakpoint on the
//! return doubles the stops. Instead, at the entry stop the tracer points the thread at a
//! *return shim* of a free slot, which runs in the tracee:
//!
//! ```text
//! shim_k:  pop   qword [slot_k.ret]       ; take the caller's return address off the stack
//!          call  qword [slot_k.target]    ; run the function (via its displaced-entry
//!                                         ; trampoline) with the shim as return address
//!          mov   [slot_k.result], rax
//!          mov   r11, [slot_k.outptr]     ; posix_memalign: also copy *outptr
//!          test  r11, r11
//!          jz    1f
//!          mov   r11, [r11]
//!          mov   [slot_k.result2], r11
//!      1:  mov   qword [slot_k.done], 1
//!          jmp   qword [slot_k.ret]       ; back to the caller
//! ```
//!
//! The stack the function sees is exactly the one it would have seen (the shim's `call`
//! pushes its return address where the original one was), rax/rdx/flags/r11 are
//! caller-clobbered after a call in the SysV ABI, and nothing else is touched. The tracer
//! arms a slot by writing `ret`, `target`, `outptr` and clearing `done` in shared memory,
//! then sets `rip` to the shim: no extra ptrace call. It reads `done`/`result` at a later
//! stop, as plain memory.
//!
//! That is the slow path. The fast path needs no register access at all: after the
//! slots come a tid-indexed table of *thread areas* and the areas themselves, which
//! each hooked function's entry trampoline ([`super::trampoline`]) fills before its
//! `int3` (arguments, stack pointer, a copy of the top of the stack) and whose return
//! cells it fills when the function returns.
//!
//! The area also holds a `syscall; int3` stub at offset 0, used to inject system calls.

use std::fs::File;
use std::io;
use std::ops::Range;

use std::rc::Rc;

use super::ring::{self, RingLayout, RingRegion};
use crate::sys::SharedMap;

/// Number of return slots (concurrently pending calls across a process tree).
pub const SLOTS: usize = 4096;
/// Bytes per shim and per data slot.
const SLOT_BYTES: usize = 64;
/// Offset of the first shim in the code part (the syscall stub comes first).
const SHIM_BASE: usize = 64;
/// Size of the code part (read-execute in the tracee).
pub const CODE_LEN: usize = round_page(SHIM_BASE + SLOTS * SLOT_BYTES);
/// Size of the slot part of the data (read-write in the tracee).
const SLOTS_LEN: usize = round_page(SLOTS * SLOT_BYTES);
/// Thread ids the entry trampolines can look up (PID_MAX_LIMIT on 64-bit Linux).
pub const MAX_TID: u32 = 1 << 22;
/// Offset of the tid table: one `u32` area number per thread id (0: none).
pub(super) const TABLE_OFF: usize = CODE_LEN + SLOTS_LEN;
/// Offset of the thread areas.
pub(super) const AREAS_OFF: usize = TABLE_OFF + MAX_TID as usize * 4;
/// Bytes per thread area.
pub const AREA_BYTES: usize = 8192;
/// Thread areas (threads alive at once that take the fast path; others take the slow one).
pub const AREAS: u32 = 1024;
/// Offset of the ring region (ring recording: the thread-pointer table and one ring per
/// thread, see [`super::ring`]).
pub const RING_OFF: usize = round_page(AREAS_OFF + AREAS as usize * AREA_BYTES);
/// Size of the ring region, [`RingLayout::default`]'s.
pub const RING_LEN: usize = ring::AREAS_OFF
    + ring::DEFAULT_AREAS as usize * (ring::HEADER_BYTES + ring::DEFAULT_RING_BYTES);
/// Size of the data part (read-write in the tracee): slots, tid table, thread areas, the
/// ring region.
pub const DATA_LEN: usize = TOTAL_LEN - CODE_LEN;
/// Total size of the memfd (sparse: only touched pages use memory).
pub const TOTAL_LEN: usize = RING_OFF + RING_LEN;

// Thread area layout (byte offsets within an area). Written by the entry trampoline
// (see `trampoline::entry_trampoline`) and read by the tracer while the thread is stopped.
/// 1 while the area holds an entry the tracer has not taken yet.
pub(super) const A_READY: usize = 0;
/// 1 while a call of this thread is in flight through an entry trampoline (from the
/// trampoline's start to the function's return): hooked calls made meanwhile are
/// nested ones and go straight to their function.
pub(super) const A_LEVEL: usize = 16;
/// The hooked function's entry address.
pub(super) const A_ENTRY: usize = 24;
/// The stack pointer at the function's entry (pointing at the return address).
pub(super) const A_RSP: usize = 32;
/// The caller's frame pointer.
pub(super) const A_RBP: usize = 40;
/// The six argument registers (rdi, rsi, rdx, rcx, r8, r9).
pub(super) const A_ARGS: usize = 48;
/// The thread's stack mapping: low end, span, high end (set by the tracer).
pub(super) const A_LO: usize = 96;
pub(super) const A_SPAN: usize = 104;
pub(super) const A_HI: usize = 112;
/// Bytes of stack copied to `A_STACK`.
pub(super) const A_LEN: usize = 120;
/// The return cell of the call in flight.
pub(super) const A_CELL: usize = 128;
/// The thread's signal mask at the entry (8 bytes, as rt_sigprocmask gives it).
pub(super) const A_MASK: usize = 160;
/// A signal set holding SIGTRAP alone.
pub(super) const A_TRAPSET: usize = 168;
/// 1 when the trampoline unblocked SIGTRAP for the stop and must restore `A_MASK`.
pub(super) const A_REBLOCK: usize = 176;
/// The stack copy.
pub(super) const A_STACK: usize = 1024;
/// Bytes of stack the trampoline copies at most.
pub const STACK_COPY: usize = 4096;

// Return cell layout.
pub(super) const C_RESULT: usize = 0;
pub(super) const C_RESULT2: usize = 8;
pub(super) const C_OUTPTR: usize = 16;
pub(super) const C_DONE: usize = 24;

const _: () = assert!(A_CELL + 32 <= A_STACK);
const _: () = assert!(A_STACK + STACK_COPY <= AREA_BYTES);

const fn round_page(n: usize) -> usize {
    (n + 4095) & !4095
}

// Data slot layout (byte offsets within a slot).
const RET: usize = 0;
const TARGET: usize = 8;
const RESULT: usize = 16;
const RESULT2: usize = 24;
const OUTPTR: usize = 32;
const DONE: usize = 40;

/// The syscall stub: `syscall; int3`.
pub const SYSCALL_STUB: [u8; 3] = [0x0f, 0x05, 0xcc];

/// Machine code of shim `k`, given that the data part starts `CODE_LEN` bytes after the
/// code part (so displacements are fixed; the two mappings are placed back to back).
fn shim_code(k: usize) -> Vec<u8> {
    let shim_start = (SHIM_BASE + k * SLOT_BYTES) as i64;
    let slot_start = (CODE_LEN + k * SLOT_BYTES) as i64;
    let mut c: Vec<u8> = Vec::with_capacity(64);
    // Emits `bytes` followed by a rip-relative disp32 to slot field `field`, where the
    // instruction ends `tail` bytes after the displacement.
    let rip_rel = |c: &mut Vec<u8>, bytes: &[u8], field: usize, tail: usize| {
        c.extend_from_slice(bytes);
        let end = shim_start + c.len() as i64 + 4 + tail as i64;
        let disp = (slot_start + field as i64 - end) as i32;
        c.extend_from_slice(&disp.to_le_bytes());
    };
    rip_rel(&mut c, &[0x8f, 0x05], RET, 0); // pop qword [rip+ret]
    rip_rel(&mut c, &[0xff, 0x15], TARGET, 0); // call qword [rip+target]
    rip_rel(&mut c, &[0x48, 0x89, 0x05], RESULT, 0); // mov [rip+result], rax
    rip_rel(&mut c, &[0x4c, 0x8b, 0x1d], OUTPTR, 0); // mov r11, [rip+outptr]
    c.extend_from_slice(&[0x4d, 0x85, 0xdb]); // test r11, r11
    c.extend_from_slice(&[0x74, 10]); // jz +10 (over the next two instructions)
    c.extend_from_slice(&[0x4d, 0x8b, 0x1b]); // mov r11, [r11]
    rip_rel(&mut c, &[0x4c, 0x89, 0x1d], RESULT2, 0); // mov [rip+result2], r11
    rip_rel(&mut c, &[0x48, 0xc7, 0x05], DONE, 4); // mov qword [rip+done], imm32
    c.extend_from_slice(&1i32.to_le_bytes());
    rip_rel(&mut c, &[0xff, 0x25], RET, 0); // jmp qword [rip+ret]
    debug_assert!(c.len() <= SLOT_BYTES);
    c
}

/// The whole code part, ready to be written into the memfd.
pub fn code_image() -> Vec<u8> {
    let mut img = vec![0xccu8; CODE_LEN];
    img[..SYSCALL_STUB.len()].copy_from_slice(&SYSCALL_STUB);
    for k in 0..SLOTS {
        let code = shim_code(k);
        let off = SHIM_BASE + k * SLOT_BYTES;
        img[off..off + code.len()].copy_from_slice(&code);
    }
    img
}

/// What an entry trampoline handed over (see [`super::trampoline::entry_trampoline`]).
#[derive(Debug, Clone, Copy)]
pub struct EntryFrame {
    /// The hooked function's entry address.
    pub entry: u64,
    /// Stack pointer at the entry.
    pub rsp: u64,
    /// The caller's frame pointer.
    pub rbp: u64,
    /// rdi, rsi, rdx, rcx, r8, r9.
    pub args: [u64; 6],
    /// Bytes of stack copied into the caller's buffer.
    pub stack_len: usize,
    /// The return cell this call uses (its byte offset in the probe).
    pub cell: usize,
}

/// Where a pending call's result will appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnRef {
    /// A slot shim (the slow path).
    Slot(Slot),
    /// A return cell of a thread area: its byte offset in the probe.
    Cell(usize),
}

/// The tracer's side of one probe area: the shared mapping plus slot bookkeeping. Shared
/// by every process whose address space maps this memfd (a fork child inherits it).
pub struct Probe {
    map: Rc<SharedMap>,
    /// Where the code part is mapped in the tracee (the data part follows it).
    pub code_addr: u64,
    free: Vec<u32>,
    free_areas: Vec<u32>,
}

/// A reserved slot index.
pub type Slot = u32;

impl Probe {
    /// Wraps the tracer's mapping of a probe memfd whose code part the tracee mapped at
    /// `code_addr`, and writes the shims.
    pub fn new(file: &File, code_addr: u64) -> io::Result<Probe> {
        let map = Rc::new(SharedMap::map(file, TOTAL_LEN)?);
        map.write_bytes(0, &code_image());
        Ok(Probe {
            map,
            code_addr,
            free: (0..SLOTS as u32).rev().collect(),
            free_areas: (1..=AREAS).rev().collect(),
        })
    }

    /// The recorder's side of the ring region (resets its counter and table: call once
    /// per address space, before any ring trampoline points at it).
    pub fn ring_region(&self) -> RingRegion {
        RingRegion::new(
            self.map.clone(),
            RING_OFF,
            self.ring_base(),
            RingLayout::default(),
        )
    }

    /// Where the ring region is mapped in the tracee.
    pub fn ring_base(&self) -> u64 {
        self.code_addr + RING_OFF as u64
    }

    /// Forgets the entry the thread owning `area` handed over and its call in flight (the
    /// tracer sends the thread back to the function's entry: the call starts again).
    /// Returns the signal mask to give the thread back if the trampoline had unblocked
    /// SIGTRAP for the stop (it would have restored it after the stop).
    pub fn abort_entry(&self, area: u32) -> Option<u64> {
        let base = Self::area_off(area);
        self.map.write_u64(base + A_READY, 0);
        self.map.write_u64(base + A_LEVEL, 0);
        let mask =
            (self.map.read_u64(base + A_REBLOCK) != 0).then(|| self.map.read_u64(base + A_MASK));
        self.map.write_u64(base + A_REBLOCK, 0);
        mask
    }

    /// Address of the `syscall; int3` stub in the tracee.
    pub fn syscall_stub(&self) -> u64 {
        self.code_addr
    }

    /// Address of shim `slot` in the tracee.
    pub fn shim_addr(&self, slot: Slot) -> u64 {
        self.code_addr + (SHIM_BASE + slot as usize * SLOT_BYTES) as u64
    }

    /// Takes a free slot, if any.
    pub fn alloc(&mut self) -> Option<Slot> {
        self.free.pop()
    }

    /// Returns a slot to the pool.
    pub fn release(&mut self, slot: Slot) {
        self.free.push(slot);
    }

    fn off(slot: Slot, field: usize) -> usize {
        CODE_LEN + slot as usize * SLOT_BYTES + field
    }

    /// Arms `slot` for a call returning to `ret` that runs `target`; `outptr` is the
    /// posix_memalign result pointer (0 for other functions).
    pub fn arm(&self, slot: Slot, ret: u64, target: u64, outptr: u64) {
        self.map.write_u64(Self::off(slot, DONE), 0);
        self.map.write_u64(Self::off(slot, RET), ret);
        self.map.write_u64(Self::off(slot, TARGET), target);
        self.map.write_u64(Self::off(slot, OUTPTR), outptr);
    }

    /// `Some((rax, *outptr))` once the call armed in `slot` has returned.
    pub fn result(&self, slot: Slot) -> Option<(u64, u64)> {
        if self.map.read_u64(Self::off(slot, DONE)) == 0 {
            return None;
        }
        Some((
            self.map.read_u64(Self::off(slot, RESULT)),
            self.map.read_u64(Self::off(slot, RESULT2)),
        ))
    }

    /// Gives thread `tid` an area, with its stack mapping `stack` (empty if unknown), so
    /// its calls take the fast path. `None` when every area is taken or `tid` is too large.
    pub fn assign_area(&mut self, tid: u32, stack: Range<u64>) -> Option<u32> {
        if tid >= MAX_TID {
            return None;
        }
        let area = self.free_areas.pop()?;
        let base = Self::area_off(area);
        for off in [A_READY, A_LEVEL] {
            self.map.write_u64(base + off, 0);
        }
        self.map.write_u64(base + A_LO, stack.start);
        self.map
            .write_u64(base + A_SPAN, stack.end.saturating_sub(stack.start));
        self.map.write_u64(base + A_HI, stack.end);
        self.map.write_u32(TABLE_OFF + tid as usize * 4, area);
        Some(area)
    }

    /// Takes `tid`'s area back (the thread exited or left this address space).
    pub fn release_area(&mut self, tid: u32, area: u32) {
        if tid < MAX_TID {
            self.map.write_u32(TABLE_OFF + tid as usize * 4, 0);
        }
        self.free_areas.push(area);
    }

    fn area_off(area: u32) -> usize {
        AREAS_OFF + (area as usize - 1) * AREA_BYTES
    }

    /// The entry the stopped thread owning `area` handed over, if it did; its stack copy
    /// goes to `stack`. Resets the call's return cell (if any) so that it is unarmed.
    pub fn take_entry(&self, area: u32, stack: &mut [u8]) -> Option<EntryFrame> {
        let base = Self::area_off(area);
        if self.map.read_u64(base + A_READY) == 0 {
            return None;
        }
        self.map.write_u64(base + A_READY, 0);
        let mut args = [0u64; 6];
        for (i, a) in args.iter_mut().enumerate() {
            *a = self.map.read_u64(base + A_ARGS + 8 * i);
        }
        let len = (self.map.read_u64(base + A_LEN) as usize)
            .min(STACK_COPY)
            .min(stack.len());
        self.map.read_bytes(base + A_STACK, &mut stack[..len]);
        let cell = base + A_CELL;
        self.map.write_u64(cell + C_OUTPTR, 0);
        self.map.write_u64(cell + C_DONE, 0);
        Some(EntryFrame {
            entry: self.map.read_u64(base + A_ENTRY),
            rsp: self.map.read_u64(base + A_RSP),
            rbp: self.map.read_u64(base + A_RBP),
            args,
            stack_len: len,
            cell,
        })
    }

    /// Arms return cell `cell` (from [`EntryFrame::cell`]): `outptr` as in [`Probe::arm`].
    pub fn arm_cell(&self, cell: usize, outptr: u64) {
        self.map.write_u64(cell + C_DONE, 0);
        self.map.write_u64(cell + C_OUTPTR, outptr);
    }

    /// Clears every return cell's out-pointer, so that calls still in flight when the
    /// tracer leaves never dereference one armed for an earlier call.
    pub fn disarm_all_cells(&self) {
        for area in 1..=AREAS {
            self.map
                .write_u64(Self::area_off(area) + A_CELL + C_OUTPTR, 0);
        }
    }

    /// `Some((rax, *outptr))` once the call behind `r` has returned.
    pub fn result_of(&self, r: ReturnRef) -> Option<(u64, u64)> {
        match r {
            ReturnRef::Slot(s) => self.result(s),
            ReturnRef::Cell(c) => {
                if self.map.read_u64(c + C_DONE) == 0 {
                    return None;
                }
                Some((
                    self.map.read_u64(c + C_RESULT),
                    self.map.read_u64(c + C_RESULT2),
                ))
            }
        }
    }

    /// Frees what `r` holds (cells belong to their thread and need nothing).
    pub fn release_ref(&mut self, r: ReturnRef) {
        if let ReturnRef::Slot(s) = r {
            self.release(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    #[test]
    fn shims_decode_to_the_documented_sequence_and_address_their_slot() {
        let code_addr = 0x7000_0000_0000u64;
        for k in [0usize, 1, 77, SLOTS - 1] {
            let code = shim_code(k);
            let ip = code_addr + (SHIM_BASE + k * SLOT_BYTES) as u64;
            let slot = code_addr + (CODE_LEN + k * SLOT_BYTES) as u64;
            let mut d = Decoder::with_ip(64, &code, ip, DecoderOptions::NONE);
            let ins: Vec<_> = d.iter().collect();
            let m: Vec<Mnemonic> = ins.iter().map(|i| i.mnemonic()).collect();
            assert_eq!(
                m,
                [
                    Mnemonic::Pop,
                    Mnemonic::Call,
                    Mnemonic::Mov,
                    Mnemonic::Mov,
                    Mnemonic::Test,
                    Mnemonic::Je,
                    Mnemonic::Mov,
                    Mnemonic::Mov,
                    Mnemonic::Mov,
                    Mnemonic::Jmp
                ]
            );
            let mem = |i: usize| ins[i].memory_displacement64();
            assert_eq!(mem(0), slot + RET as u64);
            assert_eq!(mem(1), slot + TARGET as u64);
            assert_eq!(mem(2), slot + RESULT as u64);
            assert_eq!(mem(3), slot + OUTPTR as u64);
            assert_eq!(ins[5].near_branch_target(), ins[8].ip());
            assert_eq!(mem(7), slot + RESULT2 as u64);
            assert_eq!(mem(8), slot + DONE as u64);
            assert_eq!(ins[8].immediate32(), 1);
            assert_eq!(mem(9), slot + RET as u64);
        }
    }
}
