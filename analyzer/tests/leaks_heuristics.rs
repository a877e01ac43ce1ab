//! memcheck's interior-pointer heuristics through the pluggable source.

use std::collections::HashMap;

use heaptape_analyzer::{
    BlockRef, Count, Heuristic, HeuristicMatches, HeuristicSet, LeakKind, LiveBlock, SnapshotGraph,
};
use heaptape_format::heuristics::{evaluate, InteriorTarget, TargetWords};
use heaptape_format::{AllocFn, Pointer};

fn blk(address: u64, size: u64, func: AllocFn) -> LiveBlock {
    LiveBlock {
        address,
        size,
        stack: 1,
        func,
        ts: 0,
    }
}

fn p(target: u64) -> Vec<Pointer> {
    vec![Pointer { offset: 0, target }]
}

/// new MyClass[3] with a destructor: a 4-byte class, an 8-byte count, 20 bytes; the
/// program keeps a pointer to the first element, 8 bytes in.
fn new_array_graph() -> SnapshotGraph {
    let mut g = SnapshotGraph::new(vec![blk(0x1000, 20, AllocFn::NewArray)]);
    g.add_root(&p(0x1008));
    g
}

fn new_array_source() -> HeuristicMatches {
    let mut m = HeuristicMatches::new();
    m.insert(0x1000, 8, HeuristicSet::only(Heuristic::NewArray));
    m
}

#[test]
fn an_accepted_interior_pointer_counts_as_a_start_pointer() {
    let r = new_array_graph()
        .classify(&new_array_source(), HeuristicSet::ALL)
        .unwrap();
    assert_eq!(
        r.summary.still_reachable,
        Count {
            blocks: 1,
            bytes: 20
        }
    );
    assert_eq!(
        r.summary.reachable_via_heuristic,
        [
            Count::default(),
            Count::default(),
            Count {
                blocks: 1,
                bytes: 20
            },
            Count::default()
        ]
    );
    assert_eq!(r.find(0x1000).unwrap().heuristic, Some(Heuristic::NewArray));
}

#[test]
fn disabled_heuristics_leave_it_possibly_lost() {
    for enabled in [HeuristicSet::NONE, HeuristicSet::only(Heuristic::StdString)] {
        let r = new_array_graph()
            .classify(&new_array_source(), enabled)
            .unwrap();
        assert_eq!(
            r.summary.possibly_lost,
            Count {
                blocks: 1,
                bytes: 20
            }
        );
        assert_eq!(r.summary.reachable_via_heuristic, [Count::default(); 4]);
    }
}

#[test]
fn a_start_pointer_takes_the_credit_from_the_heuristic() {
    let mut g = new_array_graph();
    g.add_root(&p(0x1000));
    let r = g.classify(&new_array_source(), HeuristicSet::ALL).unwrap();
    assert_eq!(
        r.summary.still_reachable,
        Count {
            blocks: 1,
            bytes: 20
        }
    );
    assert_eq!(r.summary.reachable_via_heuristic, [Count::default(); 4]);
    assert_eq!(r.find(0x1000).unwrap().heuristic, None);
}

#[test]
fn a_heuristic_from_a_possible_block_gives_only_possible() {
    // root -> 0x100 + 4 (plain interior), 0x100 -> 0x1008 (accepted).
    let mut g = SnapshotGraph::new(vec![
        blk(0x100, 16, AllocFn::Malloc),
        blk(0x1000, 20, AllocFn::NewArray),
    ]);
    g.add_root(&p(0x104));
    g.add_block(0x100, &p(0x1008));
    let r = g.classify(&new_array_source(), HeuristicSet::ALL).unwrap();
    assert_eq!(
        r.summary.possibly_lost,
        Count {
            blocks: 2,
            bytes: 36
        }
    );
    assert_eq!(r.find(0x1000).unwrap().kind, LeakKind::PossiblyLost);
}

#[test]
fn header_words_feed_memcheck_tests() {
    // A std::string rep (length 8, capacity 15: 24 + 15 + 1 = 40 bytes) pointed to at
    // its characters, a length64 block pointed to 8 bytes in, and a multiple
    // inheritance object pointed to at its second vtable pointer (offset 16). The
    // verdicts come from the one implementation of memcheck's rules (the format
    // crate's, which the recorder calls at a snapshot), given each block's words.
    const VTABLES: [u64; 2] = [0x40_1000, 0x40_2000];
    let memory: HashMap<u64, Vec<u64>> = [
        (0x1000, vec![8, 15]),
        // Only the first word of this one is readable.
        (0x2000, vec![56]),
        (0x3000, vec![VTABLES[0], 7, VTABLES[1], 0, 0, 0]),
    ]
    .into_iter()
    .collect();
    let source = move |b: &BlockRef, offset: u64| {
        let Some(words) = memory.get(&b.address) else {
            return HeuristicSet::NONE;
        };
        let target = InteriorTarget {
            block: b.address,
            size: b.size,
            offset,
        };
        let word = |off: u64| words.get((off / 8) as usize).copied();
        let head_words = target.head_len() as u64 / 8;
        let read = TargetWords {
            head: [0, 1].map(|k| if k < head_words { word(k * 8) } else { None }),
            at_target: if target.reads_target_word() {
                word(offset)
            } else {
                None
            },
        };
        HeuristicSet::from_bits(evaluate(&target, &read, |a| VTABLES.contains(&a)))
    };
    let mut g = SnapshotGraph::new(vec![
        blk(0x1000, 40, AllocFn::New),
        blk(0x2000, 64, AllocFn::Malloc),
        blk(0x3000, 48, AllocFn::New),
    ]);
    g.add_root(&[
        Pointer {
            offset: 0,
            target: 0x1018,
        },
        Pointer {
            offset: 8,
            target: 0x2008,
        },
        Pointer {
            offset: 16,
            target: 0x3010,
        },
    ]);
    let r = g.classify(&source, HeuristicSet::ALL).unwrap();
    assert_eq!(
        r.summary.still_reachable,
        Count {
            blocks: 3,
            bytes: 152
        }
    );
    let credit: Vec<_> = r.verdicts().map(|v| v.heuristic).collect();
    // 0x2000 matches length64 and newarray; memcheck's order credits length64.
    assert_eq!(
        credit,
        vec![
            Some(Heuristic::StdString),
            Some(Heuristic::Length64),
            Some(Heuristic::MultipleInheritance)
        ]
    );
    let r2 = {
        let mut g = SnapshotGraph::new(vec![blk(0x3000, 48, AllocFn::New)]);
        g.add_root(&p(0x3014)); // not word aligned: no multipleinheritance
        g.classify(&source, HeuristicSet::ALL).unwrap()
    };
    assert_eq!(
        r2.summary.possibly_lost,
        Count {
            blocks: 1,
            bytes: 48
        }
    );
}
