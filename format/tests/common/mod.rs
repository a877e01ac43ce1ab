//! Helpers shared by the integration tests: record strategies, writing a trace into
//! memory and reading one back with every check the reader makes.

#![allow(dead_code)]

use heaptape_format::{
    AllocFn, ClockSource, EndCounts, ExitStatus, FdKind, Header, ModuleSymbols, Pointer,
    ProcessOrigin, ReadError, Record, RootKind, Segment, SymbolFrame, SymbolizedAddress,
    TraceReader, TraceWriter, Truncation,
};
use proptest::prelude::*;

/// A fixed header.
pub fn header() -> Header {
    Header {
        tool_version: "heaptape test".into(),
        command: vec!["./app".into(), "arg with spaces".into()],
        pid: 1234,
        start_time_unix_ns: 1_700_000_000_123_456_789,
        host: "testhost".into(),
        kernel: "6.1.0-test".into(),
        page_size: 4096,
        pointer_size: 8,
        clock: ClockSource::Monotonic,
    }
}

/// Writes `records` and finishes the trace (End at `end_ts`), with the given chunk
/// target.
pub fn write_trace(records: &[Record], chunk_target: usize, end_ts: u64) -> Vec<u8> {
    let mut w = TraceWriter::new(Vec::new(), &header())
        .expect("header")
        .with_chunk_target(chunk_target);
    for r in records {
        w.write(r).expect("write");
    }
    w.finish(end_ts).expect("finish")
}

/// Writes `records` without an End record (a recorder that was killed after a flush).
pub fn write_unfinished(records: &[Record], chunk_target: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = TraceWriter::new(&mut out, &header())
            .expect("header")
            .with_chunk_target(chunk_target);
        for r in records {
            w.write(r).expect("write");
        }
        w.flush().expect("flush");
    }
    out
}

/// What reading a whole trace gave.
#[derive(Debug)]
pub struct Outcome {
    /// Records yielded before the end or the first error.
    pub records: Vec<Record>,
    /// The error that stopped the reading (from `TraceReader::new` or the iterator).
    pub error: Option<ReadError>,
    /// The truncation reported after iterating (None when opening failed).
    pub truncation: Option<Truncation>,
    /// Whether the End record was read.
    pub complete: bool,
}

/// Reads a trace from memory the way a consumer would.
pub fn read_all(bytes: &[u8]) -> Outcome {
    let reader = match TraceReader::new(bytes) {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                records: Vec::new(),
                error: Some(e),
                truncation: None,
                complete: false,
            }
        }
    };
    let mut it = reader.records();
    let mut records = Vec::new();
    let mut error = None;
    for r in it.by_ref() {
        match r {
            Ok(r) => records.push(r),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    // The iterator must stay finished after an error or the end.
    assert!(it.next().is_none(), "iterator yields after finishing");
    Outcome {
        records,
        error,
        truncation: it.truncation(),
        complete: it.is_complete(),
    }
}

/// The byte offset an error names, if it names one.
pub fn error_offset(e: &ReadError) -> Option<u64> {
    match e {
        ReadError::Corrupt { offset, .. } | ReadError::TruncatedHeader { offset } => Some(*offset),
        ReadError::BadMagic => Some(0),
        ReadError::UnsupportedVersion { .. } => Some(8),
        ReadError::Io(_) => None,
    }
}

/// u64 values with the edges well represented.
pub fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => Just(1u64 << 63),
        2 => 0u64..1024,
        2 => 0x5555_5555_0000u64..0x5555_5600_0000,
        1 => 0x7f00_0000_0000u64..0x7fff_ffff_ffff,
    ]
}

pub fn any_u32() -> impl Strategy<Value = u32> {
    prop_oneof![3 => any::<u32>(), 1 => Just(0u32), 1 => Just(u32::MAX), 2 => 0u32..64]
}

pub fn any_i32() -> impl Strategy<Value = i32> {
    prop_oneof![3 => any::<i32>(), 1 => Just(i32::MIN), 1 => Just(i32::MAX), 1 => Just(-1)]
}

