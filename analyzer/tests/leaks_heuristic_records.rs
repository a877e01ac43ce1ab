//! The recorder's heuristic verdicts (`SnapshotHeuristic` records) through the replay:
//! synthetic traces, analyzed end to end.

mod common;

use common::{ptrs, run, Trace};
use heaptape_analyzer::{analyze, Analysis, AnalyzeOptions, LeakReport};
use heaptape_analyzer::{Count, Heuristic, HeuristicSet, LeakKind};
use heaptape_format::{AllocFn, ExitStatus, ProcessOrigin, Record, RootKind};
use serde_json::json;

/// A complete snapshot of `pid`: one stack root holding `roots`, the pointers of each
/// listed block, then the heuristic verdicts `(block, offset, matched)`.
fn snapshot(
    t: &mut Trace,
    pid: u32,
    roots: &[u64],
    blocks: &[(u64, &[u64])],
    verdicts: &[(u64, u64, u8)],
    live: u64,
) {
    t.rec(Record::SnapshotBegin { ts: 90_000, pid });
    t.root(pid, RootKind::Stack { tid: pid }, 0x7ff0_0000, 4096, roots);
    for (address, targets) in blocks {
        t.rec(Record::SnapshotBlock {
            pid,
            address: *address,
            pointers: ptrs(targets),
        });
    }
    for &(address, offset, matched) in verdicts {
        t.rec(Record::SnapshotHeuristic {
            pid,
            address,
            offset,
            matched,
        });
    }
    t.rec(Record::SnapshotEnd {
        pid,
        blocks: live,
        scanned_bytes: 4096,
    });
}

fn report(a: &Analysis, pid: u32) -> &LeakReport {
    a.process(pid)
        .unwrap()
        .image()
        .leaks
        .report()
        .expect("classified")
}

fn c(blocks: u64, bytes: u64) -> Count {
    Count { blocks, bytes }
}

fn with_heuristics(path: &std::path::Path, set: HeuristicSet) -> Analysis {
    let opts = AnalyzeOptions {
        symbolize: false,
        leak_heuristics: set,
        ..AnalyzeOptions::default()
    };
    analyze(path, &opts).unwrap()
}

/// The three shapes of the C++ program in the end-to-end test, plus a std::string
/// rep: `new T[10]` (8-byte count + 10 one-byte elements, pointed at 8 bytes in),
/// a C : A, B object (pointed at its B subobject, 16 bytes in), a length64 block
/// (pointed at 8 bytes in; its count is also a new[] count), and a pre-C++11 string
/// (pointed at 24 bytes in). The C object holds a start pointer to a plain block.
fn heuristic_trace() -> Trace {
    let mut t = Trace::new(1);
    t.launch(1)
        .alloc_fn(1, AllocFn::NewArray, 0x1000, 18, 0)
        .alloc_fn(1, AllocFn::New, 0x2000, 40, 0)
        .malloc(1, 0x3000, 48, 0)
        .alloc_fn(1, AllocFn::New, 0x4000, 30, 0)
        .malloc(1, 0x5000, 16, 0);
    snapshot(
        &mut t,
        1,
        &[0x1008, 0x2010, 0x3008, 0x4018],
        &[(0x2000, &[0x5000])],
        &[
            (0x1000, 8, 4),
            (0x2000, 16, 8),
            (0x3000, 8, 2 | 4),
            (0x4000, 24, 1),
        ],
        5,
    );
    t.exit(1, ExitStatus::Code(0));
    t
}

#[test]
fn recorded_verdicts_make_blocks_reachable_via_heuristic() {
    let (_d, path) = heuristic_trace().finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.still_reachable, c(5, 18 + 40 + 48 + 30 + 16));
    assert_eq!(r.summary.possibly_lost, c(0, 0));
    assert_eq!(r.summary.definitely_lost, c(0, 0));
    assert_eq!(r.summary.indirectly_lost, c(0, 0));
    assert_eq!(
        r.summary.reachable_via_heuristic,
        [c(1, 30), c(1, 48), c(1, 18), c(1, 40)]
    );
    let h = |a| r.find(a).unwrap().heuristic;
    assert_eq!(h(0x1000), Some(Heuristic::NewArray));
    assert_eq!(h(0x2000), Some(Heuristic::MultipleInheritance));
    // length64 and newarray both match: the first in memcheck's order is credited.
    assert_eq!(h(0x3000), Some(Heuristic::Length64));
    assert_eq!(h(0x4000), Some(Heuristic::StdString));
    // Reached through a start pointer from a heuristic-reachable block: plain.
    assert_eq!(h(0x5000), None);
    assert_eq!(r.find(0x5000).unwrap().kind, LeakKind::StillReachable);
    assert!(a.warnings().is_empty(), "{:?}", a.warnings());

    let v = with_heuristics(&path, HeuristicSet::ALL).to_json();
    let l = &v["processes"][0]["leaks"];
    assert_eq!(l["still_reachable"], json!({"blocks": 5, "bytes": 152}));
    assert_eq!(l["possibly_lost"], json!({"blocks": 0, "bytes": 0}));
    assert_eq!(
        l["reachable_via_heuristic"],
        json!({
            "stdstring": {"blocks": 1, "bytes": 30},
            "length64": {"blocks": 1, "bytes": 48},
            "newarray": {"blocks": 1, "bytes": 18},
            "multipleinheritance": {"blocks": 1, "bytes": 40},
        })
    );
}

