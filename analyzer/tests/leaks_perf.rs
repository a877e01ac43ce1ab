//! Throughput of the leak classifier on synthetic 10 M-block graphs, and of the
//! retention analysis (dominator tree, retained sizes, the top roots' paths and the
//! retention per call site) on the same graphs beside it. Prints timings and their
//! ratio, asserts only the totals' consistency. Run with
//! `cargo test --release -p heaptape-analyzer --test leaks_perf -- --ignored --nocapture`.

use std::time::Instant;

use heaptape_analyzer::{
    HeuristicSet, LiveBlock, ModuleMap, NoHeuristicData, RawSymbolizer, RetentionTree,
    SnapshotGraph, StackTable,
};
use heaptape_format::{AllocFn, Pointer};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn run(n: u64, out_degree: u64, roots: u64) {
    const BASE: u64 = 0x5555_0000_0000;
    let addr = |i: u64| BASE + i * 48;
    let t0 = Instant::now();
    let blocks: Vec<LiveBlock> = (0..n)
        .map(|i| LiveBlock {
            address: addr(i),
            size: 40,
            stack: (i % 1000) as u32 + 1,
            func: AllocFn::Malloc,
            ts: i,
        })
        .collect();
    let mut g = SnapshotGraph::new(blocks);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut ptrs = Vec::with_capacity(out_degree as usize);
    for i in 0..n {
        ptrs.clear();
        for k in 0..out_degree {
            let t = rng.next() % n;
            // One pointer in eight is interior.
            let off = if rng.next() % 8 == 0 { 16 } else { 0 };
            ptrs.push(Pointer {
                offset: k * 8,
                target: addr(t) + off,
            });
        }
        g.add_block(addr(i), &ptrs);
    }
    let root_ptrs: Vec<Pointer> = (0..roots)
        .map(|k| Pointer {
            offset: k * 8,
            target: addr(rng.next() % n),
        })
        .collect();
    g.add_root(&root_ptrs);
    let built = t0.elapsed();
    let t1 = Instant::now();
    let r = g.classify(&NoHeuristicData, HeuristicSet::ALL).unwrap();
    let secs = t1.elapsed().as_secs_f64();
    let s = r.summary;
    assert_eq!(
        s.definitely_lost.blocks
            + s.indirectly_lost.blocks
            + s.possibly_lost.blocks
            + s.still_reachable.blocks,
        n
    );
    println!(
        "{n} blocks, {} edges, {roots} roots: graph built in {:.2} s, classified in {secs:.2} s \
         = {:.2} M blocks/s ({:.2} M edges/s) on {} threads; {s:?}",
        n * out_degree,
        built.as_secs_f64(),
        n as f64 / secs / 1e6,
        (n * out_degree) as f64 / secs / 1e6,
        rayon::current_num_threads(),
    );
    let t2 = Instant::now();
    let (stacks, modules) = (StackTable::new(), ModuleMap::new());
    let tree = RetentionTree::new(&r, &stacks, &modules, &RawSymbolizer);
    let built_tree = t2.elapsed().as_secs_f64();
    let summary = tree.summary(10);
    let retention = t2.elapsed().as_secs_f64();
    let reachable = s.still_reachable.blocks + s.possibly_lost.blocks;
    assert_eq!(summary.reachable.blocks, reachable);
    let held: u64 = summary.roots.iter().map(|t| t.retained.blocks).sum();
    assert!(held + summary.shared.blocks <= reachable);
    println!(
        "  retention: dominator tree in {built_tree:.2} s, with the top roots' paths and the \
         call sites {retention:.2} s = {:.2}x the classifier; {} reachable blocks, {} shared, \
         {} roots hold something",
        retention / secs,
        summary.reachable.blocks,
        summary.shared.blocks,
        summary.root_count,
    );
}

#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn ten_million_blocks() {
    // Dense and mostly reachable.
    run(10_000_000, 4, 1_000);
    // Sparse: most blocks lost, in many cliques.
    run(10_000_000, 1, 10);
}
