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
        return encode_with_jump_back(block, entry, len, dest);
    }
    encode(&block, entry, len, dest)
}

/// Appends a jump to `entry + len` to `block` and encodes it at `dest`.
fn encode_with_jump_back(
    mut block: Vec<Instruction>,
    entry: u64,
    len: usize,
    dest: u64,
) -> Result<Displaced, RelocateError> {
    let resume = entry.wrapping_add(len as u64);
    let jump = Instruction::with_branch(Code::Jmp_rel32_64, resume).map_err(|e| {
        RelocateError::Encode {
            entry,
            message: e.to_string(),
        }
    })?;
    block.push(jump);
    encode(&block, entry, len, dest)
}

/// Encodes `block` to run at `dest` (the code displaced from `entry`, `len` bytes).
fn encode(
    block: &[Instruction],
    entry: u64,
    len: usize,
    dest: u64,
) -> Result<Displaced, RelocateError> {
    let encoded = BlockEncoder::encode(
        64,
        InstructionBlock::new(block, dest),
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

/// Build the displaced block for a `jmp rel32` patch: the instructions at `entry` that
/// cover at least `min_len` bytes (read from `code`), re-encoded to run at `dest`,
/// followed by a jump back to the first instruction after them.
///
/// Unlike [`displaced_copy`], nothing is emulated: a block holding a call, a return, a
/// debug trap or an indirect jump is refused (the caller then uses a one-byte `int3`).
/// The caller must also check that nothing branches into the middle of the block; see
/// [`branches_into`].
pub fn displaced_block(
    code: &[u8],
    entry: u64,
    dest: u64,
    min_len: usize,
) -> Result<Displaced, RelocateError> {
    let not = |reason| RelocateError::NotDisplaceable { entry, reason };
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut block: Vec<Instruction> = Vec::with_capacity(6);
    let mut len = 0usize;
    while len < min_len {
        if !decoder.can_decode() {
            return Err(RelocateError::Undecodable { entry });
        }
        let instr = decoder.decode();
        if instr.is_invalid() {
            return Err(RelocateError::Undecodable { entry });
        }
        match instr.flow_control() {
            FlowControl::Next | FlowControl::ConditionalBranch => {}
            FlowControl::UnconditionalBranch if len + instr.len() >= min_len => {}
            _ => {
                return Err(not(
                    "a call, return, trap or jump among the first instructions",
                ))
            }
        }
        if instr.is_ip_rel_memory_operand() {
            let target = instr.ip_rel_memory_address();
            if !rel32_reachable(dest, target) {
                return Err(RelocateError::OutOfRange { target, dest });
            }
        }
        len += instr.len();
        block.push(instr);
    }
    encode_with_jump_back(block, entry, len, dest)
}

/// Whether any direct branch in the function `code` (starting at `start`) lands strictly
/// inside `start..start + len`, i.e. into the middle of a patched entry. Code that does
/// not decode counts as a yes (the caller then patches one byte only); callers pass the
/// function's bytes as far as its symbol's size says.
pub fn branches_into(code: &[u8], start: u64, len: usize) -> bool {
    let inside = |t: u64| t > start && t < start + len as u64;
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    while decoder.can_decode() {
        let instr = decoder.decode();
        if instr.is_invalid() {
            return true;
        }
        let direct = matches!(
            instr.flow_control(),
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call
        );
        if direct && inside(instr.near_branch_target()) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod block_tests {
    use super::*;

    // glibc-like entries: `push r12; push rbp; mov rbp, rdi` (1+2+1+3 bytes...).
    const MALLOC_LIKE: &[u8] = &[
        0x41, 0x54, // push r12
        0x55, // push rbp
        0x48, 0x89, 0xfd, // mov rbp, rdi
        0x53, // push rbx
        0xc3, // ret
    ];

    #[test]
    fn a_block_covers_whole_instructions_and_jumps_back() {
        let entry = 0x7f00_0000_1000;
        let dest = 0x7f00_0010_0000;
        let d = displaced_block(MALLOC_LIKE, entry, dest, 5).unwrap();
        assert_eq!(d.displaced_len, 6); // push r12, push rbp, mov rbp, rdi
        let mut dec = Decoder::with_ip(64, &d.bytes, dest, DecoderOptions::NONE);
        let ins: Vec<Instruction> = dec.iter().collect();
        assert_eq!(&d.bytes[..6], &MALLOC_LIKE[..6]);
        let last = ins.last().unwrap();
        assert_eq!(last.flow_control(), FlowControl::UnconditionalBranch);
        assert_eq!(last.near_branch_target(), entry + 6);
    }

    #[test]
    fn a_conditional_branch_keeps_its_target() {
        // test rdi, rdi; je +0x40; ...
        let code = [0x48, 0x85, 0xff, 0x74, 0x40, 0x90, 0x90, 0x90];
        let entry = 0x5555_0000_0000;
        let dest = 0x5555_1000_0000;
        let d = displaced_block(&code, entry, dest, 5).unwrap();
        assert_eq!(d.displaced_len, 5);
        let mut dec = Decoder::with_ip(64, &d.bytes, dest, DecoderOptions::NONE);
        let jcc = dec
            .iter()
            .find(|i| i.flow_control() == FlowControl::ConditionalBranch);
        assert_eq!(jcc.unwrap().near_branch_target(), entry + 5 + 0x40);
    }

    #[test]
    fn calls_and_returns_in_the_window_are_refused() {
        let entry = 0x1000;
        // call rel32 first.
        let call = [0xe8, 0, 0, 0, 0, 0x90];
        assert!(displaced_block(&call, entry, 0x2000, 5).is_err());
        // ret before five bytes.
        let ret = [0x90, 0xc3, 0x90, 0x90, 0x90, 0x90];
        assert!(displaced_block(&ret, entry, 0x2000, 5).is_err());
        // A 5-byte jmp thunk is fine.
        let thunk = [0xe9, 0x10, 0, 0, 0];
        assert_eq!(
            displaced_block(&thunk, entry, 0x2000, 5)
                .unwrap()
                .displaced_len,
            5
        );
    }

    #[test]
    fn branches_into_the_patched_bytes_are_found() {
        let start = 0x1000;
        // push rbp; mov rbp, rsp; nop; jmp back to start+1 (into the window).
        let into = [0x55, 0x48, 0x89, 0xe5, 0x90, 0xeb, 0xfa];
        assert!(branches_into(&into, start, 5));
        // The same loop to the entry itself is fine (the jmp there is whole).
        let to_entry = [0x55, 0x48, 0x89, 0xe5, 0x90, 0xeb, 0xf9];
        assert!(!branches_into(&to_entry, start, 5));
    }
}
