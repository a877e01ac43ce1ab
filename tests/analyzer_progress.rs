//! The analyzer's progress bar is for terminals only: with stderr redirected (a pipe
//! here, as in CI logs and scripts) the CLI writes nothing to stderr, even when the bar
//! would otherwise show at once.

mod common;

use common::*;
use heaptape_format::{AllocFn, ClockSource, Header, ProcessOrigin, Record, TraceWriter};

fn write_trace(path: &std::path::Path, pairs: u64) {
    let header = Header {
        tool_version: "test".into(),
        command: vec!["./churn".into()],
        pid: 100,
        start_time_unix_ns: 0,
        host: "test".into(),
        kernel: "test".into(),
        page_size: 4096,
        pointer_size: 8,
        clock: ClockSource::Synthetic,
    };
    let file = std::fs::File::create(path).unwrap();
    let mut w = TraceWriter::new(std::io::BufWriter::new(file), &header).unwrap();
    let mut ts = 1_000;
    w.write(&Record::ProcessStart {
        ts,
        pid: 100,
        parent_pid: None,
        origin: ProcessOrigin::Launched,
        command: vec!["./churn".into()],
    })
    .unwrap();
    w.write(&Record::StackNode {
        id: 1,
        parent: 0,
        address: 0x40_1000,
    })
    .unwrap();
    for i in 0..pairs {
        ts += 100;
        let address = 0x1000_0000 + (i % 1000) * 64;
        w.write(&Record::Alloc {
            ts,
            tid: 100,
            func: AllocFn::Malloc,
            address,
            size: 32,
            align: 0,
            stack: 1,
        })
        .unwrap();
        w.write(&Record::Free {
            ts,
            tid: 100,
            func: AllocFn::Free,
            address,
            stack: 1,
        })
        .unwrap();
    }
    w.finish(ts).unwrap();
}

#[test]
fn no_progress_output_when_stderr_is_not_a_terminal() {
    let dir = TestDir::new("progress");
    let trace = dir.join("churn.trace");
    write_trace(&trace, 200_000);
    for json in [true, false] {
        let mut cmd = heaptape();
        cmd.arg("analyze").arg("--no-symbols");
        if json {
            cmd.arg("--json");
        }
        // No delay: a bar would be drawn at the first chunk if stderr were a terminal.
        let out = run(cmd.arg(&trace).env("HEAPTAPE_PROGRESS_DELAY_MS", "0"));
        assert!(out.status.success(), "{out:?}");
        assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
        assert!(!out.stdout.is_empty());
        if json {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(v.is_object());
        }
    }
}
