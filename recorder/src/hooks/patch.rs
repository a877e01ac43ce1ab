//! Installing a hook at a function's entry, in the tracee's code.
//!
//! Two kinds of patch: a 5-byte `jmp` to the function's *entry trampoline* (the fast
//! path, see [`crate::tracee::trampoline`]), where the function's first instructions
//! allow it ([`jmp_patchable`]), and otherwise a one-byte `int3`. Either way the
//! displaced first instructions run from the hook's trampoline space and jump back into
//! the function, so that a patch is never lifted while the program runs.

use super::catalogue::{CallKind, HookSpec, ResourceCall};
use super::relocate::{self, RelocateError};
use crate::sys::ProcMem;
use crate::tracee::ring::{self, Publish, RingLayout, RING_TRAMPOLINE_LEN};
use crate::tracee::trampoline::{self, ENTRY_TRAMPOLINE_LEN};

/// Bytes the displaced first instructions may take.
const DISPLACED_BYTES: u64 = 64;
/// Bytes reserved per hook for its trampolines: an entry trampoline (for a `jmp` patch),
/// the displaced first instructions, then (ring recording) a ring entry trampoline or
/// gate.
pub(crate) const TRAMPOLINE_BYTES: u64 =
    ENTRY_TRAMPOLINE_LEN + DISPLACED_BYTES + RING_TRAMPOLINE_LEN;

/// Ring recording's part of a hook: where the ring region is, and how many stack bytes
/// an event copies.
pub(crate) struct RingHook {
    /// The ring region's layout.
    pub(crate) layout: RingLayout,
    /// Where the ring region is mapped in the tracee.
    pub(crate) region_base: u64,
    /// Bytes of stack each event copies at most.
    pub(crate) stack_copy: usize,
}

/// When a ring event of a call of `spec` is numbered and published.
fn publish_of(spec: &HookSpec) -> Publish {
    match spec.kind {
        CallKind::Alloc { .. }
        | CallKind::Mallocx { .. }
        | CallKind::Resize { .. }
        | CallKind::Dup { .. } => Publish::AtReturn,
        CallKind::PosixMemalign { .. } => Publish::AtReturnOutPtr,
        CallKind::Realloc { .. } => Publish::Both,
        CallKind::Free { .. } => Publish::AtEntry,
    }
}
/// Bytes a `jmp rel32` patch covers.
const JMP_LEN: usize = 5;

/// What a hooked function is.
#[derive(Clone)]
pub(crate) enum HookKind {
    /// An allocator entry point.
    Alloc(HookSpec),
    /// A descriptor or mapping call.
    Resource(ResourceCall),
    /// The dynamic linker's `_dl_debug_state` (a library was loaded or unloaded).
    DlDebugState,
}

/// A hook installed in the tracee.
#[derive(Clone)]
pub(crate) struct Hook {
    /// What the hooked function is.
    pub(crate) kind: HookKind,
    /// Where the function's displaced first instructions run (then jump back).
    pub(crate) trampoline: u64,
    /// The original bytes the patch at the entry replaced (one for an `int3`, five for
    /// a `jmp` to an entry trampoline).
    pub(crate) orig: Vec<u8>,
    /// Address of the entry trampoline's `int3`, for a `jmp` patch.
    pub(crate) trap: Option<u64>,
    /// The ring entry trampoline the entry jumps to (ring recording, allocator hooks).
    pub(crate) ring_entry: Option<u64>,
}

/// Whether the function at `addr` (`size` bytes per its symbol) can take a 5-byte `jmp`
/// at its entry: it is long enough, nothing in it branches into the bytes the jump
/// covers, and no thread stands inside them (`busy_ips`, when attaching). Otherwise it
/// gets a one-byte `int3`.
pub(crate) fn jmp_patchable(mem: &ProcMem, addr: u64, size: u64, busy_ips: &[u64]) -> bool {
    const MAX_SCAN: u64 = 64 * 1024;
    if size < JMP_LEN as u64 || size > MAX_SCAN {
        return false;
    }
    let mut body = vec![0u8; size as usize];
    if mem.read(addr, &mut body).is_err() {
        return false;
    }
    // The instructions the jump displaces (at least 5 bytes of them).
    let Some(covered) = relocate::displaced_block(&body, addr, addr, JMP_LEN)
        .ok()
        .map(|d| d.displaced_len)
    else {
        return false;
    };
    let inside = |ip: u64| ip > addr && ip < addr + covered as u64;
    !relocate::branches_into(&body, addr, covered) && !busy_ips.iter().any(|&ip| inside(ip))
}

