//! Executes ring entry trampolines in this process: a memfd mapped twice (the "tracee
//! view" the generated code writes, the "tracer view" [`RingRegion`] reads), trampolines
//! in an executable page, fake allocator functions behind them, and the test's own
//! threads as producers (their thread pointers registered like the recorder would at a
//! clone event).

use std::collections::HashSet;
use std::ffi::c_void;
use std::fs::File;
use std::ops::Range;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use heaptape_recorder::low_level::ring::{
    max_entry, ring_entry_trampoline, ring_gate_trampoline, Merger, Ordered, Part, Publish,
    RingEvent, RingLayout, RingRegion, RING_TRAMPOLINE_LEN,
};
use heaptape_recorder::low_level::SharedMap;

// ---------------------------------------------------------------------------------------
// The rig
// ---------------------------------------------------------------------------------------

/// A ring region mapped twice; trampolines go to the process-wide code area.
struct Rig {
    tracer: Rc<SharedMap>,
    tracee: SharedMap,
    layout: RingLayout,
}

/// One executable area for every test's trampolines (near the test's functions).
const CODE_BYTES: usize = 1 << 20;
static CODE: OnceLock<u64> = OnceLock::new();
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

impl Rig {
    fn new(layout: RingLayout) -> Rig {
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File.
        let file = unsafe {
            let fd = libc::memfd_create(c"heaptape-ring-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create failed");
            File::from_raw_fd(fd)
        };
        let len = layout.region_len();
        file.set_len(len as u64).unwrap();
        let tracer = SharedMap::map(&file, len).unwrap();
        let tracee = SharedMap::map(&file, len).unwrap();
        Rig {
            tracer: Rc::new(tracer),
            tracee,
            layout,
        }
    }

    fn region(&self) -> RingRegion {
        RingRegion::new(self.tracer.clone(), 0, self.tracee.addr(), self.layout)
    }

    /// Assembles and installs a trampoline for `target` (entry and displaced code at
    /// once, as if the whole function had been displaced).
    fn install(&self, publish: Publish, target: u64, stack_copy: usize, fallback: u64) -> u64 {
        let code = *CODE.get_or_init(|| map_code_near(fake_malloc as *const () as u64));
        let k = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        let at = code + (k as u64) * RING_TRAMPOLINE_LEN;
        assert!(((k + 1) as u64) * RING_TRAMPOLINE_LEN <= CODE_BYTES as u64);
        let t = ring_entry_trampoline(
            &self.layout,
            at,
            self.tracee.addr(),
            target,
            target,
            publish,
            stack_copy,
            fallback,
            false,
        )
        .unwrap();
        assert!(
            t.code.len() as u64 <= RING_TRAMPOLINE_LEN,
            "{} bytes",
            t.code.len()
        );
        // SAFETY: `at..at+len` lies in the RWX page mapped by map_code_near, which lives
        // for the whole test process; nothing runs this slot yet.
        unsafe { std::ptr::copy_nonoverlapping(t.code.as_ptr(), at as *mut u8, t.code.len()) };
        at
    }
}

/// An RWX page within ±2 GiB of `near` (so the trampolines' rel32 branches reach the
/// test's functions, as in the recorder), else anywhere (iced then emits far branches).
fn map_code_near(near: u64) -> u64 {
    let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    for delta in [1u64 << 28, 1 << 29, 1 << 30] {
        for hint in [near.wrapping_sub(delta), near.wrapping_add(delta)] {
            let hint = hint & !0xffff;
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let p = unsafe {
                libc::mmap(
                    hint as *mut c_void,
                    CODE_BYTES,
                    prot,
                    flags | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                return p as u64;
            }
        }
    }
    // SAFETY: a fresh anonymous mapping chosen by the kernel.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), CODE_BYTES, prot, flags, -1, 0) };
    assert!(p != libc::MAP_FAILED);
    p as u64
}

/// The calling thread's thread pointer, as the trampoline reads it.
fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: reads fs:[0], the TCB self-pointer (glibc and musl on x86_64).
    unsafe { std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly)) };
    tp
}

/// The calling thread's stack mapping.
fn thread_stack() -> Range<u64> {
    // SAFETY: pthread_getattr_np fills attr for the current thread; getstack reads it.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
        let mut addr = std::ptr::null_mut();
        let mut size = 0usize;
        assert_eq!(libc::pthread_attr_getstack(&attr, &mut addr, &mut size), 0);
        libc::pthread_attr_destroy(&mut attr);
        addr as u64..addr as u64 + size as u64
    }
}

