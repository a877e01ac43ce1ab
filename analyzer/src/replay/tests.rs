//! The replay's tests: the batch pipeline (any number of shards, chunk sizes, run
//! lengths, with and without run summaries, with one rayon thread or more) gives exactly
//! what the record-by-record replay gives, on random traces; and the live-block table
//! agrees with a map.

use heaptape_format::{AllocFn, ClockSource, EndCounts, ExitStatus, ProcessOrigin};

use super::heap::{Block, LiveTable};
use super::pipeline::SUMMARY_MIN_THREADS;
use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn header() -> Header {
    Header {
        tool_version: "test".into(),
        command: vec!["./app".into()],
        pid: 100,
        start_time_unix_ns: 0,
        host: "h".into(),
        kernel: "k".into(),
        page_size: 4096,
        pointer_size: 8,
        clock: ClockSource::Synthetic,
    }
}

/// The first record of a generated trace: process 100 starts.
fn start_record() -> Record {
    Record::ProcessStart {
        ts: 1,
        pid: 100,
        parent_pid: None,
        origin: ProcessOrigin::Launched,
        command: vec!["./app".into()],
    }
}

/// Ends a generated trace with its end record.
fn push_end(recs: &mut Vec<Record>, ts: u64) {
    recs.push(Record::End {
        ts,
        counts: EndCounts {
            records: recs.len() as u64,
            alloc_events: 0,
            chunks: 0,
        },
    });
}

