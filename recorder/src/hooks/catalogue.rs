//! The catalogue of hooked functions: which symbols are allocator entry points (the C
//! functions, every `operator new`/`delete`, the extra entry points of jemalloc,
//! tcmalloc and mimalloc, prefixed allocators such as `je_malloc`), which are
//! descriptor and mapping calls, and how the recorder reads each one's arguments at its
//! first instruction ([`CallKind`], [`ResourceCall`]).
//!
//! Pure tables and name matching: [`super::elf::ElfModule`] applies them to a module's
//! symbols.

use heaptape_format::AllocFn;

use super::PAGE_SIZE;

/// How the recorder reads an allocator call's arguments at the function's
/// first instruction. Argument indexes are in System V order: rdi = 0,
/// rsi = 1, rdx = 2, rcx = 3, r8 = 4, r9 = 5. The result (the pointer) is
/// read from rax at the return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// Returns a new block: `malloc`, `calloc`, `aligned_alloc`, `memalign`,
    /// `valloc`, `pvalloc`, every `operator new`.
    Alloc {
        /// The size argument (for `calloc`, the element size).
        size_arg: usize,
        /// For `calloc`: the element count; the size is `count * size`.
        count_arg: Option<usize>,
        /// The alignment argument, for `aligned_alloc`, `memalign` and the
        /// `std::align_val_t` operators.
        align_arg: Option<usize>,
        /// A fixed alignment: the page size for `valloc` and `pvalloc`
        /// (`pvalloc` also rounds the size up to a page multiple).
        fixed_align: Option<u64>,
    },
    /// Releases a block: `free` and every `operator delete`.
    Free {
        /// The pointer argument.
        ptr_arg: usize,
    },
    /// Resizes a block: `realloc`, `reallocarray`.
    Realloc {
        /// The old pointer.
        ptr_arg: usize,
        /// The new size (for `reallocarray`, the element size).
        size_arg: usize,
        /// For `reallocarray`: the element count; the size is `count * size`.
        count_arg: Option<usize>,
    },
    /// `posix_memalign(void **out, size_t align, size_t size)`: the pointer
    /// is stored through `out`, the return value is an error code.
    PosixMemalign {
        /// Where the new pointer is stored.
        out_arg: usize,
        /// The alignment.
        align_arg: usize,
        /// The size.
        size_arg: usize,
    },
    /// jemalloc's `mallocx(size, flags)`: a new block, aligned to `1 << (flags & 63)`
    /// when those bits are set (`MALLOCX_LG_ALIGN`).
    Mallocx {
        /// The size.
        size_arg: usize,
        /// The flags word.
        flags_arg: usize,
    },
    /// jemalloc's `xallocx(ptr, size, extra, flags)`: resizes the block in place and
    /// returns its usable size; it took the new size when that is at least `size`.
    Resize {
        /// The block.
        ptr_arg: usize,
        /// The size asked for.
        size_arg: usize,
    },
    /// A copy of a string into a new block (mimalloc's `mi_strdup`, `mi_strndup` and
    /// their heap variants): the size is the copy's length plus its terminator, read
    /// from the new block when the call returns (at most `limit_arg`'s value plus one).
    Dup {
        /// `strndup`'s length limit, if any.
        limit_arg: Option<usize>,
    },
}

/// What an allocator entry point is and how to read its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HookSpec {
    /// The function, as recorded in the trace.
    pub func: AllocFn,
    /// How to read its arguments.
    pub kind: CallKind,
    /// The entry point is also another family's (its address has names of more than
    /// one of malloc's, `new`'s and `new[]`'s families: tcmalloc and mimalloc make
    /// `free`, `operator delete` and `operator delete[]` one function, and `new` and
    /// `new[]` another). Which one a call meant cannot be known, so a release through
    /// it, or of a block allocated through it, is recorded as the one its block calls
    /// for (never a mismatched free).
    pub shared: bool,
}

/// An allocator entry point defined in a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookSymbol {
    /// The symbol name the spec was taken from.
    pub name: String,
    /// Link-time address (add the load bias for the runtime address).
    pub vaddr: u64,
    /// Symbol size (0 when the symbol table does not say).
    pub size: u64,
    /// What the function is and how to read its arguments.
    pub spec: HookSpec,
    /// Other hook names at the same address (e.g. `aligned_alloc` for glibc's
    /// `memalign`), which are not hooked separately.
    pub aliases: Vec<String>,
}

/// The C allocator functions, in order of preference when several share an
/// address (glibc aliases `aligned_alloc` to `memalign`; `cfree` is an old name of
/// `free` that tcmalloc and mimalloc still define).
const C_FUNCTIONS: [&str; 11] = [
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "memalign",
    "aligned_alloc",
    "valloc",
    "pvalloc",
    "cfree",
];