// ---------------------------------------------------------------------------------------
// Fake allocator functions
// ---------------------------------------------------------------------------------------

extern "C" fn fake_malloc(n: usize) -> *mut c_void {
    // SAFETY: plain libc malloc.
    unsafe { libc::malloc(n) }
}

extern "C" fn fake_free(p: *mut c_void) {
    // SAFETY: p came from malloc/realloc/posix_memalign through the fakes.
    unsafe { libc::free(p) }
}

extern "C" fn fake_realloc(p: *mut c_void, n: usize) -> *mut c_void {
    // SAFETY: p came from the fakes (or is null).
    unsafe { libc::realloc(p, n) }
}

extern "C" fn fake_posix_memalign(out: *mut *mut c_void, align: usize, n: usize) -> i32 {
    // SAFETY: out points at a live local of the caller.
    unsafe { libc::posix_memalign(out, align, n) }
}

thread_local! {
    /// The malloc the fake operator new calls (its trampoline).
    static NEW_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A fake operator new: calls malloc through its trampoline (a nested hooked call).
extern "C" fn fake_new(n: usize) -> *mut c_void {
    let m = malloc_fn(NEW_CALLS.with(|c| c.get()));
    m(n)
}

/// A fallback that records its arguments (the stop path stand-in).
static FALLBACK_ARGS: AtomicU64 = AtomicU64::new(0);
static FALLBACK_CALLS: AtomicU64 = AtomicU64::new(0);
extern "C" fn fake_fallback_malloc(n: usize) -> *mut c_void {
    FALLBACK_ARGS.store(n as u64, Ordering::SeqCst);
    FALLBACK_CALLS.fetch_add(1, Ordering::SeqCst);
    fake_malloc(n)
}

type MallocFn = extern "C" fn(usize) -> *mut c_void;
type FreeFn = extern "C" fn(*mut c_void);
type ReallocFn = extern "C" fn(*mut c_void, usize) -> *mut c_void;
type MemalignFn = extern "C" fn(*mut *mut c_void, usize, usize) -> i32;

fn malloc_fn(addr: u64) -> MallocFn {
    // SAFETY: addr is a trampoline installed for a function of this type.
    unsafe { std::mem::transmute::<u64, MallocFn>(addr) }
}
fn free_fn(addr: u64) -> FreeFn {
    // SAFETY: as above.
    unsafe { std::mem::transmute::<u64, FreeFn>(addr) }
}
fn realloc_fn(addr: u64) -> ReallocFn {
    // SAFETY: as above.
    unsafe { std::mem::transmute::<u64, ReallocFn>(addr) }
}
fn memalign_fn(addr: u64) -> MemalignFn {
    // SAFETY: as above.
    unsafe { std::mem::transmute::<u64, MemalignFn>(addr) }
}

/// An event part kept after the merger handed it over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    seq: u64,
    part: Part,
    area: u32,
    publish: Publish,
    entry: u64,
    args: [u64; 4],
    result: Option<u64>,
    out: Option<u64>,
    stack_len: usize,
    stack_top: bool,
    rsp: u64,
}

impl Seen {
    fn new(o: &Ordered<'_>) -> Seen {
        Seen {
            seq: o.seq,
            part: o.part,
            area: o.event.area,
            publish: o.event.publish,
            entry: o.event.entry,
            args: o.event.args,
            result: o.event.result,
            out: o.event.out,
            stack_len: o.event.stack.len(),
            stack_top: o.event.stack_top,
            rsp: o.event.rsp,
        }
    }
}

fn drain_all(region: &RingRegion, merger: &mut Merger) -> Vec<Seen> {
    let mut v = Vec::new();
    let (_, broken) = merger.round(region, |o| v.push(Seen::new(&o)));
    assert!(broken.is_empty());
    assert_eq!(
        merger.held(),
        0,
        "everything published is below the watermark"
    );
    v
}

