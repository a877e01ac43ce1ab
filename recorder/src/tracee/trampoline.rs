//! Entry trampolines: the code a hooked function's patched entry jumps to on the fast
//! path. It writes the call (arguments, stack pointer, a copy of the top of the stack)
//! into the thread's area of the probe memory ([`super::probe`]), stops once with an
//! `int3` for the tracer to read it, and captures the function's result in the area's
//! return cell.

use super::probe::{
    AREAS_OFF, AREA_BYTES, A_ARGS, A_CELL, A_ENTRY, A_HI, A_LEN, A_LEVEL, A_LO, A_MASK, A_RBP,
    A_READY, A_REBLOCK, A_RSP, A_SPAN, A_STACK, A_TRAPSET, C_DONE, C_OUTPTR, C_RESULT, C_RESULT2,
    MAX_TID, STACK_COPY, TABLE_OFF,
};

/// Bytes an entry trampoline takes before its displaced block (which follows it).
pub const ENTRY_TRAMPOLINE_LEN: u64 = 512;

/// An entry trampoline assembled for its address.
#[derive(Debug, Clone)]
pub struct EntryTrampoline {
    /// Machine code, at most [`ENTRY_TRAMPOLINE_LEN`] bytes.
    pub code: Vec<u8>,
    /// Address of its `int3` (the stop reports `trap + 1`).
    pub trap: u64,
}