/// Writes the entry trampoline and displaced block for the function at `addr` into the
/// hook's trampoline space at `at`, then patches the entry with a `jmp` to it. `None`
/// (nothing patched) if the function's first instructions cannot be displaced.
/// `replacement`: the function is a replacement allocator's (not the C library's), whose
/// new blocks get their first word cleared (`ring::emit_zero_first`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn install_jmp_hook(
    mem: &ProcMem,
    addr: u64,
    code: &[u8; 16],
    at: u64,
    probe_base: u64,
    kind: &HookKind,
    ring: Option<&RingHook>,
    replacement: bool,
) -> Option<Hook> {
    // A replacement allocator's fresh blocks start with its free list's stale link.
    let zero_first = replacement
        && matches!(
            kind,
            HookKind::Alloc(HookSpec {
                kind: CallKind::Alloc { .. } | CallKind::Mallocx { .. },
                ..
            })
        );
    let displaced_at = at + ENTRY_TRAMPOLINE_LEN;
    let ring_at = displaced_at + DISPLACED_BYTES;
    let disp = relocate::displaced_block(code, addr, displaced_at, JMP_LEN).ok()?;
    if disp.bytes.len() as u64 > DISPLACED_BYTES {
        return None;
    }
    let tramp =
        trampoline::entry_trampoline(at, probe_base, addr, displaced_at, zero_first).ok()?;
    if tramp.code.len() as u64 > ENTRY_TRAMPOLINE_LEN {
        return None;
    }
    // Ring recording: allocator calls get a ring entry trampoline, which falls back on
    // the stop trampoline for threads without a ring; the others a gate, which keeps
    // calls made inside a ring-recorded call (malloc's own mmap) unrecorded.
    let ring_code = match (ring, kind) {
        (None, _) | (_, HookKind::DlDebugState) => None,
        (Some(r), HookKind::Alloc(spec)) => ring::ring_entry_trampoline(
            &r.layout,
            ring_at,
            r.region_base,
            addr,
            displaced_at,
            publish_of(spec),
            r.stack_copy,
            at,
            zero_first,
        )
        .ok()
        .map(|t| (t.code, true)),
        (Some(r), HookKind::Resource(rc)) => {
            let mapping = matches!(
                rc,
                ResourceCall::Mmap | ResourceCall::Munmap | ResourceCall::Mremap
            );
            ring::ring_gate_trampoline(ring_at, r.region_base, displaced_at, at, mapping)
                .ok()
                .map(|t| (t.code, false))
        }
    };
    let target = match &ring_code {
        Some((c, _)) if c.len() as u64 <= RING_TRAMPOLINE_LEN => ring_at,
        _ => at,
    };
    mem.write(at, &tramp.code).ok()?;
    mem.write(displaced_at, &disp.bytes).ok()?;
    if target == ring_at {
        mem.write(ring_at, &ring_code.as_ref().expect("checked").0)
            .ok()?;
    }
    let ring_entry = match ring_code {
        Some((_, true)) if target == ring_at => Some(ring_at),
        _ => None,
    };
    let rel = (target as i64 - (addr as i64 + JMP_LEN as i64)) as i32;
    let mut patch = [0u8; JMP_LEN];
    patch[0] = 0xe9;
    patch[1..].copy_from_slice(&rel.to_le_bytes());
    // An int3 first, so that a thread running into the entry meanwhile stops (and is
    // sent to the displaced block like at any breakpoint) instead of running a half
    // written jump; then the displacement; then the jump's opcode.
    mem.write(addr, &[0xcc]).ok()?;
    mem.write(addr + 1, &patch[1..]).ok()?;
    mem.write(addr, &patch[..1]).ok()?;
    Some(Hook {
        kind: kind.clone(),
        trampoline: displaced_at,
        orig: code[..disp.displaced_len].to_vec(),
        trap: Some(tramp.trap),
        ring_entry,
    })
}

/// Writes the displaced copy of the first instruction of the function at `addr` (whose
/// first bytes are `code`) at `at`, then patches the entry with an `int3`. `Err` if the
/// instruction cannot be displaced; `Ok(None)` (nothing patched) if the copy does not fit
/// the hook's trampoline space or the tracee's memory cannot be written.
pub(crate) fn install_int3_hook(
    mem: &ProcMem,
    addr: u64,
    code: &[u8; 16],
    at: u64,
    kind: HookKind,
) -> Result<Option<Hook>, RelocateError> {
    let disp = relocate::displaced_copy(code, addr, at)?;
    if disp.bytes.len() as u64 > TRAMPOLINE_BYTES || mem.write(at, &disp.bytes).is_err() {
        return Ok(None);
    }
    if mem.write(addr, &[0xcc]).is_err() {
        return Ok(None);
    }
    Ok(Some(Hook {
        kind,
        trampoline: at,
        orig: vec![code[0]],
        trap: None,
        ring_entry: None,
    }))
}
