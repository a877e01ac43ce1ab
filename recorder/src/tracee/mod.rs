//! What the recorder places in the tracee.
//!
//! - [`probe`]: the probe memory, a memfd shared by the tracee and the tracer: return
//!   shims and their slots (the slow path), the tid-indexed thread areas and their
//!   return cells (the fast path), a `syscall; int3` stub;
//! - [`trampoline`]: the entry trampoline each `jmp`-patched function jumps to, which
//!   hands its call over through the thread's area;
//! - [`inject`]: system calls run inside a stopped tracee (to map the probe memory and
//!   the trampoline pages near each module);
//! - [`leftovers`]: what an attached session leaves mapped, recognised and removed once
//!   no thread can be inside it;
//! - [`ring`]: ring recording: the ring region of the probe memory, the ring entry
//!   trampoline that writes one event per call without stopping, and the recorder's
//!   side of the rings (drain, watermark, merge in sequence order).

pub(crate) mod inject;
pub(crate) mod leftovers;
pub(crate) mod probe;
pub mod ring;
pub(crate) mod trampoline;
