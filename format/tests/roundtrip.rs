//! Round trips through `TraceWriter` and `TraceReader`: every record kind, arbitrary
//! field values, big and tiny chunks, and the end record's counts.

mod common;

use common::*;
use heaptape_format::{decode_parallel, Record, TraceReader};
use proptest::prelude::*;

/// Checks that `records` come back unchanged and in order, both through the record
/// iterator and through parallel chunk decoding, and that the End record is right.
fn check_round_trip(records: &[Record], chunk_target: usize) -> Result<(), TestCaseError> {
    let end_ts = records
        .iter()
        .filter_map(Record::timestamp)
        .max()
        .unwrap_or(0);
    let bytes = write_trace(records, chunk_target, end_ts);
    let out = read_all(&bytes);
    prop_assert!(out.error.is_none(), "error: {:?}", out.error);
    prop_assert!(out.complete);
    prop_assert_eq!(out.truncation, None);
    prop_assert_eq!(out.records.len(), records.len() + 1);
    prop_assert_eq!(&out.records[..records.len()], records);
    let chunks = count_chunks(&bytes);
    match out.records.last() {
        Some(Record::End { ts, counts }) => {
            prop_assert_eq!(*ts, end_ts);
            prop_assert_eq!(counts, &expected_counts(records, chunks - 1));
        }
        other => prop_assert!(false, "last record is {:?}", other),
    }

    let mut reader = TraceReader::new(&bytes[..]).expect("header");
    prop_assert_eq!(reader.header(), &header());
    let mut raws = Vec::new();
    while let Some(c) = reader.next_chunk().expect("chunk") {
        prop_assert_eq!(u64::from(c.info.seq), raws.len() as u64);
        raws.push(c);
    }
    let mut each = Vec::new();
    for c in &raws {
        let n = c
            .for_each_record(|r| each.push(r))
            .expect("for_each_record");
        prop_assert_eq!(n, c.info.record_count);
    }
    prop_assert_eq!(&each, &out.records);
    let par: Vec<Record> = decode_parallel(&raws)
        .expect("parallel decode")
        .into_iter()
        .flatten()
        .collect();
    prop_assert_eq!(par, out.records);
    Ok(())
}

fn chunk_target() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(1usize),
        2 => 2usize..300,
        1 => Just(heaptape_format::DEFAULT_CHUNK_TARGET),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_record_kind_round_trips(
        records in prop::collection::vec(any_record(), 0..40),
        target in chunk_target(),
    ) {
        check_round_trip(&records, target)?;
    }

    #[test]
    fn allocator_streams_round_trip(
        records in allocator_stream(400),
        target in chunk_target(),
    ) {
        check_round_trip(&records, target)?;
    }

    #[test]
    fn mixed_streams_round_trip(
        a in allocator_stream(100),
        b in prop::collection::vec(any_record(), 0..20),
        c in allocator_stream(100),
        target in chunk_target(),
    ) {
        let records: Vec<Record> = a.into_iter().chain(b).chain(c).collect();
        check_round_trip(&records, target)?;
    }
}

#[test]
fn empty_trace_is_complete() {
    let bytes = write_trace(&[], 1024, 0);
    let out = read_all(&bytes);
    assert!(out.error.is_none());
    assert!(out.complete);
    assert_eq!(
        out.records,
        vec![Record::End {
            ts: 0,
            counts: expected_counts(&[], 0)
        }]
    );
}

