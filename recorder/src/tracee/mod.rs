//! What the recorder places in the tracee.
//!
//! - [`probe`]: the probe memory, a memfd shared by the tracee and the tracer: return
//!   shims and their slots (the slow path), the tid-indexed thread areas and their
//!   return cells (the fast path), a `syscall; int3` stub;
//! - [`trampoline`]: the entry trampoline each `jmp`-patched function jumps to, which
//!   hands its call over through the thread's area;
//! - [`inject`]: system calls run inside a stopped tracee (to map the probe memory and
//!   the trampoline pages near each module).

pub(crate) mod inject;
pub(crate) mod probe;
pub(crate) mod trampoline;
