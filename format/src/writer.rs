//! The append-only streaming writer.
//!
//! Records are delta-encoded into an in-memory chunk; when the chunk reaches its target
//! size (or on [`TraceWriter::flush`]) it is compressed, framed, checksummed and written
//! with one `write_all`. A chunk is therefore either entirely in the file or not at all
//! (short of a torn write, which the reader treats as truncation), so a trace cut off by
//! a crash or SIGKILL reads fine up to its last complete chunk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::chunk::{ChunkInfo, CHUNK_HEADER_LEN, FLAG_ZSTD};
use crate::error::WriteError;
use crate::record::{EndCounts, Header, Record, Timestamp};
use crate::wire::DeltaState;
use crate::{FORMAT_VERSION, MAGIC, MAX_RECORD_BYTES};

/// Default uncompressed size at which a chunk is closed.
pub const DEFAULT_CHUNK_TARGET: usize = 1 << 20;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Writes a trace, chunk by chunk. See the module docs.
pub struct TraceWriter<W: Write> {
    out: Option<W>,
    state: DeltaState,
    buf: Vec<u8>,
    records_in_chunk: u32,
    first_ts: Option<u64>,
    last_ts: u64,
    counts: EndCounts,
    bytes_written: u64,
    chunk_target: usize,
    compressor: zstd::bulk::Compressor<'static>,
    compressed: Vec<u8>,
}

impl TraceWriter<File> {
    /// Creates (or truncates) `path` with mode 0600 and writes the header.
    pub fn create(path: &Path, header: &Header) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        TraceWriter::new(file, header)
    }
}

impl<W: Write> TraceWriter<W> {
    /// Starts a trace on `out` by writing the magic, version and header.
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        let head = postcard::to_allocvec(header).map_err(io::Error::other)?;
        let mut pre = Vec::with_capacity(20 + head.len());
        pre.extend_from_slice(&MAGIC);
        pre.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        pre.extend_from_slice(&(head.len() as u32).to_le_bytes());
        pre.extend_from_slice(&crc32c::crc32c(&head).to_le_bytes());
        pre.extend_from_slice(&head);
        out.write_all(&pre)?;
        Ok(TraceWriter {
            out: Some(out),
            state: DeltaState::default(),
            buf: Vec::with_capacity(DEFAULT_CHUNK_TARGET + 4096),
            records_in_chunk: 0,
            first_ts: None,
            last_ts: 0,
            counts: EndCounts::default(),
            bytes_written: pre.len() as u64,
            chunk_target: DEFAULT_CHUNK_TARGET,
            compressor: zstd::bulk::Compressor::new(DEFAULT_ZSTD_LEVEL)?,
            compressed: Vec::new(),
        })
    }

    /// Sets the uncompressed size at which chunks are closed (clamped to the format's
    /// limits). Smaller chunks mean finer-grained parallel decoding and less data lost on
    /// a crash, at some cost in compression.
    pub fn with_chunk_target(mut self, bytes: usize) -> Self {
        self.chunk_target = bytes.clamp(1, MAX_RECORD_BYTES);
        self
    }

    /// Sets the zstd compression level.
    pub fn with_level(mut self, level: i32) -> io::Result<Self> {
        self.compressor = zstd::bulk::Compressor::new(level)?;
        Ok(self)
    }

    /// Appends one record. May write a chunk.
    pub fn write(&mut self, rec: &Record) -> Result<(), WriteError> {
        if self.out.is_none() {
            return Err(WriteError::Closed);
        }
        let before = self.buf.len();
        let wire = self.state.encode(rec);
        let buf = std::mem::take(&mut self.buf);
        self.buf = postcard::to_extend(&wire, buf).map_err(|e| WriteError::Io(io::Error::other(e)))?;
        let len = self.buf.len() - before;
        if len > MAX_RECORD_BYTES {
            self.buf.truncate(before);
            return Err(WriteError::RecordTooLarge(len));
        }
        if let Some(ts) = rec.timestamp() {
            self.first_ts.get_or_insert(ts);
            self.last_ts = ts;
        }
        self.records_in_chunk += 1;
        self.counts.records += 1;
        if rec.is_alloc_event() {
            self.counts.alloc_events += 1;
        }
        if self.buf.len() >= self.chunk_target {
            self.write_chunk()?;
        }
        Ok(())
    }

    /// Writes out the chunk being built (if any) and flushes the underlying writer.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.write_chunk()?;
        match self.out.as_mut() {
            Some(out) => Ok(out.flush()?),
            None => Err(WriteError::Closed),
        }
    }

    /// Writes the [`Record::End`] record, flushes, and returns the underlying writer.
    pub fn finish(mut self, ts: Timestamp) -> Result<W, WriteError> {
        let mut counts = self.counts.clone();
        counts.chunks = self.counts.chunks + u64::from(self.records_in_chunk > 0);
        self.write(&Record::End { ts, counts })?;
        self.flush()?;
        Ok(self.out.take().expect("checked by flush"))
    }

    /// Bytes written to the underlying writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Counts of what was written so far.
    pub fn counts(&self) -> &EndCounts {
        &self.counts
    }

    fn write_chunk(&mut self) -> Result<(), WriteError> {
        if self.records_in_chunk == 0 {
            return Ok(());
        }
        let Some(out) = self.out.as_mut() else {
            return Err(WriteError::Closed);
        };
        // Header space, then the compressed payload, so the chunk goes out in one write.
        let cap = zstd::zstd_safe::compress_bound(self.buf.len());
        self.compressed.clear();
        self.compressed.resize(CHUNK_HEADER_LEN + cap, 0);
        let payload_len = self
            .compressor
            .compress_to_buffer(&self.buf, &mut self.compressed[CHUNK_HEADER_LEN..])?;
        self.compressed.truncate(CHUNK_HEADER_LEN + payload_len);
        let mut info = ChunkInfo {
            compressed_len: payload_len as u32,
            uncompressed_len: self.buf.len() as u32,
            record_count: self.records_in_chunk,
            first_ts: self.first_ts.unwrap_or(0),
            last_ts: self.last_ts,
            flags: FLAG_ZSTD,
            crc: 0,
        };
        info.crc = info.compute_crc(&self.compressed[CHUNK_HEADER_LEN..]);
        self.compressed[..CHUNK_HEADER_LEN].copy_from_slice(&info.to_bytes());
        if let Err(e) = out.write_all(&self.compressed) {
            // The file may now hold a torn chunk; readers treat it as truncation.
            self.out = None;
            return Err(e.into());
        }
        self.bytes_written += self.compressed.len() as u64;
        self.counts.chunks += 1;
        self.buf.clear();
        self.records_in_chunk = 0;
        self.first_ts = None;
        self.state = DeltaState::default();
        Ok(())
    }
}