#[test]
fn every_variant_is_covered() {
    // A fixed list with one record of each kind (End comes from finish); `kind` below
    // makes a new variant without a case here a compile error.
    let recs = vec![
        Record::ProcessStart {
            ts: 1,
            pid: 2,
            parent_pid: Some(1),
            origin: heaptape_format::ProcessOrigin::Fork,
            command: vec!["a".into(), String::new()],
        },
        Record::Exec {
            ts: 2,
            pid: 2,
            command: vec![],
        },
        Record::ThreadStart {
            ts: 3,
            pid: 2,
            tid: 3,
        },
        Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
            ts: 4,
            pid: 2,
            path: "/lib/x.so".into(),
            build_id: vec![1, 2, 3],
            base: u64::MAX,
            segments: vec![heaptape_format::Segment {
                start: 0,
                len: u64::MAX,
                file_offset: 7,
                prot: 7,
            }],
        })),
        Record::StackNode {
            id: 1,
            parent: 0,
            address: 0x5555_5555_1234,
        },
        Record::StackNode {
            id: 2,
            parent: 1,
            address: 0x7fff_0000_0000,
        },
        Record::Alloc {
            ts: 5,
            tid: 3,
            func: heaptape_format::AllocFn::Malloc,
            address: 0x5555_5556_0010,
            size: 24,
            align: 0,
            stack: 2,
        },
        Record::Alloc {
            ts: 6,
            tid: 3,
            func: heaptape_format::AllocFn::AlignedAlloc,
            address: 0x5555_5556_1000,
            size: 64,
            align: 4096,
            stack: 2,
        },
        Record::Realloc {
            ts: 7,
            tid: 3,
            func: heaptape_format::AllocFn::Realloc,
            old_address: 0x5555_5556_0010,
            new_address: 0x5555_5556_2000,
            size: 100,
            stack: 1,
        },
        Record::Free {
            ts: 8,
            tid: 4,
            func: heaptape_format::AllocFn::Free,
            address: 0x5555_5556_2000,
            stack: 1,
        },
        Record::Free {
            ts: 8,
            tid: 4,
            func: heaptape_format::AllocFn::Free,
            address: 0,
            stack: 0,
        },
        Record::Mmap {
            ts: 9,
            tid: 3,
            address: 0x7f00_0000_0000,
            len: 1 << 20,
            prot: 3,
            flags: 0x22,
            fd: -1,
            stack: 2,
        },
        Record::Mremap(Box::new(heaptape_format::Mremap {
            ts: 10,
            tid: 3,
            old_address: 0x7f00_0000_0000,
            old_len: 1 << 20,
            new_address: 0x7e00_0000_0000,
            new_len: 2 << 20,
            stack: 2,
        })),
        Record::Munmap {
            ts: 11,
            tid: 3,
            address: 0x7e00_0000_0000,
            len: 2 << 20,
            stack: 2,
        },
        Record::FdOpen {
            ts: 12,
            tid: 3,
            fd: 3,
            kind: heaptape_format::FdKind::File,
            detail: "/etc/passwd".into(),
            stack: 1,
        },
        Record::FdClose {
            ts: 13,
            tid: 3,
            fd: 3,
            stack: 1,
        },
        Record::RssSample(Box::new(heaptape_format::RssSample {
            ts: 14,
            pid: 2,
            rss: 1,
            hwm: 2,
            anon: 3,
            file: 4,
            pss: None,
        })),
        Record::SnapshotBegin { ts: 15, pid: 2 },
        Record::SnapshotRoot(Box::new(heaptape_format::SnapshotRoot {
            pid: 2,
            kind: heaptape_format::RootKind::ModuleData {
                path: "/bin/x".into(),
            },
            start: 1,
            len: 2,
            pointers: vec![heaptape_format::Pointer {
                offset: 8,
                target: 0x5555_5556_1000,
            }],
        })),
        Record::SnapshotBlock {
            pid: 2,
            address: 0x5555_5556_1000,
            pointers: vec![],
        },
        Record::SnapshotHeuristic {
            pid: 2,
            address: 0x5555_5556_1000,
            offset: 16,
            matched: 1 | 4,
        },
        Record::SnapshotEnd {
            pid: 2,
            blocks: 1,
            scanned_bytes: 64,
        },
        Record::ModuleUnload {
            ts: 16,
            pid: 2,
            base: 0,
            path: "/lib/x.so".into(),
        },
        Record::ThreadExit { ts: 17, tid: 3 },
        Record::ProcessExit {
            ts: 18,
            pid: 2,
            status: heaptape_format::ExitStatus::Signal(9),
        },
        Record::Symbols(Box::new(heaptape_format::ModuleSymbols {
            path: "/bin/x".into(),
            build_id: vec![0xab, 0xcd],
            strings: vec!["main".into(), "/src/x.c".into()],
            addresses: vec![
                heaptape_format::SymbolizedAddress {
                    address: 0x1146,
                    frames: vec![heaptape_format::SymbolFrame {
                        function: Some(0),
                        mangled: None,
                        file: Some(1),
                        line: Some(12),
                        inlined: false,
                    }],
                },
                heaptape_format::SymbolizedAddress {
                    address: 0x2000,
                    frames: vec![],
                },
            ],
        })),
        Record::SnapshotThread(Box::new(heaptape_format::SnapshotThread {
            pid: 2,
            tid: 3,
            name: "worker".into(),
            stack: 2,
            frames: vec![0x7ffc_0000_1000, 0x7ffc_0000_1040],
        })),
        Record::SnapshotInfo {
            pid: 2,
            trigger: heaptape_format::SnapshotTrigger::Periodic,
            pause_ns: 1_234_567,
        },
    ];
    for target in [1, 64, 1 << 20] {
        check_round_trip(&recs, target).expect("round trip");
    }
    // Every kind but End (which finish writes) is in the list.
    let mut seen = [false; KINDS];
    for r in &recs {
        seen[kind(r)] = true;
    }
    seen[kind(&Record::End {
        ts: 0,
        counts: Default::default(),
    })] = true;
    assert!(
        seen.iter().all(|&s| s),
        "kinds missing from the list: {seen:?}"
    );
}