#[test]
fn disabled_heuristics_ignore_the_verdicts() {
    let (_d, path) = heuristic_trace().finish();
    let a = with_heuristics(&path, HeuristicSet::NONE);
    let r = report(&a, 1);
    assert_eq!(r.summary.possibly_lost, c(5, 152));
    assert_eq!(r.summary.still_reachable, c(0, 0));
    assert_eq!(r.summary.reachable_via_heuristic, [c(0, 0); 4]);

    // newarray alone: the length64 block is still accepted (its verdict has both).
    let a = with_heuristics(&path, HeuristicSet::only(Heuristic::NewArray));
    let r = report(&a, 1);
    assert_eq!(r.summary.still_reachable, c(2, 18 + 48));
    assert_eq!(r.summary.possibly_lost, c(3, 40 + 30 + 16));
    assert_eq!(
        r.summary.reachable_via_heuristic,
        [c(0, 0), c(0, 0), c(2, 66), c(0, 0)]
    );
    assert_eq!(r.find(0x3000).unwrap().heuristic, Some(Heuristic::NewArray));
}

#[test]
fn a_verdict_applies_to_its_offset_and_snapshot_only() {
    let mut t = Trace::new(1);
    t.launch(1)
        .alloc_fn(1, AllocFn::NewArray, 0x1000, 24, 0)
        .malloc(1, 0x2000, 32, 0);
    // A verdict outside any snapshot is ignored.
    t.rec(Record::SnapshotHeuristic {
        pid: 1,
        address: 0x2000,
        offset: 8,
        matched: 4,
    });
    // First snapshot: 0x1000 is accepted at offset 8, pointed at 16; 0x2000 accepted.
    snapshot(
        &mut t,
        1,
        &[0x1010, 0x2008],
        &[],
        &[(0x1000, 8, 4), (0x2000, 8, 4)],
        2,
    );
    // Second snapshot, the one reported: no verdicts, so nothing carries over.
    snapshot(&mut t, 1, &[0x1008, 0x2008], &[], &[], 2);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.possibly_lost, c(2, 56));
    assert_eq!(r.summary.reachable_via_heuristic, [c(0, 0); 4]);
}

#[test]
fn verdicts_belong_to_their_process() {
    let mut t = Trace::new(1);
    t.launch(1).alloc_fn(1, AllocFn::NewArray, 0x1000, 24, 0);
    t.start(2, Some(1), ProcessOrigin::Fork, "./app");
    // Both snapshots open at once; the verdict names pid 2 only.
    t.rec(Record::SnapshotBegin { ts: 90_000, pid: 1 });
    t.rec(Record::SnapshotBegin { ts: 90_000, pid: 2 });
    for pid in [1, 2] {
        t.root(
            pid,
            RootKind::Stack { tid: pid },
            0x7ff0_0000,
            4096,
            &[0x1008],
        );
    }
    t.rec(Record::SnapshotHeuristic {
        pid: 2,
        address: 0x1000,
        offset: 8,
        matched: 4,
    });
    for pid in [2, 1] {
        t.rec(Record::SnapshotEnd {
            pid,
            blocks: 1,
            scanned_bytes: 4096,
        });
    }
    t.exit(2, ExitStatus::Code(0));
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(report(&a, 1).summary.possibly_lost, c(1, 24));
    let child = report(&a, 2);
    assert_eq!(child.summary.still_reachable, c(1, 24));
    assert_eq!(child.summary.reachable_via_heuristic[2], c(1, 24));
}

#[test]
fn unknown_bits_and_unknown_blocks_are_ignored() {
    let mut t = Trace::new(1);
    t.launch(1).malloc(1, 0x1000, 24, 0);
    snapshot(
        &mut t,
        1,
        &[0x1008],
        &[],
        // Bits above multipleinheritance mean nothing; 0x9000 is no block.
        &[(0x1000, 8, 0xf0), (0x9000, 8, 4)],
        1,
    );
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.possibly_lost, c(1, 24));
    assert!(a.warnings().is_empty(), "{:?}", a.warnings());
}
