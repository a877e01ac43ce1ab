//! Counting: valgrind-style totals, realloc cases, bad frees, peak, temporaries.

mod common;

use common::{run, Trace};
use heaptape_analyzer::{BadFreeBlock, FindingKind, Totals};
use heaptape_format::{AllocFn, ExitStatus};

#[test]
fn malloc_calloc_free_totals() {
    let mut t = Trace::new(100);
    t.launch(100)
        .malloc(100, 0x1000, 10, 1)
        .malloc(100, 0x2000, 20, 1)
        .alloc_fn(100, AllocFn::Calloc, 0x3000, 30, 2)
        .malloc(100, 0, 99, 1) // failed: not an allocation
        .free(100, 0x1000, 3)
        .free(100, 0, 3) // free(NULL): nothing
        .malloc(100, 0x4000, 40, 2)
        .free(100, 0x3000, 3)
        .exit(100, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(a.warning(), None);
    assert_eq!(a.processes.len(), 1);
    let p = &a.processes[0];
    assert_eq!(p.pid, 100);
    assert_eq!(p.exit, Some(ExitStatus::Code(0)));
    let img = p.image();
    assert_eq!(
        img.totals,
        Totals {
            allocations: 4,
            frees: 2,
            allocated_bytes: 100,
            live_at_exit_blocks: 2,
            live_at_exit_bytes: 60,
            peak_live_bytes: 90,
            peak_live_blocks: 3,
            peak_ts: Some(8000),
            temporary_allocations: 0,
            failed_allocations: 1,
            ..Totals::default()
        }
    );
    let s1 = img.sites.get(1).unwrap();
    assert_eq!((s1.allocations, s1.allocated_bytes, s1.frees), (2, 30, 1));
    assert_eq!((s1.live_blocks, s1.live_bytes), (1, 20));
    assert_eq!((s1.peak_blocks, s1.peak_bytes), (1, 20));
    let s2 = img.sites.get(2).unwrap();
    assert_eq!((s2.allocations, s2.allocated_bytes, s2.frees), (2, 70, 1));
    assert_eq!((s2.live_blocks, s2.live_bytes), (1, 40));
    assert_eq!((s2.peak_blocks, s2.peak_bytes), (2, 70));
    let top: Vec<u32> = img.sites.top_by_live(10).iter().map(|(s, _)| *s).collect();
    assert_eq!(top, vec![2, 1]);
    assert!(img.findings.is_empty());
}

#[test]
fn realloc_null_moved_in_place_failed_and_zero() {
    let mut t = Trace::new(1);
    t.launch(1)
        .realloc(1, 0, 0x100, 16, 1) // realloc(NULL, 16): one allocation
        .realloc(1, 0x100, 0x200, 32, 2) // moved: one free, one allocation
        .realloc(1, 0x200, 0x200, 64, 2) // in place: one free, one allocation
        .realloc(1, 0x200, 0, 1 << 40, 3) // failed: block untouched
        .malloc(1, 0x300, 8, 1)
        .realloc(1, 0x200, 0, 0, 3) // realloc(p, 0): one free
        .realloc(1, 0, 0, 16, 3) // realloc(NULL, 16) failed
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let img = a.processes[0].image();
    assert_eq!(
        img.totals,
        Totals {
            allocations: 4,
            frees: 3,
            allocated_bytes: 120,
            live_at_exit_blocks: 1,
            live_at_exit_bytes: 8,
            peak_live_bytes: 72,
            peak_live_blocks: 2,
            peak_ts: Some(6000),
            // The first two reallocs free the thread's latest allocation.
            temporary_allocations: 2,
            failed_allocations: 2,
            ..Totals::default()
        }
    );
    assert!(img.findings.is_empty());
    let s2 = img.sites.get(2).unwrap();
    assert_eq!((s2.allocations, s2.allocated_bytes, s2.frees), (2, 96, 2));
}

#[test]
fn double_and_invalid_frees_are_collected_and_counted() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x10, 8, 1)
        .free(1, 0x10, 2)
        .free(1, 0x10, 3) // double free
        .free(1, 0x999, 4) // invalid
        .free(1, 0x999, 4) // same again: grouped
        .malloc(1, 0x10, 4, 1) // the address is reused: no longer "freed"
        .free(1, 0x10, 2)
        .realloc(1, 0x5555, 0x20, 8, 5) // realloc of a wild pointer
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let img = a.processes[0].image();
    assert_eq!(img.totals.allocations, 3);
    assert_eq!(img.totals.frees, 6);
    assert_eq!(img.totals.allocated_bytes, 20);
    assert_eq!(img.totals.live_at_exit_blocks, 1);
    assert_eq!(img.totals.live_at_exit_bytes, 8);
    let f = img.findings.list();
    assert_eq!(f.len(), 3);
    assert_eq!(f[0].kind, FindingKind::DoubleFree);
    assert_eq!(f[0].count, 1);
    assert_eq!(f[0].free_stack, 3);
    assert_eq!(f[0].previous_free_stack, Some(2));
    assert_eq!(f[0].alloc_stack, Some(1));
    assert_eq!(f[0].alloc_fn, Some(AllocFn::Malloc));
    assert_eq!(f[0].first.address, 0x10);
    assert_eq!(f[0].first.size, Some(8));
    assert_eq!(f[0].first.tid, 1);
    assert_eq!(f[0].first.ts, 4000);
    assert_eq!(f[1].kind, FindingKind::InvalidFree);
    assert_eq!(f[1].count, 2);
    assert_eq!(f[1].free_stack, 4);
    assert_eq!(f[1].alloc_stack, None);
    assert_eq!(f[1].first.ts, 5000);
    assert_eq!(f[2].kind, FindingKind::InvalidFree);
    assert_eq!(f[2].free_fn, AllocFn::Realloc);
    assert_eq!(f[2].free_stack, 5);
    assert_eq!(f[2].first.address, 0x5555);
    assert_eq!(img.findings.count(FindingKind::InvalidFree), 3);
    assert_eq!(img.findings.count(FindingKind::DoubleFree), 1);
}