const KINDS: usize = 26;

/// The variant index of a record. No wildcard arm: adding a variant to `Record` breaks
/// this until the variant gets a round-trip case above and in `common::any_record`.
fn kind(r: &Record) -> usize {
    match r {
        Record::ProcessStart { .. } => 0,
        Record::Exec { .. } => 1,
        Record::ProcessExit { .. } => 2,
        Record::ThreadStart { .. } => 3,
        Record::ThreadExit { .. } => 4,
        Record::ModuleLoad(_) => 5,
        Record::ModuleUnload { .. } => 6,
        Record::StackNode { .. } => 7,
        Record::Alloc { .. } => 8,
        Record::Free { .. } => 9,
        Record::Realloc { .. } => 10,
        Record::Mmap { .. } => 11,
        Record::Munmap { .. } => 12,
        Record::Mremap(_) => 13,
        Record::FdOpen { .. } => 14,
        Record::FdClose { .. } => 15,
        Record::RssSample(_) => 16,
        Record::SnapshotBegin { .. } => 17,
        Record::SnapshotRoot(_) => 18,
        Record::SnapshotBlock { .. } => 19,
        Record::SnapshotEnd { .. } => 20,
        Record::End { .. } => 21,
        Record::SnapshotHeuristic { .. } => 22,
        Record::Symbols(_) => 23,
        Record::SnapshotThread(_) => 24,
        Record::SnapshotInfo { .. } => 25,
    }
}

#[test]
fn oversized_record_is_refused_and_leaves_the_trace_intact() {
    use heaptape_format::{TraceWriter, WriteError, MAX_RECORD_BYTES};
    let mut w = TraceWriter::new(Vec::new(), &header()).expect("header");
    let small = Record::ThreadStart {
        ts: 1,
        pid: 1,
        tid: 1,
    };
    w.write(&small).expect("write");
    let huge = Record::Exec {
        ts: 2,
        pid: 1,
        command: vec!["x".repeat(MAX_RECORD_BYTES + 1)],
    };
    assert!(matches!(w.write(&huge), Err(WriteError::RecordTooLarge(n)) if n > MAX_RECORD_BYTES));
    let after = Record::Alloc {
        ts: 3,
        tid: 1,
        func: heaptape_format::AllocFn::Malloc,
        address: 16,
        size: 8,
        align: 0,
        stack: 0,
    };
    w.write(&after).expect("write after refusal");
    let bytes = w.finish(4).expect("finish");
    let out = read_all(&bytes);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.records[..2], [small, after]);
    assert!(out.complete);
}