/// malloc and free through the rig's ring trampolines, copying up to `stack_copy` bytes
/// of stack; unregistered threads fall back to `fake_fallback_malloc`.
fn malloc_free(rig: &Rig, stack_copy: usize) -> (MallocFn, FreeFn) {
    let fb = fake_fallback_malloc as *const () as u64;
    let m = rig.install(
        Publish::AtReturn,
        fake_malloc as *const () as u64,
        stack_copy,
        fb,
    );
    let f = rig.install(
        Publish::AtEntry,
        fake_free as *const () as u64,
        stack_copy,
        fb,
    );
    (malloc_fn(m), free_fn(f))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn every_call_is_recorded_once_with_exact_args_and_results() {
    let rig = Rig::new(RingLayout {
        ring_bytes: 1 << 20,
        areas: 4,
    });
    let mut region = rig.region();
    let fb = fake_fallback_malloc as *const () as u64;
    let (malloc, free) = malloc_free(&rig, 512);
    let realloc = realloc_fn(rig.install(Publish::Both, fake_realloc as *const () as u64, 512, fb));
    let memalign = memalign_fn(rig.install(
        Publish::AtReturnOutPtr,
        fake_posix_memalign as *const () as u64,
        512,
        fb,
    ));
    let area = region
        .register_thread(thread_pointer(), thread_stack())
        .unwrap();

    let a = malloc(24);
    let b = realloc(a, 4000);
    let mut out: *mut c_void = std::ptr::null_mut();
    let rc = memalign(&mut out, 64, 100);
    assert_eq!(rc, 0);
    assert_eq!(out as u64 % 64, 0);
    let mut bad: *mut c_void = 0x5555 as *mut c_void;
    let rc_bad = memalign(&mut bad, 3, 100); // EINVAL: not a power of two
    assert_eq!(rc_bad, libc::EINVAL);
    free(out);
    free(b);
    free(std::ptr::null_mut());

    let mut merger = Merger::new();
    let seen = drain_all(&region, &mut merger);
    let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, (0..8).collect::<Vec<_>>(), "dense, in order");
    assert!(seen.iter().all(|s| s.area == area));
    let m = fake_malloc as *const () as u64;
    let r = fake_realloc as *const () as u64;
    let pm = fake_posix_memalign as *const () as u64;
    let f = fake_free as *const () as u64;
    // malloc(24) = a
    assert_eq!(
        (seen[0].entry, seen[0].part, seen[0].args[0]),
        (m, Part::Whole, 24)
    );
    assert_eq!(seen[0].result, Some(a as u64));
    // realloc(a, 4000) = b: the free part, then the allocation part
    assert_eq!((seen[1].entry, seen[1].part), (r, Part::Free));
    assert_eq!((seen[2].entry, seen[2].part), (r, Part::Alloc));
    for s in &seen[1..3] {
        assert_eq!((s.args[0], s.args[1]), (a as u64, 4000));
        assert_eq!(s.result, Some(b as u64));
    }
    // posix_memalign(&out, 64, 100) = 0, *out
    assert_eq!(seen[3].entry, pm);
    assert_eq!(seen[3].args[..3], [&mut out as *mut _ as u64, 64, 100]);
    assert_eq!((seen[3].result, seen[3].out), (Some(0), Some(out as u64)));
    // the failed one: no out-pointer
    assert_eq!(
        (seen[4].result, seen[4].out),
        (Some(libc::EINVAL as u64), None)
    );
    assert_eq!(seen[4].args[1], 3);
    // frees, numbered at the entry, no result
    for (s, p) in seen[5..8].iter().zip([out as u64, b as u64, 0]) {
        assert_eq!(
            (s.entry, s.publish, s.args[0], s.result),
            (f, Publish::AtEntry, p, None)
        );
    }
    assert_eq!(FALLBACK_CALLS.load(Ordering::SeqCst), 0);
    assert_eq!(region.watermark(), 8);

    // Unregistered: the fallback, with the argument intact; nothing recorded.
    region.unregister_thread(thread_pointer());
    let p = malloc(777);
    assert_eq!(FALLBACK_ARGS.load(Ordering::SeqCst), 777);
    assert_eq!(FALLBACK_CALLS.load(Ordering::SeqCst), 1);
    fake_free(p);
    assert_eq!(region.counter(), 8);
}

