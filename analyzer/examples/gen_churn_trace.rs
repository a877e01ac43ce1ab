//! Writes a synthetic trace for the analyzer benchmark (docs/PERFORMANCE.md,
//! "Analyzer"): `cargo run --release -p heaptape-analyzer --example gen_churn_trace --
//! EVENTS OUT.trace`.
//!
//! One launched process allocates and frees over 50 call sites (stacks of 8 frames
//! sharing `main`), keeping a bounded live set: a ring of 10,000 slots, where each step
//! frees the slot's block (if any) and allocates a new one. So the trace holds EVENTS
//! allocator events (half allocations, half frees), 100 ns apart, and at most 10,000
//! blocks are live at once; 1 in 1,000 allocations of site 7 is never freed (a slow
//! leak), so the growth and leak sections have something to report.

use std::fs::File;
use std::io::BufWriter;

use heaptape_format::{
    AllocFn, ClockSource, ExitStatus, Header, ProcessOrigin, Record, TraceWriter,
};

const SITES: u32 = 50;
const DEPTH: u32 = 8;
const RING: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(events), Some(out)) = (
        args.first().and_then(|s| s.parse::<u64>().ok()),
        args.get(1),
    ) else {
        eprintln!("usage: gen_churn_trace EVENTS OUT.trace");
        std::process::exit(2);
    };
    let header = Header {
        tool_version: "heaptape bench".into(),
        command: vec!["./churn".into()],
        pid: 100,
        start_time_unix_ns: 0,
        host: "bench".into(),
        kernel: "bench".into(),
        page_size: 4096,
        pointer_size: 8,
        clock: ClockSource::Synthetic,
    };
    let file = BufWriter::with_capacity(1 << 20, File::create(out).expect("create the trace"));
    let mut w = TraceWriter::new(file, &header).expect("write the header");
    let put = |w: &mut TraceWriter<BufWriter<File>>, r: Record| w.write(&r).expect("write");
    let mut ts = 1_000u64;
    put(
        &mut w,
        Record::ProcessStart {
            ts,
            pid: 100,
            parent_pid: None,
            origin: ProcessOrigin::Launched,
            command: vec!["./churn".into()],
        },
    );
    // Node 1 is main; each site is a chain of DEPTH - 1 more frames above it.
    put(
        &mut w,
        Record::StackNode {
            id: 1,
            parent: 0,
            address: 0x40_1000,
        },
    );
    let mut next = 2u32;
    let mut leaf = Vec::new();
    for s in 0..SITES {
        let mut parent = 1;
        for d in 1..DEPTH {
            put(
                &mut w,
                Record::StackNode {
                    id: next,
                    parent,
                    address: 0x40_0000 + u64::from(s) * 0x1000 + u64::from(d) * 0x10,
                },
            );
            parent = next;
            next += 1;
        }
        leaf.push(parent);
    }
    let mut ring: Vec<u64> = vec![0; RING];
    let mut addr = 0x1000_0000u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut written = 0u64;
    let mut i = 0usize;
    while written < events {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let slot = i % RING;
        i += 1;
        ts += 100;
        let site = (rng % u64::from(SITES)) as usize;
        if ring[slot] != 0 && written + 1 < events {
            let leak = site == 7 && rng % 1000 == 0;
            if !leak {
                put(
                    &mut w,
                    Record::Free {
                        ts,
                        tid: 100,
                        func: AllocFn::Free,
                        address: ring[slot],
                        stack: leaf[(rng >> 8) as usize % leaf.len()],
                    },
                );
                written += 1;
            }
        }
        addr += 64;
        ring[slot] = addr;
        put(
            &mut w,
            Record::Alloc {
                ts,
                tid: 100,
                func: AllocFn::Malloc,
                address: addr,
                size: 16 + (rng >> 20) % 2048,
                align: 0,
                stack: leaf[site],
            },
        );
        written += 1;
    }
    ts += 100;
    put(
        &mut w,
        Record::ProcessExit {
            ts,
            pid: 100,
            status: ExitStatus::Code(0),
        },
    );
    w.finish(ts).expect("finish the trace");
}