pub fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(String::new()),
        4 => ".{0,40}",
        1 => "[a-z/]{1000,3000}",
    ]
}

pub fn any_strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(any_string(), 0..5)
}

pub fn any_func() -> impl Strategy<Value = AllocFn> {
    prop::sample::select(AllocFn::ALL.to_vec())
}

pub fn any_pointers() -> impl Strategy<Value = Vec<Pointer>> {
    prop_oneof![
        3 => prop::collection::vec((any_u64(), any_u64()).prop_map(|(offset, target)| Pointer { offset, target }), 0..20),
        1 => prop::collection::vec((any_u64(), any_u64()).prop_map(|(offset, target)| Pointer { offset, target }), 500..2000),
    ]
}

fn any_origin() -> impl Strategy<Value = ProcessOrigin> {
    prop::sample::select(vec![
        ProcessOrigin::Launched,
        ProcessOrigin::Attached,
        ProcessOrigin::Fork,
        ProcessOrigin::Vfork,
        ProcessOrigin::Clone,
    ])
}

fn any_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any_i32().prop_map(ExitStatus::Code),
        any_i32().prop_map(ExitStatus::Signal),
        Just(ExitStatus::Detached),
    ]
}

fn any_fd_kind() -> impl Strategy<Value = FdKind> {
    prop::sample::select(vec![
        FdKind::File,
        FdKind::Socket,
        FdKind::Pipe,
        FdKind::Special,
        FdKind::Dup,
        FdKind::Other,
    ])
}

fn any_root_kind() -> impl Strategy<Value = RootKind> {
    prop_oneof![
        any_u32().prop_map(|tid| RootKind::Registers { tid }),
        any_u32().prop_map(|tid| RootKind::Stack { tid }),
        any_string().prop_map(|path| RootKind::ModuleData { path }),
        any_u32().prop_map(|tid| RootKind::Tls { tid }),
        Just(RootKind::Anonymous),
    ]
}