/// Each bad free names the block its address fell in as it was then (memcheck's
/// "Address 0x… is 8 bytes inside a block of size 64 alloc'd"), with the block's
/// allocation and, for a freed block, its earlier free.
#[test]
fn bad_frees_name_the_block_the_address_fell_in() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x1000, 64, 1)
        .free(1, 0x1008, 2) // 8 bytes inside a live block
        .malloc(1, 0x2000, 100_000, 3)
        .free(1, 0x2000 + 50_000, 2) // far inside a big block: past the probes
        .free(1, 0x1000, 4)
        .free(1, 0x1000 + 32, 5) // inside a freed block: a stale pointer
        .free(1, 0x1000, 6) // its start again: a double free
        .malloc(1, 0x1000, 16, 7) // the memory again, smaller
        .free(1, 0x1000 + 32, 5) // past the new block: inside the old, freed one
        .free(1, 0x1000 + 8, 8) // inside the new live block
        .free(1, 0x9_0000, 9) // nothing there
        .realloc(1, 0x1000 + 4, 0x3000, 8, 10) // a realloc of an interior pointer
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let img = a.processes[0].image();
    let got: Vec<_> = img
        .findings
        .list()
        .iter()
        .map(|f| {
            (
                f.kind,
                f.first.address,
                f.first.block,
                f.alloc_stack,
                f.previous_free_stack,
            )
        })
        .collect();
    let block = |address, size, offset, freed| {
        Some(BadFreeBlock {
            address,
            size,
            offset,
            freed,
        })
    };
    let (invalid, double) = (FindingKind::InvalidFree, FindingKind::DoubleFree);
    assert_eq!(
        got,
        vec![
            (invalid, 0x1008, block(0x1000, 64, 8, false), Some(1), None),
            (
                invalid,
                0x2000 + 50_000,
                block(0x2000, 100_000, 50_000, false),
                Some(3),
                None
            ),
            (
                invalid,
                0x1020,
                block(0x1000, 64, 32, true),
                Some(1),
                Some(4)
            ),
            (double, 0x1000, block(0x1000, 64, 0, true), Some(1), Some(4)),
            (invalid, 0x1008, block(0x1000, 16, 8, false), Some(7), None),
            (invalid, 0x9_0000, None, None, None),
            (invalid, 0x1004, block(0x1000, 16, 4, false), Some(7), None),
        ]
    );
    // The second free of 0x1020 (stack 5, the same block, allocation and free) was
    // counted with the first.
    assert_eq!(img.findings.list()[2].count, 2);
    assert_eq!(img.findings.count(FindingKind::InvalidFree), 7);
}