#[test]
fn a_round_gives_ring_space_back_before_it_ends() {
    // A producer waiting for room runs again while the recorder is still busy with the
    // round's later events: the round releases what it handed over as it goes.
    let rig = Rig::new(RingLayout {
        ring_bytes: 1 << 20,
        areas: 4,
    });
    let mut region = rig.region();
    let (malloc, free) = malloc_free(&rig, 256);
    let area = region
        .register_thread(thread_pointer(), thread_stack())
        .unwrap();
    for k in 0..100 {
        free(malloc(8 + k));
    }
    let tail = |r: &RingRegion| r.published(area).resume_pos();
    assert_eq!(tail(&region), 0);
    let head_end = {
        let mut it = region.published(area);
        it.by_ref().count();
        it.resume_pos()
    };
    let mut merger = Merger::new();
    let mut seen = 0;
    let mut tails = Vec::new();
    let (stats, broken) = merger.round(&region, |_| {
        seen += 1;
        tails.push(tail(&region));
    });
    assert!(broken.is_empty());
    assert_eq!((stats.emitted, seen), (200, 200));
    // Nothing released before the first handful, all of it by the end, and some in
    // between (while events were still being handed over).
    assert_eq!(tails[0], 0);
    assert!(tails[100] > 0 && tails[100] < head_end, "{}", tails[100]);
    assert!(tails.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(tail(&region), head_end);
    region.unregister_thread(thread_pointer());
}

#[test]
fn nested_calls_are_recorded_once() {
    let rig = Rig::new(RingLayout {
        ring_bytes: 1 << 16,
        areas: 2,
    });
    let mut region = rig.region();
    let malloc_t = rig.install(Publish::AtReturn, fake_malloc as *const () as u64, 256, 0);
    let new_t = rig.install(Publish::AtReturn, fake_new as *const () as u64, 256, 0);
    let free = free_fn(rig.install(Publish::AtEntry, fake_free as *const () as u64, 256, 0));
    NEW_CALLS.with(|c| c.set(malloc_t));
    region
        .register_thread(thread_pointer(), thread_stack())
        .unwrap();

    let p = malloc_fn(new_t)(48); // new -> malloc (nested: unrecorded)
    let q = malloc_fn(malloc_t)(16); // level is back to 0: recorded
    free(p);
    free(q);
    let mut merger = Merger::new();
    let seen = drain_all(&region, &mut merger);
    let entries: Vec<(u64, u64)> = seen.iter().map(|s| (s.entry, s.args[0])).collect();
    assert_eq!(
        entries,
        [
            (fake_new as *const () as u64, 48),
            (fake_malloc as *const () as u64, 16),
            (fake_free as *const () as u64, p as u64),
            (fake_free as *const () as u64, q as u64),
        ]
    );
    assert_eq!(seen[0].result, Some(p as u64));
}

thread_local! {
    /// The gated function a fake malloc calls (its gate), like malloc's own mmap.
    static GATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
static GATED_DIRECT: AtomicU64 = AtomicU64::new(0);
static GATED_FALLBACK: AtomicU64 = AtomicU64::new(0);
extern "C" fn fake_mmap(n: usize) -> *mut c_void {
    GATED_DIRECT.fetch_add(n as u64, Ordering::SeqCst);
    std::ptr::null_mut()
}
extern "C" fn fake_mmap_stop_path(n: usize) -> *mut c_void {
    GATED_FALLBACK.fetch_add(n as u64, Ordering::SeqCst);
    std::ptr::null_mut()
}
/// A fake malloc that calls the gated function (a nested call of another kind).
extern "C" fn fake_malloc_with_mmap(n: usize) -> *mut c_void {
    malloc_fn(GATED.with(|g| g.get()))(1000);
    fake_malloc(n)
}

/// The gate of a function ring mode does not record (descriptor and mapping calls):
/// a call made inside a ring-recorded call goes straight to the function, unrecorded;
/// any other (registered or not) goes to the stop path, with its argument intact.
#[test]
fn the_gate_sends_calls_nested_in_ring_calls_to_the_function() {
    let rig = Rig::new(RingLayout {
        ring_bytes: 1 << 16,
        areas: 2,
    });
    let mut region = rig.region();
    let code = *CODE.get_or_init(|| map_code_near(fake_malloc as *const () as u64));
    let k = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    let at = code + (k as u64) * RING_TRAMPOLINE_LEN;
    let gate = ring_gate_trampoline(
        at,
        rig.tracee.addr(),
        fake_mmap as *const () as u64,
        fake_mmap_stop_path as *const () as u64,
        false,
    )
    .unwrap();
    assert!(gate.code.len() as u64 <= RING_TRAMPOLINE_LEN);
    // SAFETY: a free slot of the RWX page mapped by map_code_near (as in Rig::install).
    unsafe { std::ptr::copy_nonoverlapping(gate.code.as_ptr(), at as *mut u8, gate.code.len()) };
    GATED.with(|g| g.set(at));
    let malloc_t = rig.install(
        Publish::AtReturn,
        fake_malloc_with_mmap as *const () as u64,
        256,
        0,
    );
    let gated = malloc_fn(at);
    // Not registered: the stop path.
    gated(7);
    assert_eq!(GATED_FALLBACK.load(Ordering::SeqCst), 7);
    assert_eq!(GATED_DIRECT.load(Ordering::SeqCst), 0);
    region
        .register_thread(thread_pointer(), thread_stack())
        .unwrap();
    // Registered, outside any hooked call: still the stop path (it records the call).
    gated(5);
    assert_eq!(GATED_FALLBACK.load(Ordering::SeqCst), 12);
    // Inside a ring-recorded malloc: straight to the function.
    let p = malloc_fn(malloc_t)(32);
    assert_eq!(GATED_DIRECT.load(Ordering::SeqCst), 1000);
    assert_eq!(GATED_FALLBACK.load(Ordering::SeqCst), 12);
    let mut merger = Merger::new();
    let seen = drain_all(&region, &mut merger);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].args[0], 32);
    assert_eq!(seen[0].result, Some(p as u64));
    fake_free(p);
}