/// Any record except End (the writer adds that), with arbitrary field values.
pub fn any_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        1 => (any_u64(), any_u32(), prop::option::of(any_u32()), any_origin(), any_strings()).prop_map(
            |(ts, pid, parent_pid, origin, command)| Record::ProcessStart { ts, pid, parent_pid, origin, command }
        ),
        1 => (any_u64(), any_u32(), any_strings()).prop_map(|(ts, pid, command)| Record::Exec { ts, pid, command }),
        1 => (any_u64(), any_u32(), any_status()).prop_map(|(ts, pid, status)| Record::ProcessExit { ts, pid, status }),
        1 => (any_u64(), any_u32(), any_u32()).prop_map(|(ts, pid, tid)| Record::ThreadStart { ts, pid, tid }),
        1 => (any_u64(), any_u32()).prop_map(|(ts, tid)| Record::ThreadExit { ts, tid }),
        1 => (
            any_u64(),
            any_u32(),
            any_string(),
            prop::collection::vec(any::<u8>(), 0..40),
            any_u64(),
            prop::collection::vec(
                (any_u64(), any_u64(), any_u64(), any::<u8>())
                    .prop_map(|(start, len, file_offset, prot)| Segment { start, len, file_offset, prot }),
                0..6
            )
        )
            .prop_map(|(ts, pid, path, build_id, base, segments)| Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
                ts, pid, path, build_id, base, segments
            }))),
        1 => (any_u64(), any_u32(), any_u64(), any_string())
            .prop_map(|(ts, pid, base, path)| Record::ModuleUnload { ts, pid, base, path }),
        1 => (any_u32(), any_u32(), any_u64()).prop_map(|(id, parent, address)| Record::StackNode { id, parent, address }),
        4 => (any_u64(), any_u32(), any_func(), any_u64(), any_u64(), any_u64(), any_u32()).prop_map(
            |(ts, tid, func, address, size, align, stack)| Record::Alloc { ts, tid, func, address, size, align, stack }
        ),
        4 => (any_u64(), any_u32(), any_func(), any_u64(), any_u32())
            .prop_map(|(ts, tid, func, address, stack)| Record::Free { ts, tid, func, address, stack }),
        2 => (any_u64(), any_u32(), any_func(), any_u64(), any_u64(), any_u64(), any_u32()).prop_map(
            |(ts, tid, func, old_address, new_address, size, stack)| Record::Realloc {
                ts, tid, func, old_address, new_address, size, stack
            }
        ),
        1 => (any_u64(), any_u32(), any_u64(), any_u64(), any::<u32>(), any::<u32>(), any_i32(), any_u32()).prop_map(
            |(ts, tid, address, len, prot, flags, fd, stack)| Record::Mmap { ts, tid, address, len, prot, flags, fd, stack }
        ),
        1 => (any_u64(), any_u32(), any_u64(), any_u64(), any_u32())
            .prop_map(|(ts, tid, address, len, stack)| Record::Munmap { ts, tid, address, len, stack }),
        1 => (any_u64(), any_u32(), any_u64(), any_u64(), any_u64(), any_u64(), any_u32()).prop_map(
            |(ts, tid, old_address, old_len, new_address, new_len, stack)| Record::Mremap(Box::new(heaptape_format::Mremap {
                ts, tid, old_address, old_len, new_address, new_len, stack
            }))
        ),
        1 => (any_u64(), any_u32(), any_i32(), any_fd_kind(), any_string(), any_u32())
            .prop_map(|(ts, tid, fd, kind, detail, stack)| Record::FdOpen { ts, tid, fd, kind, detail, stack }),
        1 => (any_u64(), any_u32(), any_i32(), any_u32()).prop_map(|(ts, tid, fd, stack)| Record::FdClose { ts, tid, fd, stack }),
        1 => (any_u64(), any_u32(), any_u64(), any_u64(), any_u64(), any_u64(), prop::option::of(any_u64())).prop_map(
            |(ts, pid, rss, hwm, anon, file, pss)| Record::RssSample(Box::new(heaptape_format::RssSample { ts, pid, rss, hwm, anon, file, pss }))
        ),
        1 => (any_u64(), any_u32()).prop_map(|(ts, pid)| Record::SnapshotBegin { ts, pid }),
        1 => (any_u32(), any_root_kind(), any_u64(), any_u64(), any_pointers())
            .prop_map(|(pid, kind, start, len, pointers)| Record::SnapshotRoot(Box::new(heaptape_format::SnapshotRoot { pid, kind, start, len, pointers }))),
        1 => (any_u32(), any_u64(), any_pointers())
            .prop_map(|(pid, address, pointers)| Record::SnapshotBlock { pid, address, pointers }),
        1 => (any_u32(), any_u64(), any_u64())
            .prop_map(|(pid, blocks, scanned_bytes)| Record::SnapshotEnd { pid, blocks, scanned_bytes }),
        1 => (any_u32(), any_u64(), any_u64(), any::<u8>()).prop_map(|(pid, address, offset, matched)| {
            Record::SnapshotHeuristic { pid, address, offset, matched }
        }),
        1 => any_symbols().prop_map(|s| Record::Symbols(Box::new(s))),
        1 => (any_u32(), any_u32(), any_string(), any_u32(), prop::collection::vec(any_u64(), 0..8)).prop_map(
            |(pid, tid, name, stack, frames)| Record::SnapshotThread(Box::new(heaptape_format::SnapshotThread { pid, tid, name, stack, frames }))
        ),
        1 => (any_u32(), prop::sample::select(vec![
            heaptape_format::SnapshotTrigger::Exit,
            heaptape_format::SnapshotTrigger::Periodic,
            heaptape_format::SnapshotTrigger::Signal,
            heaptape_format::SnapshotTrigger::Detach,
        ]), any_u64()).prop_map(|(pid, trigger, pause_ns)| Record::SnapshotInfo { pid, trigger, pause_ns }),
    ]
}

