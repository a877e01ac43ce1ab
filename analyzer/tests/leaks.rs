//! Leak classification end to end: synthetic traces with hand-built snapshots.

mod common;

use common::{ptrs, run, Trace};
use heaptape_analyzer::{analyze, Analysis, AnalyzeOptions, FailOn, LeakReport};
use heaptape_analyzer::{Count, LeakKind, NO_SNAPSHOT};
use heaptape_format::{ExitStatus, ProcessOrigin, Record, RootKind};
use serde_json::json;

/// Writes a complete snapshot of `pid`: one stack root holding `roots`, and the
/// pointers found in each listed block; `live` is the block count of the end record.
fn snapshot(t: &mut Trace, pid: u32, roots: &[u64], blocks: &[(u64, &[u64])], live: u64) {
    t.rec(Record::SnapshotBegin { ts: 90_000, pid });
    t.root(pid, RootKind::Stack { tid: pid }, 0x7ff0_0000, 4096, roots);
    for (address, targets) in blocks {
        t.rec(Record::SnapshotBlock {
            pid,
            address: *address,
            pointers: ptrs(targets),
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

fn fails_on(path: &std::path::Path, spec: &str) -> Vec<String> {
    let opts = AnalyzeOptions {
        fail_on: FailOn::parse(spec).unwrap(),
        symbolize: false,
        ..AnalyzeOptions::default()
    };
    let a = analyze(path, &opts).unwrap();
    assert_eq!(a.failed(), !a.failures().is_empty());
    a.failures()
}

#[test]
fn nothing_leaked() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x1000, 100, 0)
        .malloc(1, 0x2000, 50, 0);
    snapshot(&mut t, 1, &[0x1000, 0x2000], &[], 2);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.still_reachable, c(2, 150));
    assert_eq!(r.summary.definitely_lost, c(0, 0));
    assert_eq!(r.summary.indirectly_lost, c(0, 0));
    assert_eq!(r.summary.possibly_lost, c(0, 0));
    assert_eq!(r.loss_records.len(), 1);
    assert_eq!(r.loss_records[0].kind, LeakKind::StillReachable);
    assert_eq!(r.loss_records[0].number, 1);
    assert!(a.warnings().is_empty(), "{:?}", a.warnings());
    assert_eq!(
        fails_on(&path, "definite,indirect,possible"),
        Vec::<String>::new()
    );
    assert_eq!(fails_on(&path, "reachable").len(), 1);
}

#[test]
fn everything_freed_has_no_records() {
    let mut t = Trace::new(1);
    t.launch(1).malloc(1, 0x1000, 100, 0).free(1, 0x1000, 0);
    snapshot(&mut t, 1, &[], &[], 0);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary, Default::default());
    assert!(r.loss_records.is_empty());
    assert!(r.is_empty());
}

#[test]
fn overwritten_pointer_is_definitely_lost() {
    let mut t = Trace::new(1);
    t.launch(1)
        .stack(1, 0, 0x401000)
        .malloc(1, 0x1000, 100, 1)
        .malloc(1, 0x2000, 40, 1);
    // The only pointer to 0x1000 was overwritten: the root holds 0x2000 alone.
    snapshot(&mut t, 1, &[0x2000], &[], 2);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.definitely_lost, c(1, 100));
    assert_eq!(r.summary.still_reachable, c(1, 40));
    let v = r.find(0x1000).unwrap();
    assert_eq!(v.kind, LeakKind::DefinitelyLost);
    assert_eq!((v.leader, v.indirect_bytes), (None, 0));
    assert_eq!(
        fails_on(&path, "definite"),
        vec!["process 1: 100 bytes in 1 blocks are definitely lost".to_string()]
    );
    assert_eq!(
        fails_on(&path, "possible,invalid-free"),
        Vec::<String>::new()
    );
}