/// A random trace with processes (fork, vfork, exec, exit), threads that come and
/// go, unbound threads, and allocator events over a small pool of addresses, so
/// that double, invalid and mismatched frees, frees inside live and freed blocks, the
/// C library's bookkeeping frees, temporaries, allocations at live addresses, reallocs
/// in place and failed reallocs all happen.
fn random_trace(seed: u64, n: usize) -> Vec<Record> {
    let mut r = Rng(seed | 1);
    let mut recs = vec![start_record()];
    let mut ts = 10u64;
    let funcs = [
        AllocFn::Malloc,
        AllocFn::Calloc,
        AllocFn::New,
        AllocFn::NewArray,
    ];
    let frees = [
        AllocFn::Free,
        AllocFn::Free,
        AllocFn::Delete,
        AllocFn::DeleteArray,
    ];
    let mut next_pid = 101;
    for id in 1..8 {
        recs.push(Record::StackNode {
            id,
            parent: id - 1,
            address: 0x1000 + u64::from(id),
        });
    }
    for _ in 0..n {
        // Mostly forward, sometimes back (threads' clocks need not agree), with
        // gaps that widen the growth buckets.
        ts = match r.below(100) {
            0 => ts.saturating_sub(5_000),
            1 => ts + 1_000_000,
            _ => ts + 1 + r.below(300),
        };
        let tid = [100, 100, 100, 101, 102, 103, 104, 999][r.below(8) as usize];
        let address = 0x10_0000 + 16 * r.below(48);
        let stack = r.below(8) as StackId;
        let rec = match r.below(1000) {
            0..=3 => Record::ProcessStart {
                ts,
                pid: next_pid,
                parent_pid: Some(100),
                origin: [
                    ProcessOrigin::Fork,
                    ProcessOrigin::Vfork,
                    ProcessOrigin::Attached,
                ][r.below(3) as usize],
                command: vec![],
            },
            4 => Record::Exec {
                ts,
                pid: [100, 101, 102][r.below(3) as usize],
                command: vec!["./next".into()],
            },
            5..=6 => Record::ProcessExit {
                ts,
                pid: 100 + r.below(4) as u32,
                status: ExitStatus::Code(0),
            },
            7..=14 => Record::ThreadStart {
                ts,
                pid: 100 + r.below(4) as u32,
                tid,
            },
            15..=18 => Record::ThreadExit { ts, tid },
            19..=25 => Record::RssSample(Box::new(heaptape_format::RssSample {
                ts,
                pid: 100 + r.below(3) as u32,
                rss: r.below(1 << 30),
                hwm: 0,
                anon: r.below(1 << 30),
                file: 0,
                pss: None,
            })),
            26 => Record::SnapshotBegin { ts, pid: 100 },
            27 => Record::SnapshotEnd {
                pid: 100,
                blocks: r.below(40),
                scanned_bytes: 0,
            },
            28..=29 => Record::StackNode {
                id: 8 + r.below(8) as StackId,
                parent: r.below(8) as StackId,
                address: 0x2000 + r.below(100),
            },
            // A process starting again under a pid that runs (a damaged trace):
            // the threads bound to the old one keep an image without a heap.
            30 => Record::ProcessStart {
                ts,
                pid: 100 + r.below(4) as u32,
                parent_pid: None,
                origin: ProcessOrigin::Launched,
                command: vec![],
            },
            // Sometimes the C library, holding some stacks' innermost frames: frees
            // from those that are not live blocks are its bookkeeping.
            31 => Record::ModuleLoad(Box::new(match r.below(3) {
                0 => heaptape_format::ModuleLoad {
                    ts,
                    pid: 100 + r.below(5) as u32,
                    path: "/lib/libc.so.6".into(),
                    build_id: vec![],
                    base: 0,
                    segments: vec![heaptape_format::Segment {
                        start: 0x2000,
                        len: 0x30,
                        file_offset: 0,
                        prot: 5,
                    }],
                },
                _ => heaptape_format::ModuleLoad {
                    ts,
                    pid: 100 + r.below(5) as u32,
                    path: "/lib/libx.so".into(),
                    build_id: vec![],
                    base: 0x7000_0000,
                    segments: vec![],
                },
            })),
            32..=33 => Record::Mmap {
                ts,
                tid,
                address: 0x5000_0000 + (r.below(8) << 12),
                len: 4096,
                prot: 3,
                flags: 0x22,
                fd: -1,
                stack,
            },
            34..=489 => Record::Alloc {
                ts,
                tid,
                func: funcs[r.below(4) as usize],
                address: if r.below(50) == 0 { 0 } else { address },
                size: r.below(5000),
                align: 0,
                stack,
            },
            490..=939 => Record::Free {
                ts,
                tid,
                func: frees[r.below(4) as usize],
                // Now and then inside a block: 8 bytes in, at an odd address, or
                // farther above every block's start than the look-up steps reach.
                address: match r.below(50) {
                    0 => 0,
                    1 => address + 8,
                    2 => address + 1 + r.below(15),
                    3 => address + super::heap::CONTAINING_REACH + r.below(1000),
                    _ => address,
                },
                // Stacks 8 to 15 may end in the C library (see the module loads).
                stack: if r.below(8) == 0 {
                    8 + r.below(8) as StackId
                } else {
                    stack
                },
            },
            _ => Record::Realloc {
                ts,
                tid,
                func: AllocFn::Realloc,
                old_address: if r.below(4) == 0 { 0 } else { address },
                new_address: match r.below(4) {
                    0 => 0,
                    1 => address,
                    _ => 0x10_0000 + 16 * r.below(48),
                },
                size: if r.below(5) == 0 { 0 } else { r.below(5000) },
                stack,
            },
        };
        if let Record::ProcessStart { pid, .. } = rec {
            if pid == next_pid {
                next_pid += 1;
            }
        }
        recs.push(rec);
    }
    push_end(&mut recs, ts);
    // Sometimes records after the end (counted, never applied).
    if r.below(3) == 0 {
        for k in 0..5 {
            recs.push(Record::Alloc {
                ts: ts + k,
                tid: 100,
                func: AllocFn::Malloc,
                address: 0x10_0000 + 16 * k,
                size: 8,
                align: 0,
                stack: 1,
            });
        }
    }
    recs
}

