//! Damaged and unusual traces: truncation, corruption, garbage, long streams.

mod common;

use std::io::Write;

use common::{run, Trace};
use heaptape_analyzer::{analyze, AnalyzeOptions};
use heaptape_format::{ExitStatus, Record};

/// One record per chunk, so chunk offsets are easy to know.
fn small_chunks() -> Trace {
    Trace::with_chunk_target(1, Some(1))
}

#[test]
fn truncated_trace_is_analyzed_up_to_its_last_complete_chunk() {
    let mut t = small_chunks();
    t.launch(1)
        .malloc(1, 0xA, 10, 1)
        .malloc(1, 0xB, 20, 1)
        .free(1, 0xA, 1);
    let cut_chunk = t.w.bytes_written();
    t.malloc(1, 0xC, 40, 1);
    let full = t.w.bytes_written();
    let (_d, path) = t.abandon();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(cut_chunk + (full - cut_chunk) / 2).unwrap();
    drop(f);

    let a = run(&path);
    // The reason's wording belongs to the format crate; the offset is what matters.
    let w = a.warning().unwrap();
    assert!(
        w.starts_with(&format!(
            "trace is truncated at byte offset {cut_chunk} (file ends inside a chunk"
        )),
        "{w}"
    );
    let tot = &a.processes[0].image().totals;
    assert_eq!(
        (tot.allocations, tot.frees, tot.allocated_bytes),
        (2, 1, 30)
    );
    assert_eq!((tot.live_at_exit_blocks, tot.live_at_exit_bytes), (1, 20));
    assert_eq!(a.processes[0].exit, None);
    assert_eq!(a.to_json()["trace"]["complete"], false);
    assert_eq!(a.to_json()["trace"]["truncation"]["offset"], cut_chunk);
}

#[test]
fn trace_without_end_record_warns() {
    let mut t = small_chunks();
    t.launch(1).malloc(1, 0xA, 10, 1).malloc(1, 0xB, 20, 1);
    let full = t.w.bytes_written();
    let (_d, path) = t.abandon();
    let a = run(&path);
    assert_eq!(
        a.warning().unwrap(),
        format!(
            "trace is truncated at byte offset {full} (no end record; the recorder did not \
             finish); everything before it was read"
        )
    );
    assert_eq!(a.processes[0].image().totals.allocated_bytes, 30);
}