const fn alloc(size_arg: usize) -> CallKind {
    CallKind::Alloc {
        size_arg,
        count_arg: None,
        align_arg: None,
        fixed_align: None,
    }
}

const fn aligned(align_arg: usize, size_arg: usize) -> CallKind {
    CallKind::Alloc {
        size_arg,
        count_arg: None,
        align_arg: Some(align_arg),
        fixed_align: None,
    }
}

/// The spec of a C allocator function by its unprefixed name.
fn c_spec(name: &str) -> Option<HookSpec> {
    let (func, kind) = match name {
        "malloc" => (AllocFn::Malloc, alloc(0)),
        "calloc" => (
            AllocFn::Calloc,
            CallKind::Alloc {
                size_arg: 1,
                count_arg: Some(0),
                align_arg: None,
                fixed_align: None,
            },
        ),
        "realloc" => (
            AllocFn::Realloc,
            CallKind::Realloc {
                ptr_arg: 0,
                size_arg: 1,
                count_arg: None,
            },
        ),
        "reallocarray" => (
            AllocFn::Reallocarray,
            CallKind::Realloc {
                ptr_arg: 0,
                size_arg: 2,
                count_arg: Some(1),
            },
        ),
        "free" | "cfree" => (AllocFn::Free, CallKind::Free { ptr_arg: 0 }),
        "posix_memalign" => (
            AllocFn::PosixMemalign,
            CallKind::PosixMemalign {
                out_arg: 0,
                align_arg: 1,
                size_arg: 2,
            },
        ),
        "aligned_alloc" => (AllocFn::AlignedAlloc, aligned(0, 1)),
        "memalign" => (AllocFn::Memalign, aligned(0, 1)),
        "valloc" | "pvalloc" => (
            if name == "valloc" {
                AllocFn::Valloc
            } else {
                AllocFn::Pvalloc
            },
            CallKind::Alloc {
                size_arg: 0,
                count_arg: None,
                align_arg: None,
                fixed_align: Some(PAGE_SIZE),
            },
        ),
        _ => return None,
    };
    Some(HookSpec {
        func,
        kind,
        shared: false,
    })
}

/// The spec of a C++ `operator new`/`operator delete` by its mangled name
/// (x86_64, `size_t` = `unsigned long`).
fn cxx_spec(name: &str) -> Option<HookSpec> {
    let (func, kind) = match name {
        "_Znwm" | "_ZnwmRKSt9nothrow_t" => (AllocFn::New, alloc(0)),
        "_ZnwmSt11align_val_t" | "_ZnwmSt11align_val_tRKSt9nothrow_t" => {
            (AllocFn::New, aligned(1, 0))
        }
        "_Znam" | "_ZnamRKSt9nothrow_t" => (AllocFn::NewArray, alloc(0)),
        "_ZnamSt11align_val_t" | "_ZnamSt11align_val_tRKSt9nothrow_t" => {
            (AllocFn::NewArray, aligned(1, 0))
        }
        "_ZdlPv"
        | "_ZdlPvm"
        | "_ZdlPvSt11align_val_t"
        | "_ZdlPvmSt11align_val_t"
        | "_ZdlPvRKSt9nothrow_t"
        | "_ZdlPvSt11align_val_tRKSt9nothrow_t" => (AllocFn::Delete, CallKind::Free { ptr_arg: 0 }),
        "_ZdaPv"
        | "_ZdaPvm"
        | "_ZdaPvSt11align_val_t"
        | "_ZdaPvmSt11align_val_t"
        | "_ZdaPvRKSt9nothrow_t"
        | "_ZdaPvSt11align_val_tRKSt9nothrow_t" => {
            (AllocFn::DeleteArray, CallKind::Free { ptr_arg: 0 })
        }
        _ => return None,
    };
    Some(HookSpec {
        func,
        kind,
        shared: false,
    })
}

/// `calloc`-like: `count_arg` elements of `size_arg` bytes.
const fn counted(count_arg: usize, size_arg: usize, align_arg: Option<usize>) -> CallKind {
    CallKind::Alloc {
        size_arg,
        count_arg: Some(count_arg),
        align_arg,
        fixed_align: None,
    }
}

/// `realloc`-like: the block in `ptr_arg`, the new size in `size_arg` (times the
/// element count in `count_arg`, if any).
const fn resize(ptr_arg: usize, size_arg: usize, count_arg: Option<usize>) -> CallKind {
    CallKind::Realloc {
        ptr_arg,
        size_arg,
        count_arg,
    }
}

const FREE0: CallKind = CallKind::Free { ptr_arg: 0 };