/// A random trace of mostly valid allocator calls (the kind of run the summaries
/// take, see [`super::run_summary`]): threads that churn, free each other's blocks and
/// make temporaries, reallocs, timestamps that jump ahead and back, stack nodes, RSS
/// samples, a fork and an exec; now and then a double free or a mismatched free,
/// whose runs take the serial accounting.
fn clean_trace(seed: u64, n: usize) -> Vec<Record> {
    let mut r = Rng(seed | 1);
    let mut recs = vec![start_record()];
    for tid in 101..104 {
        recs.push(Record::ThreadStart {
            ts: 2,
            pid: 100,
            tid,
        });
    }
    let mut ts = 10u64;
    // Per process (100, then its fork 200): live blocks and freed addresses.
    type Blocks = (Vec<(u64, AllocFn)>, Vec<u64>);
    let mut heaps: [Blocks; 2] = Default::default();
    let mut next_address = 0x10_0000u64;
    for i in 0..n {
        ts = match r.below(200) {
            0 => ts.saturating_sub(3_000),
            1 => ts + 300_000,
            _ => ts + 1 + r.below(200),
        };
        let tid = [100, 100, 101, 102, 103][r.below(5) as usize];
        let stack = r.below(12) as StackId;
        if i == n / 2 {
            heaps[1] = heaps[0].clone();
            recs.push(Record::ProcessStart {
                ts,
                pid: 200,
                parent_pid: Some(100),
                origin: ProcessOrigin::Fork,
                command: vec![],
            });
        }
        if i == 3 * n / 4 {
            heaps[1] = Default::default();
            recs.push(Record::Exec {
                ts,
                pid: 200,
                command: vec!["./child".into()],
            });
        }
        // The forked child's own thread, now and then.
        let tid = if i > n / 2 && r.below(4) == 0 {
            200
        } else {
            tid
        };
        let (live, freed) = &mut heaps[usize::from(tid == 200)];
        let choice = r.below(5000);
        let rec = match choice {
            0 => Record::RssSample(Box::new(heaptape_format::RssSample {
                ts,
                pid: 100,
                rss: r.below(1 << 30),
                hwm: 0,
                anon: r.below(1 << 30),
                file: 0,
                pss: None,
            })),
            1 if !freed.is_empty() => Record::Free {
                ts,
                tid,
                func: AllocFn::Free,
                address: freed[r.below(freed.len() as u64) as usize],
                stack,
            },
            2..=40 => Record::StackNode {
                id: 100 + i as StackId,
                parent: r.below(12) as StackId,
                address: 0x2000 + r.below(100),
            },
            41..=300 if live.last().is_some_and(|b| b.1 != AllocFn::New) => {
                let k = live.len() - 1;
                let old = live[k].0;
                let new = if r.below(3) == 0 {
                    old
                } else {
                    next_address += 16 * (1 + r.below(4));
                    next_address
                };
                let size = r.below(3000);
                let new = if size == 0 {
                    // realloc(p, 0) frees p.
                    live.swap_remove(k);
                    freed.push(old);
                    0
                } else {
                    live[k] = (new, AllocFn::Malloc);
                    new
                };
                Record::Realloc {
                    ts,
                    tid,
                    func: AllocFn::Realloc,
                    old_address: old,
                    new_address: new,
                    size,
                    stack,
                }
            }
            301..=2600 => {
                // Addresses are reused, as allocators do.
                let address = match freed.pop() {
                    Some(a) if r.below(2) == 0 => a,
                    other => {
                        freed.extend(other);
                        next_address += 16 * (1 + r.below(4));
                        next_address
                    }
                };
                let func = [AllocFn::Malloc, AllocFn::Calloc, AllocFn::New][r.below(3) as usize];
                live.push((address, func));
                Record::Alloc {
                    ts,
                    tid,
                    func,
                    address,
                    size: r.below(4000),
                    align: 0,
                    stack,
                }
            }
            _ if !live.is_empty() => {
                // Mostly the newest block (a temporary), else any.
                let k = if r.below(3) == 0 {
                    live.len() - 1
                } else {
                    r.below(live.len() as u64) as usize
                };
                let (address, func) = live.swap_remove(k);
                freed.push(address);
                let func = match (func, r.below(10_000)) {
                    (_, 0) => AllocFn::DeleteArray,
                    (AllocFn::New, _) => AllocFn::Delete,
                    _ => AllocFn::Free,
                };
                Record::Free {
                    ts,
                    tid,
                    func,
                    address,
                    stack,
                }
            }
            _ => continue,
        };
        recs.push(rec);
    }
    push_end(&mut recs, ts);
    recs
}