/// Assembles the entry trampoline of the function at `entry`, to run at `at`, for a probe
/// mapped at `probe_base`; `displaced` is the function's displaced first instructions
/// (which jump back into the function).
///
/// The function's entry is patched with a `jmp` here. The trampoline hands the call to the
/// tracer without the tracer having to read or write registers (each ptrace register
/// request costs about a sixth of a stop here, see docs/PERFORMANCE.md):
///
/// ```text
///   push rax; push rcx                  ; rax: al of variadic calls; rcx: 4th argument
///   mov eax, SYS_gettid; syscall        ; (clobbers rcx, r11)
///   area = table[tid]                   ; 0 (no area) or tid too large: slow
///   if level > 0: pop rcx; pop rax; jmp displaced   ; nested in a hooked call: no stop
///   level = 1
///   area.{entry, rsp, rbp, args} = ...  ; what GETREGS would have given
///   if SIGTRAP is blocked: unblock it  ; (rt_sigprocmask; see below)
///   area.stack = copy of [rsp, rsp+len) ; len: up to the stack's end, at most 4 KiB
///   ready = 1; pop rcx; pop rax         ; every register as at the entry, r11 = area
///   int3                                ; the stop: the tracer reads the area
///   if unblocked above: restore the signal mask
///   push cell                           ; capture the result in the return cell
///   call displaced                      ; the function sees its own stack layout
///   pop cell; zero_first: if rax: [rax] = 0; cell.result = rax; if cell.outptr: cell.result2 = *cell.outptr
///   cell.done = 1; level = 0; ret
/// ```
///
/// The slow path (`r11` = 0 at the `int3`) leaves every register as at the entry, so the
/// tracer reads them with GETREGS and points `rip` at a slot shim or at `displaced`, as
/// for a breakpoint on the entry itself. The function gets every argument register as
/// it was (rdi, rsi, rdx are reloaded from the area, rax and rcx popped); only r10, r11
/// (scratch at a call in the SysV ABI) and flags differ.
///
/// `zero_first`: clear the first word of the block the function returned (a replacement
/// allocator's; see `ring::emit_zero_first`).
pub fn entry_trampoline(
    at: u64,
    probe_base: u64,
    entry: u64,
    displaced: u64,
    zero_first: bool,
) -> Result<EntryTrampoline, iced_x86::IcedError> {
    use iced_x86::code_asm::*;
    let table = probe_base + TABLE_OFF as u64;
    let areas = probe_base + AREAS_OFF as u64 - AREA_BYTES as u64; // area numbers start at 1
    let d = |off: usize| off as i32;
    let mut a = CodeAssembler::new(64)?;
    let mut slow = a.create_label();
    let mut trap = a.create_label();
    let mut page_rule = a.create_label();
    let mut have_len = a.create_label();
    let mut plain = a.create_label();
    let mut no_out = a.create_label();
    let mut nested = a.create_label();
    let mut mask_ok = a.create_label();
    let mut no_reblock = a.create_label();
    a.push(rax)?;
    a.push(rcx)?;
    a.mov(eax, libc::SYS_gettid as u32)?;
    a.syscall()?;
    a.cmp(eax, MAX_TID)?;
    a.jae(slow)?;
    a.mov(r11, table)?;
    a.mov(eax, dword_ptr(r11 + rax * 4))?;
    a.test(eax, eax)?;
    a.jz(slow)?;
    a.shl(rax, AREA_BYTES.trailing_zeros())?;
    a.mov(r11, areas)?;
    a.add(r11, rax)?;
    // Called from inside a hooked call (operator new -> malloc, or a signal handler
    // that interrupted one, even in this trampoline): not recorded, no stop.
    a.cmp(qword_ptr(r11 + d(A_LEVEL)), 0)?;
    a.jne(nested)?;
    a.mov(qword_ptr(r11 + d(A_LEVEL)), 1)?;
    a.mov(qword_ptr(r11 + d(A_ARGS)), rdi)?;
    a.mov(qword_ptr(r11 + d(A_ARGS + 8)), rsi)?;
    a.mov(qword_ptr(r11 + d(A_ARGS + 16)), rdx)?;
    a.mov(rax, qword_ptr(rsp))?; // the saved rcx
    a.mov(qword_ptr(r11 + d(A_ARGS + 24)), rax)?;
    a.mov(qword_ptr(r11 + d(A_ARGS + 32)), r8)?;
    a.mov(qword_ptr(r11 + d(A_ARGS + 40)), r9)?;
    a.mov(qword_ptr(r11 + d(A_RBP)), rbp)?;
    a.mov(rax, entry)?;
    a.mov(qword_ptr(r11 + d(A_ENTRY)), rax)?;
    a.lea(rax, qword_ptr(rsp + 16))?; // the entry's rsp
    a.mov(qword_ptr(r11 + d(A_RSP)), rax)?;
    // The int3 must not find SIGTRAP blocked: the kernel would then reset the program's
    // SIGTRAP action to the default and unblock it for good (force_sig). Unblock it
    // around the stop instead (and block it again before the call runs).
    let sigprocmask = |a: &mut CodeAssembler,
                       how: u32,
                       set: Option<usize>,
                       old: Option<usize>|
     -> Result<(), iced_x86::IcedError> {
        a.push(r11)?;
        a.mov(eax, libc::SYS_rt_sigprocmask as u32)?;
        a.mov(edi, how)?;
        match set {
            Some(off) => a.lea(rsi, qword_ptr(r11 + d(off)))?,
            None => a.xor(esi, esi)?,
        }
        match old {
            Some(off) => a.lea(rdx, qword_ptr(r11 + d(off)))?,
            None => a.xor(edx, edx)?,
        }
        a.mov(r10d, 8u32)?;
        a.syscall()?;
        a.pop(r11)?;
        Ok(())
    };
    a.mov(qword_ptr(r11 + d(A_REBLOCK)), 0)?;
    sigprocmask(&mut a, libc::SIG_BLOCK as u32, None, Some(A_MASK))?;
    a.test(byte_ptr(r11 + d(A_MASK)), 1 << (libc::SIGTRAP - 1))?;
    a.jz(mask_ok)?;
    a.mov(qword_ptr(r11 + d(A_TRAPSET)), 1 << (libc::SIGTRAP - 1))?;
    a.mov(qword_ptr(r11 + d(A_REBLOCK)), 1)?;
    sigprocmask(&mut a, libc::SIG_UNBLOCK as u32, Some(A_TRAPSET), None)?;
    a.set_label(&mut mask_ok)?;
    a.mov(rax, qword_ptr(r11 + d(A_RSP)))?;
    // Length: to the end of the thread's stack when rsp is in it (at most 4 KiB), else
    // to the end of rsp's page (a signal stack, a coroutine: never past a mapping).
    a.mov(rcx, rax)?;
    a.sub(rcx, qword_ptr(r11 + d(A_LO)))?;
    a.cmp(rcx, qword_ptr(r11 + d(A_SPAN)))?;
    a.jae(page_rule)?;
    a.mov(rcx, qword_ptr(r11 + d(A_HI)))?;
    a.sub(rcx, rax)?;
    a.cmp(rcx, STACK_COPY as i32)?;
    a.jbe(have_len)?;
    a.mov(ecx, STACK_COPY as u32)?;
    a.jmp(have_len)?;
    a.set_label(&mut page_rule)?;
    a.mov(ecx, eax)?;
    a.and(ecx, 4095)?;
    a.neg(rcx)?;
    a.add(rcx, 4096)?;
    a.set_label(&mut have_len)?;
    a.mov(qword_ptr(r11 + d(A_LEN)), rcx)?;
    a.lea(rdi, qword_ptr(r11 + d(A_STACK)))?;
    a.mov(rsi, rax)?;
    a.rep().movsb()?; // DF is clear at a call (SysV ABI)
    a.mov(rdi, qword_ptr(r11 + d(A_ARGS)))?;
    a.mov(rsi, qword_ptr(r11 + d(A_ARGS + 8)))?;
    a.mov(rdx, qword_ptr(r11 + d(A_ARGS + 16)))?;
    a.mov(qword_ptr(r11 + d(A_READY)), 1)?;
    a.pop(rcx)?;
    a.pop(rax)?;
    a.jmp(trap)?;
    a.set_label(&mut slow)?;
    a.xor(r11d, r11d)?;
    a.pop(rcx)?;
    a.pop(rax)?;
    a.set_label(&mut trap)?;
    a.int3()?;
    // Only the fast path gets here (the tracer moves slow-path threads elsewhere), and
    // after a detach, when the int3 has become a nop: then r11 may be 0.
    a.test(r11, r11)?;
    a.jz(plain)?;
    a.cmp(qword_ptr(r11 + d(A_REBLOCK)), 0)?;
    a.je(no_reblock)?;
    for r in [rax, rcx, rdx, rsi, rdi] {
        a.push(r)?;
    }
    sigprocmask(&mut a, libc::SIG_SETMASK as u32, Some(A_MASK), None)?;
    for r in [rdi, rsi, rdx, rcx, rax] {
        a.pop(r)?;
    }
    a.set_label(&mut no_reblock)?;
    a.lea(r10, qword_ptr(r11 + d(A_CELL)))?;
    a.push(r10)?;
    a.call(displaced)?;
    a.pop(r10)?;
    if zero_first {
        super::ring::emit_zero_first(&mut a)?;
    }
    a.mov(qword_ptr(r10 + d(C_RESULT)), rax)?;
    a.mov(r11, qword_ptr(r10 + d(C_OUTPTR)))?;
    a.test(r11, r11)?;
    a.jz(no_out)?;
    a.mov(r11, qword_ptr(r11))?;
    a.mov(qword_ptr(r10 + d(C_RESULT2)), r11)?;
    a.set_label(&mut no_out)?;
    a.mov(qword_ptr(r10 + d(C_DONE)), 1)?;
    a.mov(qword_ptr(r10 - (A_CELL - A_LEVEL) as i32), 0)?;
    a.ret()?;
    a.set_label(&mut nested)?;
    a.pop(rcx)?;
    a.pop(rax)?;
    a.set_label(&mut plain)?;
    a.jmp(displaced)?;
    let res = a.assemble_options(
        at,
        iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let trap = res.label_ip(&trap)?;
    let code = res.inner.code_buffer;
    debug_assert!(code.len() as u64 <= ENTRY_TRAMPOLINE_LEN);
    Ok(EntryTrampoline { code, trap })
}

#[cfg(test)]
mod entry_tests {
    use super::*;

    #[test]
    fn entry_trampoline_fits_and_traps() {
        let at = 0x7f00_0000_1000u64;
        let t = entry_trampoline(
            at,
            0x7f10_0000_0000,
            0x7f00_2000_0000,
            at + ENTRY_TRAMPOLINE_LEN,
            true,
        )
        .unwrap();
        assert!(t.code.len() as u64 <= ENTRY_TRAMPOLINE_LEN);
        assert_eq!(t.code[(t.trap - at) as usize], 0xcc);
    }
}