thread_local! {
    /// The mapping gate the fake malloc below calls.
    static MAPPING_GATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
static MAP_DIRECT: AtomicU64 = AtomicU64::new(0);
static MAP_FALLBACK: AtomicU64 = AtomicU64::new(0);
extern "C" fn fake_map(n: usize) -> *mut c_void {
    MAP_DIRECT.fetch_add(n as u64, Ordering::SeqCst);
    std::ptr::null_mut()
}
extern "C" fn fake_map_stop_path(n: usize) -> *mut c_void {
    MAP_FALLBACK.fetch_add(n as u64, Ordering::SeqCst);
    std::ptr::null_mut()
}
/// A fake malloc that maps memory for itself through the mapping gate.
extern "C" fn fake_malloc_mapping(n: usize) -> *mut c_void {
    malloc_fn(MAPPING_GATE.with(|g| g.get()))(1000);
    fake_malloc(n)
}

/// A mapping gate (mmap, munmap, mremap) sends the calls made inside a ring-recorded
/// call to the stop path while the region asks for it (a replacement allocator maps
/// memory for itself there), straight to the function otherwise.
#[test]
fn the_mapping_gate_sends_nested_calls_to_the_stop_path_when_asked() {
    let rig = Rig::new(RingLayout {
        ring_bytes: 1 << 16,
        areas: 2,
    });
    let mut region = rig.region();
    let code = *CODE.get_or_init(|| map_code_near(fake_malloc as *const () as u64));
    let k = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    let at = code + (k as u64) * RING_TRAMPOLINE_LEN;
    let gate = ring_gate_trampoline(
        at,
        rig.tracee.addr(),
        fake_map as *const () as u64,
        fake_map_stop_path as *const () as u64,
        true,
    )
    .unwrap();
    assert!(gate.code.len() as u64 <= RING_TRAMPOLINE_LEN);
    // SAFETY: a free slot of the RWX page mapped by map_code_near (as in Rig::install).
    unsafe { std::ptr::copy_nonoverlapping(gate.code.as_ptr(), at as *mut u8, gate.code.len()) };
    MAPPING_GATE.with(|g| g.set(at));
    let malloc_t = rig.install(
        Publish::AtReturn,
        fake_malloc_mapping as *const () as u64,
        256,
        0,
    );
    region
        .register_thread(thread_pointer(), thread_stack())
        .unwrap();
    // Not asked: nested calls go straight to the function, as any gate's.
    assert!(!region.nested_mappings());
    fake_free(malloc_fn(malloc_t)(16));
    assert_eq!(MAP_DIRECT.load(Ordering::SeqCst), 1000);
    assert_eq!(MAP_FALLBACK.load(Ordering::SeqCst), 0);
    // Asked: to the stop path, arguments intact.
    region.set_nested_mappings(true);
    assert!(region.nested_mappings());
    fake_free(malloc_fn(malloc_t)(16));
    assert_eq!(MAP_DIRECT.load(Ordering::SeqCst), 1000);
    assert_eq!(MAP_FALLBACK.load(Ordering::SeqCst), 1000);
    // Outside any hooked call: the stop path either way.
    malloc_fn(at)(3);
    assert_eq!(MAP_FALLBACK.load(Ordering::SeqCst), 1003);
    region.set_nested_mappings(false);
    malloc_fn(at)(4);
    assert_eq!(MAP_FALLBACK.load(Ordering::SeqCst), 1007);
    let mut merger = Merger::new();
    assert_eq!(drain_all(&region, &mut merger).len(), 2);
}

// A function that records every register the ABI passes and returns rax:rdx.
static mut SAVED: [u64; 10] = [0; 10];
core::arch::global_asm!(
    ".globl heaptape_ring_test_record_regs",
    "heaptape_ring_test_record_regs:",
    "mov [rip + {s}], rdi",
    "mov [rip + {s} + 8], rsi",
    "mov [rip + {s} + 16], rdx",
    "mov [rip + {s} + 24], rcx",
    "mov [rip + {s} + 32], r8",
    "mov [rip + {s} + 40], r9",
    "mov [rip + {s} + 48], rax",
    "mov [rip + {s} + 56], r10",
    "mov [rip + {s} + 64], r11",
    "mov [rip + {s} + 72], rsp",
    "mov rax, 0x1111111111111111",
    "mov rdx, 0x2222222222222222",
    "ret",
    s = sym SAVED,
);
extern "C" {
    fn heaptape_ring_test_record_regs();
}

/// Calls `target` with known values in every argument and scratch register; returns
/// (rax, rdx) after the call, rsp before it.
fn call_with_registers(target: u64) -> (u64, u64, u64) {
    let (rax_o, rdx_o, rsp_before): (u64, u64, u64);
    // SAFETY: target is a trampoline (or function) that returns; every register it may
    // change is an output here; callee-saved ones are preserved (checked statically in
    // ring.rs's unit test).
    unsafe {
        std::arch::asm!(
            "mov {c}, rsp",
            "call {t}",
            t = in(reg) target,
            c = out(reg) rsp_before,
            inout("rdi") 0x101u64 => _,
            inout("rsi") 0x102u64 => _,
            inout("rdx") 0x103u64 => rdx_o,
            inout("rcx") 0x104u64 => _,
            inout("r8") 0x105u64 => _,
            inout("r9") 0x106u64 => _,
            inout("rax") 0x107u64 => rax_o,
            inout("r10") 0x108u64 => _,
            inout("r11") 0x109u64 => _,
        );
    }
    (rax_o, rdx_o, rsp_before)
}

fn saved() -> [u64; 10] {
    // SAFETY: only this test writes SAVED (through the asm function), on this thread.
    unsafe { std::ptr::addr_of!(SAVED).read_volatile() }
}

#[test]
fn registers_reach_the_function_and_the_fallback_intact() {
    let rig = Rig::new(RingLayout {
        ring_bytes: 1 << 16,
        areas: 2,
    });
    let mut region = rig.region();
    let rec = heaptape_ring_test_record_regs as *const () as u64;
    // The fallback is the same recorder of registers: an unregistered thread must reach
    // it with every register as at the entry.
    let t = rig.install(Publish::AtReturn, rec, 256, rec);

    let (rax, rdx, c) = call_with_registers(t);
    let s = saved();
    assert_eq!(
        s[..9],
        [0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x109]
    );
    assert_eq!(s[9], c - 8, "fallback sees the entry's rsp");
    assert_eq!((rax, rdx), (0x1111111111111111, 0x2222222222222222));
    assert_eq!(region.counter(), 0);

    // Registered: the function gets the argument registers and rax exactly; rsp 16 lower.
    let area = region
        .register_thread(thread_pointer(), thread_stack())
        .unwrap();
    let (rax, rdx, c) = call_with_registers(t);
    let s = saved();
    assert_eq!(s[..7], [0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107]);
    assert_eq!(s[9], c - 8 - 16);
    assert_eq!(s[9] % 16, (c - 8) % 16, "same stack alignment");
    assert_eq!((rax, rdx), (0x1111111111111111, 0x2222222222222222));
    let mut got = Vec::new();
    region
        .drain(area, |e: RingEvent<'_>| {
            got.push((e.args, e.rsp, e.result, e.seq));
            // The copy starts with the caller's return address; the saved argument
            // registers are not part of it.
            assert!(e.stack.len() >= 8);
        })
        .unwrap();
    assert_eq!(
        got,
        [(
            [0x101, 0x102, 0x103, 0x104],
            c - 8,
            Some(0x1111111111111111),
            0
        )]
    );
}

