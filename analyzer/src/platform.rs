//! The crate's only `unsafe` code, two calls the safe language cannot express (the crate
//! root denies `unsafe_code`; this module alone allows it):
//!
//! * [`prefetch`]: a cache prefetch hint on x86_64 (the replay's shards prefetch the
//!   live-table slots of the operations ahead). Invariant: the pointer comes from a
//!   reference, and a prefetch never faults nor writes memory, whatever the address.
//! * [`map_read_only`]: a read-only map of a module's file (the symbolizer reads ELF and
//!   DWARF from it). Invariant: the map is never written; if another process truncates
//!   the file while it is mapped, reading the lost pages faults (`SIGBUS`): the accepted
//!   risk of every debugger and symbolizer that maps binaries. Maps live only while a
//!   module is being loaded.
#![allow(unsafe_code)]

use std::fs::File;

/// Starts loading the cache line of `value` (a hint: nothing else happens).
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint: it
        // never faults and changes no memory (the pointer comes from a reference anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Maps `file` read-only (see the module docs for the invariant).
pub(crate) fn map_read_only(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private to this function's callers; a file
    // truncated under our feet could fault, which is the accepted risk of every
    // debugger and symbolizer that maps binaries.
    unsafe { memmap2::Mmap::map(file) }
}