/// Everything the replay produced, in a form that does not depend on map order.
fn canonical(o: &ReplayOutcome) -> String {
    let mut out = format!(
        "{:?} {} {} {}\n",
        o.anomalies, o.complete, o.records, o.last_ts
    );
    for p in &o.processes {
        out += &format!(
            "process {} {:?} {:?} {:?}\n",
            p.pid, p.parent_pid, p.origin, p.exit
        );
        for img in &p.images {
            out += &format!(
                "image {:?} {} {} {:?}\n{:?}\n{:?}\n{:?}\n{:?}\nbucket {}\n",
                img.command,
                img.start_ts,
                img.end_ts,
                img.end,
                img.totals,
                img.findings.list(),
                img.timeline,
                img.leaks,
                img.sites.bucket_ns()
            );
            let mut sites: Vec<_> = img.sites.iter().collect();
            sites.sort_by_key(|(k, _)| *k);
            for (k, s) in sites {
                out += &format!("site {k} {s:?}\n");
            }
        }
    }
    out
}

fn sequential(recs: &[Record]) -> String {
    let mut r = Replay::with_shards(&header(), 1);
    for rec in recs {
        r.apply(rec.clone());
    }
    canonical(&r.finish())
}

fn batched(recs: &[Record], shards: usize, chunk: usize, run_steps: usize) -> String {
    batched_runs(recs, shards, chunk, run_steps).0
}

/// [`batched`], and how many runs were merged from summaries and accounted for
/// serially.
fn batched_runs(
    recs: &[Record],
    shards: usize,
    chunk: usize,
    run_steps: usize,
) -> (String, u64, u64) {
    let mut r = Replay::with_shards(&header(), shards);
    r.run_steps = run_steps;
    for c in recs.chunks(chunk) {
        let mut v = c.to_vec();
        r.apply_chunk(&mut v);
        assert!(v.is_empty());
    }
    r.finish_runs();
    let (merged, serial) = (r.runs_merged, r.runs_serial);
    (canonical(&r.finish()), merged, serial)
}

/// What the random traces exercised: bad frees inside live blocks, inside freed ones
/// (past their start), at a freed block's start, in no block, and frees taken for the
/// C library's bookkeeping.
#[derive(Debug, Default)]
struct Exercised {
    inside_live: u64,
    inside_freed: u64,
    double: u64,
    nowhere: u64,
    internal: u64,
}

impl Exercised {
    fn add(&mut self, recs: &[Record]) {
        let mut r = Replay::with_shards(&header(), 1);
        for rec in recs {
            r.apply(rec.clone());
        }
        for img in r.finish().processes.iter().flat_map(|p| p.images.iter()) {
            self.internal += img.totals.allocator_internal_frees;
            for f in img.findings.list() {
                match f.first.block {
                    Some(b) if !b.freed => self.inside_live += 1,
                    Some(b) if b.offset > 0 => self.inside_freed += 1,
                    Some(_) => self.double += 1,
                    None => self.nowhere += 1,
                }
            }
        }
    }
}