#[test]
fn mismatched_families_are_findings_and_still_free() {
    let mut t = Trace::new(1);
    t.launch(1)
        .alloc_fn(1, AllocFn::New, 0x10, 24, 1)
        .free_fn(1, AllocFn::Free, 0x10, 2) // new -> free
        .alloc_fn(1, AllocFn::NewArray, 0x20, 48, 1)
        .free_fn(1, AllocFn::Delete, 0x20, 3) // new[] -> delete
        .alloc_fn(1, AllocFn::Malloc, 0x30, 8, 1)
        .free_fn(1, AllocFn::Delete, 0x30, 3) // malloc -> delete
        .alloc_fn(1, AllocFn::New, 0x40, 8, 1)
        .free_fn(1, AllocFn::Delete, 0x40, 3) // fine
        .alloc_fn(1, AllocFn::NewArray, 0x50, 8, 1)
        .free_fn(1, AllocFn::DeleteArray, 0x50, 4) // fine
        .alloc_fn(1, AllocFn::PosixMemalign, 0x58, 8, 1)
        .free_fn(1, AllocFn::Free, 0x58, 4) // fine
        .alloc_fn(1, AllocFn::New, 0x60, 8, 1)
        .realloc(1, 0x60, 0x70, 16, 5) // new -> realloc
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let img = a.processes[0].image();
    assert_eq!(img.totals.allocations, 8);
    assert_eq!(img.totals.frees, 7);
    assert_eq!(img.totals.allocated_bytes, 128);
    assert_eq!(img.totals.live_at_exit_blocks, 1);
    assert_eq!(img.totals.live_at_exit_bytes, 16);
    assert_eq!(img.totals.temporary_allocations, 7);
    let f = img.findings.list();
    let got: Vec<_> = f
        .iter()
        .map(|f| (f.kind, f.alloc_fn, f.free_fn, f.free_stack, f.first.address))
        .collect();
    let m = FindingKind::MismatchedFree;
    assert_eq!(
        got,
        vec![
            (m, Some(AllocFn::New), AllocFn::Free, 2, 0x10),
            (m, Some(AllocFn::NewArray), AllocFn::Delete, 3, 0x20),
            (m, Some(AllocFn::Malloc), AllocFn::Delete, 3, 0x30),
            (m, Some(AllocFn::New), AllocFn::Realloc, 5, 0x60),
        ]
    );
    assert!(f.iter().all(|f| f.count == 1 && f.alloc_stack == Some(1)));
}

#[test]
fn peak_and_its_block_count_and_site_contributions() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0xA0, 100, 1)
        .malloc(1, 0xB0, 50, 2) // 150 bytes in 2 blocks: the peak, at ts 3000
        .free(1, 0xA0, 9)
        .malloc(1, 0xC0, 10, 3)
        .malloc(1, 0xD0, 10, 3)
        .malloc(1, 0xE0, 10, 3) // 80 bytes in 4 blocks
        .free(1, 0xB0, 9) // 30 in 3
        .malloc(1, 0xF0, 120, 2) // 150 in 4: equal, not a new peak
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let tot = &a.processes[0].image().totals;
    assert_eq!(tot.peak_live_bytes, 150);
    assert_eq!(tot.peak_live_blocks, 2);
    assert_eq!(tot.peak_ts, Some(3000));
    assert_eq!(tot.live_at_exit_bytes, 150);
    assert_eq!(tot.live_at_exit_blocks, 4);
    let sites = &a.processes[0].image().sites;
    let peak = |s| {
        let x = sites.get(s).unwrap();
        (x.peak_bytes, x.peak_blocks)
    };
    assert_eq!(peak(1), (100, 1));
    assert_eq!(peak(2), (50, 1));
    assert_eq!(peak(3), (0, 0));
}

#[test]
fn temporary_allocations_are_per_thread() {
    let mut t = Trace::new(1);
    t.launch(1)
        .thread(1, 2)
        .malloc(1, 0x10, 1, 1)
        .free(1, 0x10, 1) // temporary
        .malloc(1, 0x20, 1, 1)
        .malloc(1, 0x30, 1, 1)
        .free(1, 0x20, 1) // not: 0x30 came in between
        .free(1, 0x30, 1) // temporary: still the thread's latest allocation
        .malloc(1, 0x40, 1, 1)
        .free(2, 0x40, 1) // not: another thread frees it
        .malloc(1, 0x50, 1, 1)
        .malloc(2, 0x60, 1, 1) // another thread's allocation does not interrupt
        .free(1, 0x50, 1) // temporary
        .free(2, 0x60, 1) // temporary
        .malloc(1, 0x70, 1, 1)
        .malloc(1, 0, 1, 1) // failed allocation: not an allocation
        .free(1, 0x70, 1) // temporary
        .malloc(1, 0x80, 1, 1)
        .free(1, 0, 1) // free(NULL): nothing
        .free(1, 0x80, 1) // temporary
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let img = a.processes[0].image();
    assert_eq!(img.totals.allocations, 8);
    assert_eq!(img.totals.frees, 8);
    assert_eq!(img.totals.temporary_allocations, 6);
    assert_eq!(img.sites.get(1).unwrap().temporary_allocations, 6);
    assert_eq!(img.totals.live_at_exit_blocks, 0);
}

#[test]
fn hostile_sizes_saturate_instead_of_overflowing() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x10, u64::MAX, 1)
        .malloc(1, 0x20, u64::MAX, 1)
        .free(1, 0x10, 1)
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let tot = &a.processes[0].image().totals;
    assert_eq!(tot.allocated_bytes, u64::MAX);
    assert_eq!(tot.peak_live_bytes, u64::MAX);
    assert_eq!(tot.peak_live_blocks, 1);
    assert_eq!(tot.live_at_exit_blocks, 1);
    assert_eq!(tot.live_at_exit_bytes, 0);
}