#[test]
fn stack_copy_lengths_and_the_cut_flag() {
    let stack = thread_stack();
    let rig = Rig::new(RingLayout {
        ring_bytes: 16 << 20,
        areas: 2,
    });
    let mut region = rig.region();
    let m = fake_malloc as *const () as u64;
    let whole = malloc_fn(rig.install(Publish::AtReturn, m, 4 << 20, 0));
    let cut = malloc_fn(rig.install(Publish::AtReturn, m, 100, 0));
    let area = region
        .register_thread(thread_pointer(), stack.clone())
        .unwrap();
    let local = 0u64;
    let here = &local as *const u64 as u64;

    let check = |region: &RingRegion, f: &mut dyn FnMut(RingEvent<'_>)| {
        region.drain(area, &mut *f).unwrap();
    };
    let p = whole(1);
    check(&region, &mut |e| {
        assert!(
            e.rsp < here && here - e.rsp < 64 << 10,
            "rsp {:#x} here {here:#x}",
            e.rsp
        );
        assert_eq!(e.stack.len() as u64, stack.end - e.rsp);
        assert!(e.stack_top);
        // Above this test function's frame, the stack did not change since the call.
        let off = (here - e.rsp) as usize;
        // SAFETY: [here, stack.end) is this thread's live stack.
        let live = unsafe { std::slice::from_raw_parts(here as *const u8, 8) };
        assert_eq!(&e.stack[off..off + 8], live);
        let top = e.stack.len() - 64;
        // SAFETY: the top 64 bytes of this thread's stack (thread start-up frames).
        let live_top = unsafe { std::slice::from_raw_parts((stack.end - 64) as *const u8, 64) };
        assert_eq!(&e.stack[top..], live_top);
    });
    fake_free(p);
    let p = cut(2);
    check(&region, &mut |e| {
        assert_eq!(e.stack.len(), 100);
        assert!(!e.stack_top);
    });
    fake_free(p);
    // Stack unknown: up to the end of rsp's page, at most stack_copy.
    region.unregister_thread(thread_pointer());
    let area2 = region.register_thread(thread_pointer(), 0..0).unwrap();
    let p = whole(3);
    region
        .drain(area2, |e| {
            assert_eq!(e.stack.len() as u64, 4096 - e.rsp % 4096);
            assert!(!e.stack_top);
        })
        .unwrap();
    fake_free(p);
    let p = cut(4);
    region
        .drain(area2, |e| {
            assert_eq!(e.stack.len() as u64, 100.min(4096 - e.rsp % 4096))
        })
        .unwrap();
    fake_free(p);
}

