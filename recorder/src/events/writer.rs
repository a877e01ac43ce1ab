//! The writer thread: takes records from the tracer and writes the trace.
//!
//! The tracer must never wait for the disk, and waking another thread costs a cross-CPU
//! wake-up (~100 µs on these VMs) — more than a whole allocator event. So the tracer only
//! appends to a mutex-protected vector (an uncontended lock), and the writer wakes on its
//! own timer to take the whole vector, encode it and flush a chunk at least every second.
//! It is woken early only when the backlog grows large.
//!
//! Buffers travel whole, never copied: the tracer hands over its filled vector and takes
//! an emptied one back (they keep their capacity). Appending each batch to one queue
//! vector instead made it grow by `realloc` every writer tick, and the fresh pages'
//! faults were 8% of the recorder's time on cc1plus.
//!
//! If writing fails (a full disk), the writer keeps the error, drops further records, and
//! the recorder reports the error at the end; the traced program is not disturbed.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use heaptape_format::{EndCounts, Record, TraceWriter, WriteError};

use crate::StackReferences;

const WAKE_BACKLOG: usize = 1 << 16;
const TICK: Duration = Duration::from_millis(200);
const FLUSH_EVERY: Duration = Duration::from_millis(900);
/// Uncompressed size of the first chunk (later ones use the format's default).
const FIRST_CHUNK_TARGET: usize = 64 * 1024;
/// How much nicer the writer thread is than the tracer.
const WRITER_NICE: i32 = 5;
/// Emptied buffers kept for the tracer.
const SPARE_BUFFERS: usize = 1024;

#[derive(Default)]
struct Shared {
    /// Filled buffers, oldest first.
    queue: VecDeque<Vec<Record>>,
    /// Records in `queue`.
    queued: usize,
    /// Emptied buffers for the tracer to fill again.
    spare: Vec<Vec<Record>>,
    closing: Option<u64>,
}

/// The tracer's handle on the writer thread.
pub struct WriterThread {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<JoinHandle<WriterResult>>,
    local: Vec<Record>,
}

/// What the writer thread ends with.
pub struct WriterResult {
    /// Bytes in the file.
    pub bytes: u64,
    /// What was written.
    pub counts: EndCounts,
    /// What the file holds (less than `counts` after a write error).
    pub stored: EndCounts,
    /// The first write error, if any (the trace ends before it).
    pub error: Option<WriteError>,
    /// CPU time the writer thread used (encoding, compression, writes), nanoseconds.
    pub cpu_ns: u64,
    /// The stack addresses and module loads written.
    pub references: StackReferences,
}

impl WriterThread {
    /// Starts the writer thread on an opened trace writer.
    /// The thread may run on `cpus`.
    pub fn start(writer: TraceWriter<File>, cpus: Vec<usize>) -> WriterThread {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("heaptape-writer".into())
            .spawn(move || {
                crate::sys::block_tracer_signals();
                let _ = crate::sys::pin_current_thread(&cpus);
                // Behind the program and the tracer when the CPUs are all busy (its work
                // can wait for a gap), but not starved: nice 5 still gets a quarter of a
                // CPU against one busy thread, more than it needs.
                let _ = crate::sys::lower_thread_priority(WRITER_NICE);
                writer_loop(writer, s2)
            })
            .expect("spawn writer thread");
        WriterThread {
            shared,
            thread: Some(thread),
            local: Vec::with_capacity(1024),
        }
    }

    /// A buffer to push records into; handed over by [`WriterThread::publish`].
    #[inline]
    pub fn buf(&mut self) -> &mut Vec<Record> {
        &mut self.local
    }

    /// Hands the buffered records to the writer thread (cheap; call after each stop).
    pub fn publish(&mut self) {
        if self.local.is_empty() {
            return;
        }
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        let next = s
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.local.len()));
        s.queued += self.local.len();
        let full = std::mem::replace(&mut self.local, next);
        s.queue.push_back(full);
        if s.queued >= WAKE_BACKLOG {
            cv.notify_one();
        }
    }

    /// Flushes everything, writes the end record stamped `end_ts`, and joins the thread.
    pub fn finish(mut self, end_ts: u64) -> WriterResult {
        self.publish();
        {
            let (lock, cv) = &*self.shared;
            let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
            s.closing = Some(end_ts);
            cv.notify_one();
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => WriterResult {
                bytes: 0,
                counts: EndCounts::default(),
                stored: EndCounts::default(),
                error: Some(WriteError::Closed),
                cpu_ns: 0,
                references: StackReferences::default(),
            },
        }
    }
}

fn writer_loop(
    mut writer: TraceWriter<File>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
) -> WriterResult {
    let (lock, cv) = &*shared;
    let mut batches: Vec<Vec<Record>> = Vec::new();
    let mut last_flush = Instant::now();
    let mut error: Option<WriteError> = None;
    let mut references = StackReferences::default();
    // A small first chunk, so that the start of a trace (header, process, modules, the
    // first events) is on disk early and fits even on a nearly full disk, however fast
    // the program allocates; then the default size.
    let header_bytes = writer.bytes_written();
    let mut first_chunk = true;
    writer.set_chunk_target(FIRST_CHUNK_TARGET);
    loop {
        let closing = {
            let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
            if s.queue.is_empty() && s.closing.is_none() {
                s = cv
                    .wait_timeout(s, TICK)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            // Emptied buffers go back (at most a few: the rest are freed).
            while let Some(mut b) = batches.pop() {
                if s.spare.len() < SPARE_BUFFERS {
                    b.clear();
                    s.spare.push(b);
                }
            }
            batches.extend(s.queue.drain(..));
            s.queued = 0;
            s.closing
        };
        if error.is_none() {
            'write: for batch in &batches {
                for rec in batch {
                    if let Err(e) = writer.write(rec) {
                        error = Some(e);
                        break 'write;
                    }
                    references.note(rec);
                }
            }
            if first_chunk && writer.bytes_written() > header_bytes {
                writer.set_chunk_target(heaptape_format::DEFAULT_CHUNK_TARGET);
                first_chunk = false;
            }
            if error.is_none() && (closing.is_some() || last_flush.elapsed() >= FLUSH_EVERY) {
                if let Err(e) = writer.flush() {
                    error = Some(e);
                }
                last_flush = Instant::now();
            }
        }
        if let Some(ts) = closing {
            let bytes_before = writer.bytes_written();
            let counts = writer.counts().clone();
            let stored = writer.stored_counts().clone();
            if error.is_some() {
                return WriterResult {
                    bytes: bytes_before,
                    stored,
                    counts,
                    error,
                    cpu_ns: crate::sys::thread_cpu_ns(),
                    references,
                };
            }
            return match writer.finish(ts) {
                Ok(file) => {
                    // No fsync: the page cache outlives the recorder (perf and heaptrack
                    // do not sync either), and a sync cost 1-5 ms at every recording.
                    let bytes = file.metadata().map(|m| m.len()).unwrap_or(bytes_before);
                    WriterResult {
                        bytes,
                        stored: counts.clone(),
                        counts,
                        error: None,
                        cpu_ns: crate::sys::thread_cpu_ns(),
                        references,
                    }
                }
                Err(e) => WriterResult {
                    bytes: bytes_before,
                    counts,
                    stored,
                    error: Some(e),
                    cpu_ns: crate::sys::thread_cpu_ns(),
                    references,
                },
            };
        }
    }
}