#[test]
fn batch_replay_equals_record_by_record_replay() {
    let mut exercised = Exercised::default();
    for seed in 1..40u64 {
        let recs = random_trace(seed * 0x9e37_79b9, 3000);
        exercised.add(&recs);
        let expected = sequential(&recs);
        // Runs longer than the trace, and short ones (many runs in flight, runs
        // spanning chunks).
        for (shards, chunk, run) in [
            (1, 5000, RUN_STEPS),
            (1, 5000, 1),
            (2, 5000, 7),
            (3, 97, 50),
            (4, 1, 3),
            (7, 613, 1000),
        ] {
            let got = batched(&recs, shards, chunk, run);
            assert!(
                got == expected,
                "seed {seed}, {shards} shards, chunks of {chunk}, runs of {run}: differs"
            );
        }
        // With one rayon thread, the shards run inline.
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build();
        for (shards, chunk, run) in [(1, 97, 5), (2, 613, 50)] {
            let got = one
                .as_ref()
                .expect("a pool")
                .install(|| batched(&recs, shards, chunk, run));
            assert!(
                got == expected,
                "seed {seed}, inline, {shards} shards, chunks of {chunk}, runs of {run}: differs"
            );
        }
    }
    let e = &exercised;
    assert!(
        e.inside_live > 20 && e.inside_freed > 20 && e.double > 20 && e.nowhere > 20,
        "{e:?}"
    );
    assert!(e.internal > 0, "{e:?}");
}

/// The summarized accounting (a pool of [`SUMMARY_MIN_THREADS`] threads, see
/// [`super::run_summary`]) gives what the record-by-record replay gives, on traces where
/// most runs are summarized and some are not.
#[test]
fn summarized_replay_equals_record_by_record_replay() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(SUMMARY_MIN_THREADS)
        .build();
    let pool = pool.as_ref().expect("a pool");
    let mut runs = (0, 0);
    for seed in 1..30u64 {
        let recs = clean_trace(seed * 0x2545_f491, 20_000);
        let expected = sequential(&recs);
        for (shards, chunk, run) in [(1, 5000, 500), (1, 333, 64), (2, 1000, 7), (3, 4096, 1000)] {
            let (got, merged, serial) = pool.install(|| batched_runs(&recs, shards, chunk, run));
            assert!(
                got == expected,
                "seed {seed}, {shards} shards, chunks of {chunk}, runs of {run}: differs"
            );
            // Both paths were taken.
            assert!(
                merged > 0 && serial > 0,
                "seed {seed}, runs of {run}: {merged} runs merged, {serial} serial"
            );
            runs.0 += merged;
            runs.1 += serial;
        }
    }
    // Most runs were summarized.
    assert!(
        runs.0 > 2 * runs.1,
        "{} runs merged, {} serial",
        runs.0,
        runs.1
    );
}

#[test]
fn live_table_matches_a_map() {
    let mut r = Rng(7);
    let mut t = LiveTable::default();
    let mut m = FastMap::default();
    let block = |size| Block {
        size,
        ts: 0,
        stack: 0,
        owner: 0,
        func: AllocFn::Malloc,
    };
    for i in 0..200_000u64 {
        // A pool that grows then shrinks, so the table grows and clusters form.
        let pool = if i < 100_000 {
            64 + i / 50
        } else {
            64 + (200_000 - i) / 50
        };
        let a = 16 * (1 + r.below(pool));
        let h = crate::hash::fmix64(a);
        if r.below(2) == 0 {
            assert_eq!(t.insert_hashed(a, h, block(i)), m.insert(a, block(i)));
        } else {
            assert_eq!(t.remove_hashed(a, h), m.remove(&a));
        }
        assert_eq!(t.len(), m.len());
    }
    let mut got: Vec<_> = t.iter().collect();
    got.sort_by_key(|x| x.0);
    let mut want: Vec<_> = m.into_iter().collect();
    want.sort_by_key(|x| x.0);
    assert_eq!(got, want);
}