/// A lost tree rooted at 0x3000 (not the lowest address): 0x3000 -> 0x1000, 0x2000;
/// 0x2000 -> 0x4000. memcheck first makes 0x1000 and 0x2000 clique leaders, then
/// 0x3000 absorbs both cliques: one definite block, three indirect.
fn lost_tree() -> Trace {
    let mut t = Trace::new(1);
    t.launch(1)
        .stack(1, 0, 0x401000)
        .stack(2, 0, 0x402000)
        .malloc(1, 0x3000, 32, 1)
        .malloc(1, 0x1000, 16, 2)
        .malloc(1, 0x2000, 16, 2)
        .malloc(1, 0x4000, 24, 2);
    snapshot(
        &mut t,
        1,
        &[],
        &[(0x3000, &[0x1000, 0x2000]), (0x2000, &[0x4000])],
        4,
    );
    t.exit(1, ExitStatus::Code(0));
    t
}

#[test]
fn lost_tree_is_one_definite_and_the_rest_indirect() {
    let (_d, path) = lost_tree().finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.definitely_lost, c(1, 32));
    assert_eq!(r.summary.indirectly_lost, c(3, 56));
    let root = r.find(0x3000).unwrap();
    assert_eq!(root.kind, LeakKind::DefinitelyLost);
    assert_eq!(root.indirect_bytes, 56);
    for child in [0x1000, 0x2000, 0x4000] {
        let v = r.find(child).unwrap();
        assert_eq!(v.kind, LeakKind::IndirectlyLost);
        assert_eq!(v.leader, Some(0x3000));
        assert_eq!(v.indirect_bytes, 0);
    }
    // Loss records: memcheck numbers by total size (32 + 56 = 88 > 56).
    let lr: Vec<_> = r
        .loss_records
        .iter()
        .map(|l| {
            (
                l.number,
                l.kind,
                l.stack,
                l.blocks,
                l.bytes,
                l.indirect_bytes,
            )
        })
        .collect();
    assert_eq!(
        lr,
        vec![
            (2, LeakKind::DefinitelyLost, 1, 1, 32, 56),
            (1, LeakKind::IndirectlyLost, 2, 3, 56, 0),
        ]
    );
    assert_eq!(fails_on(&path, "indirect").len(), 1);
}

#[test]
fn lost_tree_in_json_and_text() {
    let (_d, path) = lost_tree().finish();
    let opts = AnalyzeOptions {
        symbolize: false,
        ..AnalyzeOptions::default()
    };
    let a = analyze(&path, &opts).unwrap();
    let v = a.to_json();
    let p = &v["processes"][0];
    assert_eq!(p["leaks_unavailable"], serde_json::Value::Null);
    let l = &p["leaks"];
    assert_eq!(l["definitely_lost"], json!({"blocks": 1, "bytes": 32}));
    assert_eq!(l["indirectly_lost"], json!({"blocks": 3, "bytes": 56}));
    assert_eq!(l["possibly_lost"], json!({"blocks": 0, "bytes": 0}));
    assert_eq!(l["still_reachable"], json!({"blocks": 0, "bytes": 0}));
    assert_eq!(
        l["heuristics"],
        json!(["stdstring", "length64", "newarray", "multipleinheritance"])
    );
    assert_eq!(l["snapshot"]["blocks"], 4);
    assert_eq!(l["snapshot"]["block_pointers"], 3);
    let lr = &p["loss_records"];
    assert_eq!(lr.as_array().unwrap().len(), 2);
    assert_eq!(lr[0]["kind"], "definitely_lost");
    assert_eq!(lr[0]["number"], 2);
    assert_eq!(lr[0]["of"], 2);
    assert_eq!(lr[0]["blocks"], 1);
    assert_eq!(lr[0]["bytes"], 32);
    assert_eq!(lr[0]["indirect_bytes"], 56);
    assert_eq!(lr[0]["allocator"], "malloc");
    assert_eq!(lr[0]["stack"][0]["address"], "0x401000");
    assert_eq!(lr[1]["kind"], "indirectly_lost");

    let mut out = Vec::new();
    a.render_text(&mut out, &opts).unwrap();
    let text = String::from_utf8(out).unwrap();
    let expected = "\
   LEAK SUMMARY:
      definitely lost: 32 bytes in 1 block
      indirectly lost: 56 bytes in 3 blocks
        possibly lost: 0 bytes in 0 blocks
      still reachable: 0 bytes in 0 blocks
           suppressed: 0 bytes in 0 blocks
   88 (32 direct, 56 indirect) bytes in 1 block is definitely lost in loss record 2 of 2 (malloc)
        at 0x401000: ???
   total heap usage";
    assert!(text.contains(expected), "{text}");
}

