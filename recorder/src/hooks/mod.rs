//! Hooks on the traced program's functions: where they go and how they are put there.
//!
//! - [`catalogue`]: which symbols are hooked (allocator entry points, descriptor and
//!   mapping calls) and how each one's arguments are read;
//! - [`elf`]: reading the modules mapped into the tracee (symbols, load segments,
//!   unwind sections), with the catalogue applied to their symbols;
//! - [`relocate`]: displaced execution of the instructions a patch covers;
//! - [`patch`]: installing a hook in the tracee's code (a `jmp` to an entry trampoline,
//!   or an `int3`), with the displaced instructions beside it.
//!
//! The tracer decides when a module is hooked (`tracer::hooking`); everything here
//! works on one module or one function at a time.

pub(crate) mod catalogue;
pub(crate) mod elf;
pub(crate) mod patch;
pub(crate) mod relocate;

/// The page size the kernel maps ELF segments with on x86_64.
pub(crate) const PAGE_SIZE: u64 = 4096;