/// The spec of an allocation entry point a replacement allocator adds to the C and
/// C++ ones (those it aliases to `malloc` and friends, as tcmalloc's `tc_malloc` or
/// mimalloc's `mi_malloc`, share their hook): jemalloc's `*allocx`, tcmalloc's
/// `tc_malloc_skip_new_handler`, mimalloc's `mi_*` (its heap variants take the heap
/// first; its zeroing variants are allocations like the others; `mi_expand` resizes in
/// place or returns NULL, like a realloc that failed). Every argument index is below 4
/// (ring events carry rdi, rsi, rdx and rcx).
fn extension_spec(name: &str) -> Option<HookSpec> {
    use AllocFn::*;
    let (func, kind) = match name {
        // jemalloc
        "mallocx" => (
            Malloc,
            CallKind::Mallocx {
                size_arg: 0,
                flags_arg: 1,
            },
        ),
        "rallocx" => (Realloc, resize(0, 1, None)),
        "xallocx" => (
            Realloc,
            CallKind::Resize {
                ptr_arg: 0,
                size_arg: 1,
            },
        ),
        "dallocx" | "sdallocx" => (Free, FREE0),
        // tcmalloc
        "tc_malloc_skip_new_handler" => (Malloc, alloc(0)),
        // mimalloc: allocations
        "mi_malloc" | "mi_malloc_small" | "mi_zalloc" | "mi_zalloc_small" => (Malloc, alloc(0)),
        "mi_heap_malloc" | "mi_heap_malloc_small" | "mi_heap_zalloc" => (Malloc, alloc(1)),
        "mi_mallocn" => (Malloc, counted(0, 1, None)),
        "mi_heap_mallocn" => (Malloc, counted(1, 2, None)),
        "mi_calloc" => (Calloc, counted(0, 1, None)),
        "mi_heap_calloc" => (Calloc, counted(1, 2, None)),
        "mi_new" | "mi_new_nothrow" => (New, alloc(0)),
        "mi_heap_alloc_new" => (New, alloc(1)),
        "mi_new_n" => (New, counted(0, 1, None)),
        "mi_heap_alloc_new_n" => (New, counted(1, 2, None)),
        "mi_new_aligned" | "mi_new_aligned_nothrow" => (New, aligned(1, 0)),
        "mi_malloc_aligned"
        | "mi_malloc_aligned_at"
        | "mi_zalloc_aligned"
        | "mi_zalloc_aligned_at" => (AlignedAlloc, aligned(1, 0)),
        "mi_heap_malloc_aligned"
        | "mi_heap_malloc_aligned_at"
        | "mi_heap_zalloc_aligned"
        | "mi_heap_zalloc_aligned_at" => (AlignedAlloc, aligned(2, 1)),
        "mi_calloc_aligned" | "mi_calloc_aligned_at" => (Calloc, counted(0, 1, Some(2))),
        "mi_heap_calloc_aligned" | "mi_heap_calloc_aligned_at" => (Calloc, counted(1, 2, Some(3))),
        "mi_memalign" => (Memalign, aligned(0, 1)),
        "mi_aligned_alloc" => (AlignedAlloc, aligned(0, 1)),
        "mi_valloc" | "mi_pvalloc" => return c_spec(&name[3..]),
        "mi_posix_memalign" => return c_spec("posix_memalign"),
        "mi_strdup" => (Malloc, CallKind::Dup { limit_arg: None }),
        "mi_heap_strdup" => (Malloc, CallKind::Dup { limit_arg: None }),
        "mi_strndup" => (Malloc, CallKind::Dup { limit_arg: Some(1) }),
        "mi_heap_strndup" => (Malloc, CallKind::Dup { limit_arg: Some(2) }),
        // mimalloc: resizes
        "mi_realloc" | "mi_reallocf" | "reallocf" | "mi_rezalloc" | "mi_expand"
        | "mi_new_realloc" => (Realloc, resize(0, 1, None)),
        "mi_reallocn" | "mi_recalloc" | "mi_new_reallocn" => (Realloc, resize(0, 2, Some(1))),
        "mi_aligned_recalloc" | "mi_aligned_offset_recalloc" => (Realloc, resize(0, 2, Some(1))),
        "mi_reallocarray" => (Reallocarray, resize(0, 2, Some(1))),
        "mi_heap_realloc" | "mi_heap_reallocf" | "mi_heap_rezalloc" => {
            (Realloc, resize(1, 2, None))
        }
        "mi_heap_reallocn" | "mi_heap_recalloc" => (Realloc, resize(1, 3, Some(2))),
        "mi_realloc_aligned"
        | "mi_realloc_aligned_at"
        | "mi_rezalloc_aligned"
        | "mi_rezalloc_aligned_at" => (Realloc, resize(0, 1, None)),
        "mi_recalloc_aligned" | "mi_recalloc_aligned_at" => (Realloc, resize(0, 2, Some(1))),
        "mi_heap_realloc_aligned"
        | "mi_heap_realloc_aligned_at"
        | "mi_heap_rezalloc_aligned"
        | "mi_heap_rezalloc_aligned_at" => (Realloc, resize(1, 2, None)),
        "mi_heap_recalloc_aligned" | "mi_heap_recalloc_aligned_at" => {
            (Realloc, resize(1, 3, Some(2)))
        }
        // mimalloc: frees
        "mi_free"
        | "mi_cfree"
        | "vfree"
        | "mi_free_size"
        | "mi_free_aligned"
        | "mi_free_size_aligned" => (Free, FREE0),
        _ => return None,
    };
    Some(HookSpec {
        func,
        kind,
        shared: false,
    })
}