#[test]
fn globals_keep_blocks_reachable() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x1000, 8, 0)
        .malloc(1, 0x2000, 8, 0)
        .malloc(1, 0x3000, 8, 0);
    t.rec(Record::SnapshotBegin { ts: 1, pid: 1 });
    // The root region comes split over two records (merged).
    for half in [&[][..], &[0x1000u64][..]] {
        t.root(
            1,
            RootKind::ModuleData {
                path: "/bin/app".into(),
            },
            0x60_0000,
            64,
            half,
        );
    }
    // A block split over two records too.
    t.rec(Record::SnapshotBlock {
        pid: 1,
        address: 0x1000,
        pointers: ptrs(&[0x2000]),
    });
    t.rec(Record::SnapshotBlock {
        pid: 1,
        address: 0x2000,
        pointers: ptrs(&[0x3000]),
    });
    t.rec(Record::SnapshotEnd {
        pid: 1,
        blocks: 3,
        scanned_bytes: 88,
    });
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.still_reachable, c(3, 24));
    assert_eq!(r.summary.definitely_lost, c(0, 0));
}

#[test]
fn only_an_interior_pointer_makes_it_possibly_lost() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x1000, 64, 0)
        .malloc(1, 0x2000, 16, 0);
    // The root points 8 bytes into 0x1000 (no heuristic data in the trace), which
    // holds a start pointer to 0x2000: both possibly lost.
    snapshot(&mut t, 1, &[0x1008], &[(0x1000, &[0x2000])], 2);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.possibly_lost, c(2, 80));
    assert_eq!(r.summary.still_reachable, c(0, 0));
    assert_eq!(fails_on(&path, "possible").len(), 1);
    assert_eq!(fails_on(&path, "definite").len(), 0);
}

#[test]
fn lost_cycle_is_led_by_its_lowest_address() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x3000, 30, 0)
        .malloc(1, 0x1000, 10, 0)
        .malloc(1, 0x2000, 20, 0);
    snapshot(
        &mut t,
        1,
        &[],
        &[
            (0x1000, &[0x2000]),
            (0x2000, &[0x3000]),
            (0x3000, &[0x1000]),
        ],
        3,
    );
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    assert_eq!(r.summary.definitely_lost, c(1, 10));
    assert_eq!(r.summary.indirectly_lost, c(2, 50));
    assert_eq!(r.find(0x1000).unwrap().indirect_bytes, 50);
    assert_eq!(r.find(0x3000).unwrap().leader, Some(0x1000));
}

#[test]
fn possible_blocks_pass_on_at_most_possible() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x1000, 8, 0) // A: reachable from the root
        .malloc(1, 0x2000, 16, 0) // B: only an interior pointer, from A
        .malloc(1, 0x3000, 8, 0) // C: start pointer from B: possible
        .malloc(1, 0x4000, 8, 0) // D: start pointer from C: possible
        .malloc(1, 0x5000, 8, 0) // E: start pointer from B, and from the root
        .malloc(1, 0x6000, 8, 0); // F: start pointer from E: reachable
    snapshot(
        &mut t,
        1,
        &[0x1000, 0x5000],
        &[
            (0x1000, &[0x2008]),
            (0x2000, &[0x3000, 0x5000]),
            (0x3000, &[0x4000]),
            (0x5000, &[0x6000]),
        ],
        6,
    );
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let r = report(&a, 1);
    let kinds: Vec<_> = r.verdicts().map(|v| v.kind).collect();
    use LeakKind::*;
    assert_eq!(
        kinds,
        vec![
            StillReachable,
            PossiblyLost,
            PossiblyLost,
            PossiblyLost,
            StillReachable,
            StillReachable
        ]
    );
    assert_eq!(r.summary.possibly_lost, c(3, 32));
    assert_eq!(r.summary.still_reachable, c(3, 24));
}