/// Runs `threads` producers, each making `calls` malloc/free pairs through trampolines and
/// freeing blocks allocated by its neighbour, while this thread drains with a [`Merger`]
/// (sleeping `drain_pause` between rounds). Checks the allocator-order property and that
/// the sequence numbers handed over are dense. Returns (events, futex waits, seconds).
fn cross_thread_run(
    layout: RingLayout,
    stack_copy: usize,
    threads: usize,
    calls: usize,
    drain_pause: Duration,
) -> (u64, u64, f64) {
    let rig = Rig::new(layout);
    let mut region = rig.region();
    let malloc_t = rig.install(
        Publish::AtReturn,
        fake_malloc as *const () as u64,
        stack_copy,
        0,
    );
    let free_t = rig.install(
        Publish::AtEntry,
        fake_free as *const () as u64,
        stack_copy,
        0,
    );
    let done = AtomicUsize::new(0);
    let mut live: HashSet<u64> = HashSet::new();
    let mut next = 0u64;
    let mut merger = Merger::new();
    let mut waits = 0;
    let start = Instant::now();
    let mut check = |o: Ordered<'_>| {
        assert_eq!(o.seq, next, "dense sequence numbers");
        next += 1;
        if o.event.entry == fake_malloc as *const () as u64 {
            let p = o.event.result.unwrap();
            assert!(
                live.insert(p),
                "{p:#x} allocated twice while live (seq {})",
                o.seq
            );
        } else {
            let p = o.event.args[0];
            assert!(
                live.remove(&p),
                "{p:#x} freed before its allocation (seq {})",
                o.seq
            );
        }
    };
    std::thread::scope(|s| {
        let (reg_tx, reg_rx) = mpsc::channel::<(u64, Range<u64>, mpsc::Sender<()>)>();
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..threads {
            let (tx, rx) = mpsc::channel::<usize>();
            senders.push(tx);
            receivers.push(rx);
        }
        senders.rotate_left(1); // thread i sends to i+1
        for (tx, rx) in senders.into_iter().zip(receivers) {
            let reg_tx = reg_tx.clone();
            let done = &done;
            s.spawn(move || {
                // Registered by the "recorder" before the first hooked call.
                let (go_tx, go_rx) = mpsc::channel();
                reg_tx
                    .send((thread_pointer(), thread_stack(), go_tx))
                    .unwrap();
                go_rx.recv().unwrap();
                let malloc = malloc_fn(malloc_t);
                let free = free_fn(free_t);
                let mut freed = 0;
                for k in 0..calls {
                    let p = malloc(16 + k % 64);
                    tx.send(p as usize).unwrap();
                    while let Ok(q) = rx.try_recv() {
                        free(q as *mut c_void);
                        freed += 1;
                    }
                }
                while freed < calls {
                    free(rx.recv().unwrap() as *mut c_void);
                    freed += 1;
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        drop(reg_tx);
        for _ in 0..threads {
            let (tp, stack, go) = reg_rx.recv().unwrap();
            region.register_thread(tp, stack).unwrap();
            go.send(()).unwrap();
        }
        while done.load(Ordering::SeqCst) < threads {
            merger.round(&region, &mut check);
            std::thread::sleep(drain_pause);
        }
    });
    let (_, broken) = merger.round(&region, &mut check);
    assert!(broken.is_empty());
    assert_eq!(merger.held(), 0);
    for &a in region.live_areas() {
        waits += region.waits(a);
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        next,
        (threads * calls * 2) as u64,
        "every call recorded once"
    );
    assert!(live.is_empty());
    (next, waits, secs)
}

#[test]
fn eight_threads_cross_thread_frees_follow_allocator_order() {
    let (events, waits, secs) = cross_thread_run(
        RingLayout {
            ring_bytes: 256 << 10,
            areas: 16,
        },
        512,
        8,
        100_000,
        Duration::from_micros(200),
    );
    println!("8 threads x 100k malloc/free: {events} events in {secs:.2} s, {waits} futex waits");
}

#[test]
fn backpressure_with_a_tiny_ring_and_a_slow_drainer_loses_nothing() {
    let ring = (2 * max_entry(256)).next_power_of_two();
    let (events, waits, secs) = cross_thread_run(
        RingLayout {
            ring_bytes: ring,
            areas: 4,
        },
        256,
        2,
        2_000,
        Duration::from_millis(1),
    );
    println!("tiny ring ({ring} bytes): {events} events in {secs:.2} s, {waits} futex waits");
    assert!(waits > 0, "the producers had to wait");
}

#[test]
fn cost_per_call_through_the_trampoline() {
    let stack = thread_stack();
    let pairs = |n: usize, malloc: MallocFn, free: FreeFn| {
        let t = Instant::now();
        for k in 0..n {
            let p = malloc(16 + (k & 63));
            free(p);
        }
        t.elapsed().as_nanos() as f64
    };
    let total = 40_000;
    let direct = (0..3)
        .map(|_| pairs(total, fake_malloc, fake_free) / (2 * total) as f64)
        .fold(f64::MAX, f64::min);
    println!("direct (fake malloc + free, libc): {direct:.1} ns/call");
    // A ring of the default size stays in the caches (this thread drains it between
    // timed batches, as a recorder on another core would keep it short); a 32 MiB one
    // is written cold (write-allocate misses), the worst case of a drainer far behind.
    for ring_bytes in [256usize << 10, 32 << 20] {
        for stack_copy in [0usize, 256, 1024, 4096] {
            let layout = RingLayout {
                ring_bytes,
                areas: 2,
            };
            let rig = Rig::new(layout);
            let mut region = rig.region();
            let m = fake_malloc as *const () as u64;
            let f = fake_free as *const () as u64;
            let malloc = malloc_fn(rig.install(Publish::AtReturn, m, stack_copy, 0));
            let free = free_fn(rig.install(Publish::AtEntry, f, stack_copy, 0));
            let area = region
                .register_thread(thread_pointer(), stack.clone())
                .unwrap();
            let mut merger = Merger::new();
            // This thread is also the drainer: a batch must fit in the ring.
            let batch = (ring_bytes * 9 / 10 / (2 * max_entry(stack_copy))).min(total);
            let mut bytes = 0usize;
            let mut events = 0usize;
            // Warm up: fault in every ring page through both mappings.
            while bytes < ring_bytes * 2 {
                pairs(batch, malloc, free);
                merger.round(&region, |o| bytes += 112 + o.event.stack.len());
            }
            bytes = 0;
            let mut ns = 0.0;
            let mut done = 0;
            while done < total {
                ns += pairs(batch, malloc, free);
                done += batch;
                merger.round(&region, |o| {
                    bytes += 112 + o.event.stack.len();
                    events += 1;
                });
            }
            assert_eq!(events, 2 * done);
            assert_eq!(region.waits(area), 0);
            let per = ns / (2 * done) as f64;
            println!(
                "ring {:5} KiB, stack_copy {stack_copy:4}: {per:6.1} ns/call through the \
                 trampoline (+{:.1} ns), {} ring bytes/event",
                ring_bytes >> 10,
                per - direct,
                bytes / events
            );
        }
    }
}
