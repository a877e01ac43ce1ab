//! Displaced execution of the instruction a breakpoint covers.
//!
//! The recorder's `int3` overwrites the first byte of an allocator's first
//! instruction. To let the tracee continue without removing and re-inserting
//! the breakpoint (which would race with other threads and costs two extra
//! stops), the recorder runs a copy of that one instruction from a
//! trampoline in the tracee, followed by a jump back to the next original
//! instruction. Copying an instruction to another address changes what its
//! RIP-relative parts mean, so this module decodes it with `iced-x86` and
//! re-encodes it for the trampoline address with the `BlockEncoder`, which
//! rewrites RIP-relative memory operands and relative branches so that they
//! still reach the original absolute addresses.
//!
//! A near `call` is the one instruction whose effect depends on where it
//! runs besides its operands: it pushes its own address plus its length. A
//! copied `call` would push a trampoline address, so callees would return
//! into the trampoline and unwinders would see a frame in an unknown
//! module. It is emulated instead: the copy pushes the original return
//! address (`entry + len`, written as a sign-extended `push imm32` and a
//! `mov dword [rsp+4], hi32`, neither of which changes flags) and then jumps
//! to the original target; the callee returns straight to the original code.
//!
//! Pure functions over byte buffers: nothing here touches the tracee.

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, FlowControl, Instruction,
    InstructionBlock, MemoryOperand, Register,
};

/// Errors from [`displaced_copy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelocateError {
    /// The bytes at `entry` do not start with a valid x86_64 instruction (or
    /// the instruction is longer than the bytes given).
    #[error("no valid instruction at {entry:#x}")]
    Undecodable {
        /// The instruction's address.
        entry: u64,
    },
    /// A RIP-relative memory operand's target is more than ±2 GiB from the
    /// trampoline: map the trampoline closer to the module.
    #[error("RIP-relative operand target {target:#x} is out of rel32 range of {dest:#x}")]
    OutOfRange {
        /// The absolute address the operand refers to.
        target: u64,
        /// The trampoline address.
        dest: u64,
    },
    /// The instruction cannot run from another address (e.g. an `int3`
    /// already there, or a `call` through `rsp`).
    #[error("instruction at {entry:#x} cannot be displaced: {reason}")]
    NotDisplaceable {
        /// The instruction's address.
        entry: u64,
        /// Why.
        reason: &'static str,
    },
    /// iced-x86's encoder refused the rewritten block.
    #[error("encoding the displaced instruction at {entry:#x}: {message}")]
    Encode {
        /// The instruction's address.
        entry: u64,
        /// iced-x86's message.
        message: String,
    },
}

/// The trampoline code for one displaced instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Displaced {
    /// Machine code to place at `dest`: the re-encoded instruction, then a
    /// jump to `entry + displaced_len` (rel32 when in range, otherwise
    /// `jmp qword ptr [rip+disp]` with the 8-byte target stored after it).
    /// For an emulated `call`, the code ends with the jump to the call target
    /// instead (the callee returns to `entry + displaced_len`).
    pub bytes: Vec<u8>,
    /// Length of the original instruction at `entry`.
    pub displaced_len: usize,
}

/// The length of the instruction at `ip` starting at `code[0]`; `None` if it
/// is invalid or longer than `code`.
pub fn instruction_len(code: &[u8], ip: u64) -> Option<usize> {
    let instr = decode_first(code, ip)?;
    Some(instr.len())
}

fn decode_first(code: &[u8], ip: u64) -> Option<Instruction> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return None;
    }
    let instr = decoder.decode();
    if instr.is_invalid() {
        None
    } else {
        Some(instr)
    }
}

/// Whether `target` can be reached with a rel32 displacement from code at
/// `dest` (with slack for the trampoline's own length).
fn rel32_reachable(dest: u64, target: u64) -> bool {
    const SLACK: i128 = 64;
    let diff = i128::from(target) - i128::from(dest);
    diff > i128::from(i32::MIN) + SLACK && diff < i128::from(i32::MAX) - SLACK
}

/// Build the trampoline for the instruction at `entry`: decode the first
/// instruction of `code` (bytes read at `entry`, at least as many as the
/// instruction is long; 16 is always enough) and re-encode it to run at
/// `dest`, followed by a jump back to the instruction after it.
///
/// RIP-relative memory operands keep their absolute target (an error if it
/// is out of rel32 range of `dest`); relative `jmp`/`jcc`/`loop`/`jrcxz`
/// keep their original target (rewritten to a longer form when needed); a
/// near `call` is emulated as described in the module documentation.
pub fn displaced_copy(code: &[u8], entry: u64, dest: u64) -> Result<Displaced, RelocateError> {
    let instr = decode_first(code, entry).ok_or(RelocateError::Undecodable { entry })?;
    let len = instr.len();
    let resume = entry.wrapping_add(len as u64);
    let not = |reason| RelocateError::NotDisplaceable { entry, reason };

    if instr.code() == Code::Int3 || instr.code() == Code::Int1 {
        return Err(not("a debug trap is already there"));
    }
    if instr.is_ip_rel_memory_operand() {
        let target = instr.ip_rel_memory_address();
        if !rel32_reachable(dest, target) {
            return Err(RelocateError::OutOfRange { target, dest });
        }
    }

    let mut block: Vec<Instruction> = Vec::with_capacity(4);
    if instr.flow_control() == FlowControl::Call
        || instr.flow_control() == FlowControl::IndirectCall
    {
        // Emulate: push the original return address, then jump.
        let uses_rsp = instr.memory_base() == Register::RSP
            || instr.memory_index() == Register::RSP
            || instr.op0_register() == Register::RSP;
        if uses_rsp {
            return Err(not("call through rsp"));
        }
        let jump_code = match instr.code() {
            Code::Call_rel32_64 => Code::Jmp_rel32_64,
            Code::Call_rm64 => Code::Jmp_rm64,
            _ => return Err(not("unsupported call form")),
        };
        let lo = resume as u32 as i32;
        let hi = (resume >> 32) as u32;
        let enc = |e: iced_x86::IcedError| RelocateError::Encode {
            entry,
            message: e.to_string(),
        };
        block.push(Instruction::with1(Code::Pushq_imm32, lo).map_err(enc)?);
        if i64::from(lo) as u64 != resume {
            block.push(
                Instruction::with2(
                    Code::Mov_rm32_imm32,
                    MemoryOperand::with_base_displ(Register::RSP, 4),
                    hi,
                )
                .map_err(enc)?,
            );
        }
        let mut jump = instr;
        jump.set_code(jump_code);
        block.push(jump);
    } else {
        block.push(instr);
        block.push(
            Instruction::with_branch(Code::Jmp_rel32_64, resume).map_err(|e| {
                RelocateError::Encode {
                    entry,
                    message: e.to_string(),
                }
            })?,
        );
    }

    let encoded = BlockEncoder::encode(
        64,
        InstructionBlock::new(&block, dest),
        BlockEncoderOptions::NONE,
    )
    .map_err(|e| RelocateError::Encode {
        entry,
        message: e.to_string(),
    })?;
    Ok(Displaced {
        bytes: encoded.code_buffer,
        displaced_len: len,
    })
}