#[test]
fn each_process_has_its_own_snapshot() {
    let mut t = Trace::new(1);
    t.launch(1).malloc(1, 0x1000, 100, 0);
    t.start(2, Some(1), ProcessOrigin::Fork, "./app");
    t.malloc(2, 0x5000, 7, 0);
    // The child dropped its copy of 0x1000; the parent still holds it.
    snapshot(&mut t, 2, &[0x5000], &[], 2);
    t.exit(2, ExitStatus::Code(0));
    snapshot(&mut t, 1, &[0x1000], &[], 1);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let child = report(&a, 2);
    assert_eq!(child.summary.definitely_lost, c(1, 100));
    assert_eq!(child.summary.still_reachable, c(1, 7));
    let parent = report(&a, 1);
    assert_eq!(parent.summary.still_reachable, c(1, 100));
    assert_eq!(parent.summary.definitely_lost, c(0, 0));
    assert_eq!(
        fails_on(&path, "definite"),
        vec!["process 2: 100 bytes in 1 blocks are definitely lost".to_string()]
    );
}

#[test]
fn without_a_snapshot_leaks_are_unavailable() {
    let mut t = Trace::new(1);
    t.launch(1).malloc(1, 0x1000, 100, 0);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let img = a.process(1).unwrap().image();
    assert_eq!(img.leaks.unavailable_reason(), Some(NO_SNAPSHOT));
    let v = a.to_json();
    assert_eq!(v["processes"][0]["leaks"], serde_json::Value::Null);
    assert_eq!(v["processes"][0]["leaks_unavailable"], NO_SNAPSHOT);
    assert_eq!(v["processes"][0]["loss_records"], json!([]));
    assert_eq!(
        fails_on(&path, "definite"),
        vec![format!(
            "process 1: leaks could not be classified: {NO_SNAPSHOT}"
        )]
    );
    assert_eq!(fails_on(&path, "invalid-free"), Vec::<String>::new());
}

#[test]
fn a_cut_off_snapshot_is_unavailable() {
    let mut t = Trace::new(1);
    t.launch(1).malloc(1, 0x1000, 100, 0);
    t.rec(Record::SnapshotBegin { ts: 1, pid: 1 });
    t.root(1, RootKind::Registers { tid: 1 }, 0, 8 * 27, &[0x1000]);
    let (_d, path) = t.abandon();
    let a = run(&path);
    let reason = a.process(1).unwrap().image().leaks.unavailable_reason();
    assert_eq!(
        reason,
        Some("the snapshot was cut off (the trace ends before its end record)")
    );
}

#[test]
fn snapshot_block_count_mismatch_is_a_warning() {
    let mut t = Trace::new(1);
    t.launch(1).malloc(1, 0x1000, 100, 0);
    snapshot(&mut t, 1, &[0x1000], &[], 5);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(report(&a, 1).summary.still_reachable, c(1, 100));
    assert_eq!(
        a.warnings(),
        vec!["1 snapshot(s) covered another number of live blocks than the replay had"]
    );
}

#[test]
fn bad_frees_fail_on_invalid_free() {
    let mut t = Trace::new(1);
    t.launch(1).free(1, 0x9000, 0).free(1, 0x9000, 0);
    snapshot(&mut t, 1, &[], &[], 0);
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    assert_eq!(
        fails_on(&path, "invalid-free"),
        vec!["process 1: 2 invalid, double or mismatched free(s)".to_string()]
    );
    assert_eq!(fails_on(&path, "all").len(), 1);
    assert!(FailOn::parse("definite,bogus").is_err());
}