/// The offset in "trace is corrupt at byte offset N: ...".
fn corrupt_offset(msg: &str) -> u64 {
    let rest = msg
        .strip_prefix("trace is corrupt at byte offset ")
        .unwrap_or_else(|| panic!("not a corruption error: {msg}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

#[test]
fn corrupt_chunk_is_an_error_naming_its_offset() {
    let mut t = small_chunks();
    t.launch(1).malloc(1, 0xA, 10, 1);
    let bad = t.w.bytes_written();
    t.malloc(1, 0xB, 20, 1);
    let bad_end = t.w.bytes_written();
    t.free(1, 0xA, 1);
    let (_d, path) = t.finish();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[bad_end as usize - 1] ^= 0xff; // the last byte of the chunk's payload
    std::fs::write(&path, &bytes).unwrap();
    let err = analyze(&path, &AnalyzeOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("checksum mismatch"), "{msg}");
    // The offset named is inside the damaged chunk (its header or its payload).
    let offset = corrupt_offset(&msg);
    assert!((bad..bad_end).contains(&offset), "{msg}");
}

#[test]
fn corrupt_chunk_header_is_an_error_naming_its_offset() {
    let mut t = small_chunks();
    t.launch(1);
    let bad = t.w.bytes_written();
    t.malloc(1, 0xA, 10, 1);
    let (_d, path) = t.finish();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[bad as usize] = b'X'; // the chunk magic
    std::fs::write(&path, &bytes).unwrap();
    let err = analyze(&path, &AnalyzeOptions::default()).unwrap_err();
    assert_eq!(corrupt_offset(&err.to_string()), bad);
}

#[test]
fn not_a_trace_and_missing_file_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"this is not a heap trace at all")
        .unwrap();
    let err = analyze(&path, &AnalyzeOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a heaptape trace (bad magic at byte offset 0)"
    );
    let err = analyze(&dir.path().join("missing"), &AnalyzeOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("cannot read trace: "), "{err}");
}

#[test]
fn long_trace_over_many_chunks_replays_in_order() {
    // Small chunks, so the pipeline goes through many parallel batches.
    let mut t = Trace::with_chunk_target(1, Some(512));
    t.launch(1).thread(1, 2);
    let (mut allocs, mut frees, mut bytes, mut leaked, mut leaked_bytes, mut temp) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut peak = 0;
    for i in 0..40_000u64 {
        let tid = if i % 3 == 0 { 2 } else { 1 };
        let addr = 0x10_0000 + i * 32;
        let size = i % 100 + 1;
        t.malloc(tid, addr, size, (i % 5) as u32 + 1);
        allocs += 1;
        bytes += size;
        peak = peak.max(leaked_bytes + size);
        if i % 7 == 0 {
            leaked += 1;
            leaked_bytes += size;
        } else {
            t.free(tid, addr, 9);
            frees += 1;
            temp += 1;
        }
    }
    t.exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(a.warning(), None);
    assert_eq!(a.records, 2 + 40_000 + frees + 1 + 1);
    let tot = &a.processes[0].image().totals;
    assert_eq!(tot.allocations, allocs);
    assert_eq!(tot.frees, frees);
    assert_eq!(tot.allocated_bytes, bytes);
    assert_eq!(tot.live_at_exit_blocks, leaked);
    assert_eq!(tot.live_at_exit_bytes, leaked_bytes);
    assert_eq!(tot.temporary_allocations, temp);
    assert_eq!(tot.peak_live_bytes, peak);
    assert_eq!(peak, leaked_bytes + 100);
    assert!(a.processes[0].image().findings.is_empty());
}

#[test]
fn malformed_stack_nodes_and_unknown_exits_are_warnings_not_failures() {
    let mut t = Trace::new(1);
    t.launch(1)
        .stack(1, 0, 0x10)
        .stack(1, 0, 0x20) // duplicate
        .stack(0, 0, 0x30) // the root
        .exit(5, ExitStatus::Code(0)) // never started
        .malloc(1, 0x10, 8, 1);
    t.rec(Record::ModuleUnload {
        ts: 1,
        pid: 1,
        base: 0,
        path: "/nope".into(),
    });
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(
        a.warning().as_deref(),
        Some(
            "2 stack node(s) were malformed and ignored; \
             1 exit record(s) named a process that was not running"
        )
    );
    assert_eq!(a.stack_frames(1), vec![0x10]);
    assert_eq!(a.processes[0].image().totals.allocations, 1);
}

#[test]
fn reused_pid_after_exit_is_a_new_process() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x10, 8, 1)
        .exit(1, ExitStatus::Code(0))
        .launch(1)
        .malloc(1, 0x20, 16, 1)
        .exit(1, ExitStatus::Code(3));
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(a.warning(), None);
    assert_eq!(a.processes.len(), 2);
    assert_eq!(a.processes[0].image().totals.live_at_exit_bytes, 8);
    assert_eq!(a.processes[1].image().totals.live_at_exit_bytes, 16);
    assert_eq!(a.process(1).unwrap().exit, Some(ExitStatus::Code(3)));
}

#[test]
fn end_record_counts_are_checked_and_later_records_ignored() {
    let mut t = Trace::new(1);
    t.launch(1).malloc(1, 0x10, 8, 1);
    t.rec(Record::End {
        ts: 5000,
        counts: heaptape_format::EndCounts {
            records: 99,
            alloc_events: 1,
            chunks: 0,
        },
    });
    t.malloc(1, 0x20, 8, 1);
    let (_d, path) = t.abandon();
    let a = run(&path);
    assert_eq!(
        a.warning().as_deref(),
        Some(
            "1 record(s) after the end record were ignored; the end record counts 99 \
             records and 1 allocator events, but 2 and 1 were read"
        )
    );
    assert!(a.truncation.is_none());
    assert_eq!(a.processes[0].image().totals.allocations, 1);
}
