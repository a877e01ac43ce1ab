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
//! The area also holds a `syscall; int3` stub at offset 0, used to inject system calls.

use std::fs::File;
use std::io;

use crate::sys::SharedMap;

/// Number of return slots (concurrently pending calls across a process tree).
pub const SLOTS: usize = 4096;
/// Bytes per shim and per data slot.
const SLOT_BYTES: usize = 64;
/// Offset of the first shim in the code part (the syscall stub comes first).
const SHIM_BASE: usize = 64;
/// Size of the code part (read-execute in the tracee).
pub const CODE_LEN: usize = round_page(SHIM_BASE + SLOTS * SLOT_BYTES);
/// Size of the data part (read-write in the tracee).
pub const DATA_LEN: usize = round_page(SLOTS * SLOT_BYTES);
/// Total size of the memfd.
pub const TOTAL_LEN: usize = CODE_LEN + DATA_LEN;

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

/// The tracer's side of one probe area: the shared mapping plus slot bookkeeping. Shared
/// by every process whose address space maps this memfd (a fork child inherits it).
pub struct Probe {
    map: SharedMap,
    /// Where the code part is mapped in the tracee (the data part follows it).
    pub code_addr: u64,
    free: Vec<u32>,
}

/// A reserved slot index.
pub type Slot = u32;

impl Probe {
    /// Wraps the tracer's mapping of a probe memfd whose code part the tracee mapped at
    /// `code_addr`, and writes the shims.
    pub fn new(file: &File, code_addr: u64) -> io::Result<Probe> {
        let map = SharedMap::map(file, TOTAL_LEN)?;
        map.write_bytes(0, &code_image());
        Ok(Probe {
            map,
            code_addr,
            free: (0..SLOTS as u32).rev().collect(),
        })
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

    /// The caller's return address saved in `slot` (where the thread really returns).
    pub fn saved_return(&self, slot: Slot) -> u64 {
        self.map.read_u64(Self::off(slot, RET))
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