/// A `Symbols` record with arbitrary strings, addresses and frames (indexes in and out
/// of its string table: the format does not check them, readers must).
pub fn any_symbols() -> impl Strategy<Value = ModuleSymbols> {
    (
        any_string(),
        prop::collection::vec(any::<u8>(), 0..24),
        any_strings(),
        prop_oneof![
            3 => prop::collection::vec(any_symbolized_address(), 0..10),
            1 => prop::collection::vec(any_symbolized_address(), 200..600),
        ],
    )
        .prop_map(|(path, build_id, strings, addresses)| ModuleSymbols {
            path,
            build_id,
            strings,
            addresses,
        })
}

fn any_symbolized_address() -> impl Strategy<Value = SymbolizedAddress> {
    let index = || prop::option::of(prop_oneof![3 => 0u32..8, 1 => any_u32()]);
    let frame = (
        index(),
        index(),
        index(),
        prop::option::of(any_u32()),
        any::<bool>(),
    )
        .prop_map(|(function, mangled, file, line, inlined)| SymbolFrame {
            function,
            mangled,
            file,
            line,
            inlined,
        });
    (any_u64(), prop::collection::vec(frame, 0..4))
        .prop_map(|(address, frames)| SymbolizedAddress { address, frames })
}

/// Allocator-shaped streams: addresses, stacks, sizes and threads drawn from small
/// pools so that frees name live blocks, blocks are reused, sizes repeat per stack,
/// and every prediction path of the encoding (and its misses) is taken.
pub fn allocator_stream(max_len: usize) -> impl Strategy<Value = Vec<Record>> {
    let addr = prop_oneof![
        6 => (0u64..48).prop_map(|i| 0x5555_5556_0000 + i * 48),
        1 => Just(0u64),
        1 => any_u64(),
    ];
    let size = prop_oneof![
        4 => prop::sample::select(vec![16u64, 24, 32, 100, 4096]),
        1 => any_u64(),
    ];
    let ev = (
        0u8..10,
        0u64..3000,
        prop::sample::select(vec![7u32, 8, 9, u32::MAX]),
        any_func(),
        addr.clone(),
        addr,
        size,
        prop_oneof![4 => 0u32..6, 1 => any_u32()],
        prop_oneof![6 => Just(0u64), 1 => any_u64()],
    );
    prop::collection::vec(ev, 0..max_len).prop_map(|evs| {
        let mut ts = 0u64;
        evs.into_iter()
            .map(|(k, dts, tid, func, a, b, size, stack, align)| {
                // Mostly increasing time, sometimes a jump back (another thread's clock).
                ts = if dts == 2999 {
                    ts.wrapping_sub(12345)
                } else {
                    ts.wrapping_add(dts)
                };
                match k {
                    0..=3 => Record::Alloc {
                        ts,
                        tid,
                        func,
                        address: a,
                        size,
                        align,
                        stack,
                    },
                    4..=7 => Record::Free {
                        ts,
                        tid,
                        func,
                        address: a,
                        stack,
                    },
                    8 => Record::Realloc {
                        ts,
                        tid,
                        func,
                        old_address: a,
                        new_address: b,
                        size,
                        stack,
                    },
                    _ => Record::StackNode {
                        id: stack,
                        parent: stack.wrapping_sub(1),
                        address: a,
                    },
                }
            })
            .collect()
    })
}

/// The counts the End record of a trace of `records` must carry.
pub fn expected_counts(records: &[Record], chunks_before_end: u64) -> EndCounts {
    EndCounts {
        records: records.len() as u64,
        alloc_events: records.iter().filter(|r| r.is_alloc_event()).count() as u64,
        chunks: chunks_before_end,
    }
}

/// Number of chunks in a trace, by walking its chunk headers.
pub fn count_chunks(bytes: &[u8]) -> u64 {
    let mut r = TraceReader::new(bytes).expect("valid trace");
    let mut n = 0;
    while r.next_chunk().expect("valid chunk").is_some() {
        n += 1;
    }
    n
}
