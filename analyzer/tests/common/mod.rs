//! Builds synthetic traces with the real writer, for the analyzer's tests.

#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;

use heaptape_analyzer::{analyze, Analysis, AnalyzeOptions};
use heaptape_format::{
    AllocFn, ClockSource, ExitStatus, Header, Pointer, ProcessOrigin, Record, RootKind,
    SnapshotRoot, StackId, TraceWriter,
};
use tempfile::TempDir;

/// Consecutive pointer-sized words, from offset 0, pointing at `targets`.
pub fn ptrs(targets: &[u64]) -> Vec<Pointer> {
    targets
        .iter()
        .enumerate()
        .map(|(i, &target)| Pointer {
            offset: i as u64 * 8,
            target,
        })
        .collect()
}

/// A trace being written; every record gets a timestamp 1000 ns after the previous.
pub struct Trace {
    pub dir: TempDir,
    pub path: PathBuf,
    pub w: TraceWriter<File>,
    pub ts: u64,
}

pub fn header(pid: u32) -> Header {
    Header {
        tool_version: "heaptape 0.1.0".into(),
        command: vec!["./app".into()],
        pid,
        start_time_unix_ns: 1_700_000_000_000_000_000,
        host: "testhost".into(),
        kernel: "6.1.0".into(),
        page_size: 4096,
        pointer_size: 8,
        clock: ClockSource::Synthetic,
    }
}

impl Trace {
    /// A trace whose header names `pid`, with the writer's default chunking.
    pub fn new(pid: u32) -> Self {
        Self::with_chunk_target(pid, None)
    }

    /// A trace closing a chunk every `target` bytes (1: one record per chunk).
    pub fn with_chunk_target(pid: u32, target: Option<usize>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.trace");
        let mut w = TraceWriter::create(&path, &header(pid)).unwrap();
        if let Some(t) = target {
            w = w.with_chunk_target(t);
        }
        Trace {
            dir,
            path,
            w,
            ts: 0,
        }
    }

    fn next_ts(&mut self) -> u64 {
        self.ts += 1000;
        self.ts
    }

    pub fn rec(&mut self, r: Record) -> &mut Self {
        self.w.write(&r).unwrap();
        self
    }

    /// A snapshot root region of `pid` whose consecutive words point at `targets`.
    pub fn root(
        &mut self,
        pid: u32,
        kind: RootKind,
        start: u64,
        len: u64,
        targets: &[u64],
    ) -> &mut Self {
        self.rec(Record::SnapshotRoot(Box::new(SnapshotRoot {
            pid,
            kind,
            start,
            len,
            pointers: ptrs(targets),
        })))
    }

    pub fn start(
        &mut self,
        pid: u32,
        parent: Option<u32>,
        origin: ProcessOrigin,
        cmd: &str,
    ) -> &mut Self {
        let ts = self.next_ts();
        self.rec(Record::ProcessStart {
            ts,
            pid,
            parent_pid: parent,
            origin,
            command: cmd.split(' ').map(String::from).collect(),
        })
    }

    pub fn launch(&mut self, pid: u32) -> &mut Self {
        self.start(pid, None, ProcessOrigin::Launched, "./app")
    }

    pub fn exit(&mut self, pid: u32, status: ExitStatus) -> &mut Self {
        let ts = self.next_ts();
        self.rec(Record::ProcessExit { ts, pid, status })
    }

    pub fn exec(&mut self, pid: u32, cmd: &str) -> &mut Self {
        let ts = self.next_ts();
        self.rec(Record::Exec {
            ts,
            pid,
            command: cmd.split(' ').map(String::from).collect(),
        })
    }

    pub fn thread(&mut self, pid: u32, tid: u32) -> &mut Self {
        let ts = self.next_ts();
        self.rec(Record::ThreadStart { ts, pid, tid })
    }

    pub fn thread_exit(&mut self, tid: u32) -> &mut Self {
        let ts = self.next_ts();
        self.rec(Record::ThreadExit { ts, tid })
    }

    pub fn stack(&mut self, id: StackId, parent: StackId, address: u64) -> &mut Self {
        self.rec(Record::StackNode {
            id,
            parent,
            address,
        })
    }

    pub fn alloc_fn(
        &mut self,
        tid: u32,
        func: AllocFn,
        address: u64,
        size: u64,
        stack: StackId,
    ) -> &mut Self {
        let ts = self.next_ts();
        self.rec(Record::Alloc {
            ts,
            tid,
            func,
            address,
            size,
            align: 0,
            stack,
        })
    }

    pub fn malloc(&mut self, tid: u32, address: u64, size: u64, stack: StackId) -> &mut Self {
        self.alloc_fn(tid, AllocFn::Malloc, address, size, stack)
    }

    pub fn free_fn(&mut self, tid: u32, func: AllocFn, address: u64, stack: StackId) -> &mut Self {
        let ts = self.next_ts();
        self.rec(Record::Free {
            ts,
            tid,
            func,
            address,
            stack,
        })
    }

    pub fn free(&mut self, tid: u32, address: u64, stack: StackId) -> &mut Self {
        self.free_fn(tid, AllocFn::Free, address, stack)
    }

    pub fn realloc(
        &mut self,
        tid: u32,
        old: u64,
        new: u64,
        size: u64,
        stack: StackId,
    ) -> &mut Self {
        let ts = self.next_ts();
        self.rec(Record::Realloc {
            ts,
            tid,
            func: AllocFn::Realloc,
            old_address: old,
            new_address: new,
            size,
            stack,
        })
    }

    /// Writes the end record and returns the trace's location.
    pub fn finish(self) -> (TempDir, PathBuf) {
        let ts = self.ts + 1000;
        self.w.finish(ts).unwrap();
        (self.dir, self.path)
    }

    /// Flushes without an end record, as a killed recorder would leave it.
    pub fn abandon(mut self) -> (TempDir, PathBuf) {
        self.w.flush().unwrap();
        drop(self.w);
        (self.dir, self.path)
    }
}

pub fn run(path: &std::path::Path) -> Analysis {
    analyze(path, &AnalyzeOptions::default()).unwrap()
}