pub(super) fn ranked_spec(name: &str, prefixes: &[&str]) -> Option<(usize, HookSpec)> {
    let c = C_FUNCTIONS.len();
    if let Some(i) = C_FUNCTIONS.iter().position(|f| *f == name) {
        return c_spec(name).map(|s| (i, s));
    }
    if let Some(spec) = cxx_spec(name) {
        return Some((c, spec));
    }
    if let Some(spec) = extension_spec(name) {
        return Some((c + 1, spec));
    }
    for prefix in prefixes.iter().filter(|p| !p.is_empty()) {
        if let Some(rest) = name.strip_prefix(prefix) {
            if let Some(i) = C_FUNCTIONS.iter().position(|f| *f == rest) {
                return c_spec(rest).map(|s| (c + 2 + i, s));
            }
            if let Some(spec) = extension_spec(rest) {
                return Some((2 * c + 2, spec));
            }
        }
    }
    None
}

/// A file-descriptor or memory-mapping function the recorder hooks besides the
/// allocator (for descriptor and mapping leak reports). Argument indexes in SysV order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceCall {
    /// Returns a descriptor for the path in argument `path_arg` (open, openat, creat).
    Open {
        /// The path argument.
        path_arg: usize,
    },
    /// socket(domain, type, protocol).
    Socket,
    /// accept/accept4: returns a connected socket.
    Accept,
    /// pipe/pipe2: two descriptors stored through argument 0.
    Pipe,
    /// socketpair(domain, type, protocol, sv): two sockets stored through argument 3.
    SocketPair,
    /// fcntl(fd, cmd, arg): a duplicate when cmd is F_DUPFD or F_DUPFD_CLOEXEC.
    Fcntl,
    /// close_range(first, last, flags), or closefrom(first) (`to_end`): closes a range.
    CloseRange {
        /// closefrom: everything from the first argument up.
        to_end: bool,
    },
    /// dup/dup2/dup3: a copy of the descriptor in argument 0.
    Dup,
    /// Returns a descriptor of a special kind (eventfd, epoll, memfd...), named here.
    Special(&'static str),
    /// close(fd).
    Close,
    /// mmap(addr, len, prot, flags, fd, off).
    Mmap,
    /// munmap(addr, len).
    Munmap,
    /// mremap(old, old_len, new_len, flags...).
    Mremap,
}

/// A hooked descriptor or mapping function of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceHook {
    /// Symbol name.
    pub name: String,
    /// Link-time address.
    pub vaddr: u64,
    /// Symbol size (0 when the symbol table does not say).
    pub size: u64,
    /// What it does.
    pub call: ResourceCall,
}

pub(super) fn resource_call(name: &str) -> Option<ResourceCall> {
    Some(match name {
        "open" | "open64" | "creat" | "creat64" | "__open_nocancel" | "__open64_nocancel" => {
            ResourceCall::Open { path_arg: 0 }
        }
        "openat" | "openat64" | "__openat_nocancel" | "__openat64_nocancel" => {
            ResourceCall::Open { path_arg: 1 }
        }
        "socket" => ResourceCall::Socket,
        "accept" | "accept4" => ResourceCall::Accept,
        "pipe" | "pipe2" => ResourceCall::Pipe,
        "socketpair" => ResourceCall::SocketPair,
        "fcntl" | "fcntl64" | "__fcntl" => ResourceCall::Fcntl,
        "close_range" => ResourceCall::CloseRange { to_end: false },
        "closefrom" => ResourceCall::CloseRange { to_end: true },
        "dup" | "dup2" | "dup3" => ResourceCall::Dup,
        "eventfd" => ResourceCall::Special("eventfd"),
        "epoll_create" | "epoll_create1" => ResourceCall::Special("epoll"),
        "memfd_create" => ResourceCall::Special("memfd"),
        "signalfd" => ResourceCall::Special("signalfd"),
        "timerfd_create" => ResourceCall::Special("timerfd"),
        "inotify_init" | "inotify_init1" => ResourceCall::Special("inotify"),
        "close" | "__close_nocancel" => ResourceCall::Close,
        "mmap" | "mmap64" => ResourceCall::Mmap,
        "munmap" => ResourceCall::Munmap,
        "mremap" => ResourceCall::Mremap,
        _ => return None,
    })
}
