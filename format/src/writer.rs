//! The append-only streaming writer.
//!
//! Records are encoded into the column streams of an in-memory chunk; when the chunk
//! reaches its target size (or on [`TraceWriter::flush`]) it is compressed, framed,
//! checksummed and written with one `write_all`. A chunk is therefore either entirely
//! in the file or not at all (short of a torn write, which the reader treats as
//! truncation), so a trace cut off by a crash or SIGKILL reads fine up to its last
//! complete chunk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::chunk::{ChunkInfo, CHUNK_HEADER_LEN, FLAG_ZSTD};
use crate::error::WriteError;
use crate::record::{EndCounts, Header, Record, Timestamp};
use crate::wire::Encoder;
use crate::{FORMAT_VERSION, MAGIC, MAX_CHUNK_BYTES, MAX_HEADER_BYTES, MAX_RECORD_BYTES};

/// Default uncompressed size at which a chunk is closed.
pub const DEFAULT_CHUNK_TARGET: usize = 1 << 20;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Largest accepted chunk target: a chunk below the target plus one maximal record
/// must stay within [`MAX_CHUNK_BYTES`].
const MAX_CHUNK_TARGET: usize = MAX_CHUNK_BYTES - MAX_RECORD_BYTES - 4096;

/// Writes a trace, chunk by chunk. See the module docs.
pub struct TraceWriter<W: Write> {
    out: Option<W>,
    enc: Encoder,
    first_ts: Option<u64>,
    last_ts: u64,
    counts: EndCounts,
    /// `counts` as of the last chunk written out (what the file holds).
    stored: EndCounts,
    bytes_written: u64,
    chunk_target: usize,
    compressor: zstd::bulk::Compressor<'static>,
    payload: Vec<u8>,
    compressed: Vec<u8>,
}

impl TraceWriter<File> {
    /// Creates (or truncates) `path` with mode 0600 and writes the header. An existing
    /// file keeps its mode, so callers that care should remove it first.
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
        if head.len() > MAX_HEADER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "trace header of {} bytes exceeds the {MAX_HEADER_BYTES} byte limit",
                    head.len()
                ),
            ));
        }
        let mut pre = Vec::with_capacity(20 + head.len());
        pre.extend_from_slice(&MAGIC);
        pre.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        pre.extend_from_slice(&(head.len() as u32).to_le_bytes());
        pre.extend_from_slice(&crc32c::crc32c(&head).to_le_bytes());
        pre.extend_from_slice(&head);
        out.write_all(&pre)?;
        Ok(TraceWriter {
            out: Some(out),
            enc: Encoder::new(),
            first_ts: None,
            last_ts: 0,
            counts: EndCounts::default(),
            stored: EndCounts::default(),
            bytes_written: pre.len() as u64,
            chunk_target: DEFAULT_CHUNK_TARGET,
            compressor: zstd::bulk::Compressor::new(DEFAULT_ZSTD_LEVEL)?,
            payload: Vec::new(),
            compressed: Vec::new(),
        })
    }

    /// Continues a trace on `out` after `counts` (the records and chunks already in the
    /// trace, which end `bytes_written` bytes into it): writes no preamble; the next
    /// chunk is chunk number `counts.chunks`. For [`crate::TraceAppender`].
    pub(crate) fn resume(out: W, counts: EndCounts, bytes_written: u64) -> io::Result<Self> {
        Ok(TraceWriter {
            out: Some(out),
            enc: Encoder::new(),
            first_ts: None,
            last_ts: 0,
            stored: counts.clone(),
            counts,
            bytes_written,
            chunk_target: DEFAULT_CHUNK_TARGET,
            compressor: zstd::bulk::Compressor::new(DEFAULT_ZSTD_LEVEL)?,
            payload: Vec::new(),
            compressed: Vec::new(),
        })
    }

    /// Sets the uncompressed size at which chunks are closed (clamped to the format's
    /// limits). Smaller chunks mean finer-grained parallel decoding and less data lost on
    /// a crash, at some cost in compression.
    pub fn with_chunk_target(mut self, bytes: usize) -> Self {
        self.chunk_target = bytes.clamp(1, MAX_CHUNK_TARGET);
        self
    }

    /// Changes the chunk target of a writer in use (see [`TraceWriter::with_chunk_target`]);
    /// the chunk being built closes when it reaches the new target.
    pub fn set_chunk_target(&mut self, bytes: usize) {
        self.chunk_target = bytes.clamp(1, MAX_CHUNK_TARGET);
    }

    /// Sets the zstd compression level.
    pub fn with_level(mut self, level: i32) -> io::Result<Self> {
        self.compressor = zstd::bulk::Compressor::new(level)?;
        Ok(self)
    }

    /// Appends one record. May write a chunk. A record that fails (too large) leaves
    /// the trace as it was; an I/O error closes the writer.
    ///
    /// [`Record::End`] is written by [`TraceWriter::finish`]; readers reject a trace
    /// with records after it.
    pub fn write(&mut self, rec: &Record) -> Result<(), WriteError> {
        if self.out.is_none() {
            return Err(WriteError::Closed);
        }
        self.enc
            .encode(rec, MAX_RECORD_BYTES)
            .map_err(WriteError::RecordTooLarge)?;
        if let Some(ts) = rec.timestamp() {
            self.first_ts.get_or_insert(ts);
            self.last_ts = ts;
        }
        self.counts.records += 1;
        if rec.is_alloc_event() {
            self.counts.alloc_events += 1;
        }
        if self.enc.len() >= self.chunk_target {
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
    /// The end record's counts cover every record before it, and `chunks` is the number
    /// of chunks before the one that holds the end record.
    pub fn finish(mut self, ts: Timestamp) -> Result<W, WriteError> {
        let counts = self.counts.clone();
        self.write(&Record::End { ts, counts })?;
        self.flush()?;
        self.out.take().ok_or(WriteError::Closed)
    }

    /// Bytes written to the underlying writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Counts of what was written so far (including the chunk being built).
    pub fn counts(&self) -> &EndCounts {
        &self.counts
    }

    /// Counts of what the file holds: the records of the chunks written out (after an
    /// I/O error, those before it).
    pub fn stored_counts(&self) -> &EndCounts {
        &self.stored
    }

    fn write_chunk(&mut self) -> Result<(), WriteError> {
        if self.enc.records() == 0 {
            return Ok(());
        }
        let Some(out) = self.out.as_mut() else {
            return Err(WriteError::Closed);
        };
        let record_count = self.enc.records();
        self.payload.clear();
        self.enc.finish_into(&mut self.payload);
        // Header space, then the payload, so the chunk goes out in one write.
        let cap = zstd::zstd_safe::compress_bound(self.payload.len());
        self.compressed.clear();
        self.compressed.resize(CHUNK_HEADER_LEN + cap, 0);
        let compressed_len = self
            .compressor
            .compress_to_buffer(&self.payload, &mut self.compressed[CHUNK_HEADER_LEN..]);
        let flags = match compressed_len {
            Ok(n) if n < self.payload.len() => {
                self.compressed.truncate(CHUNK_HEADER_LEN + n);
                FLAG_ZSTD
            }
            // Incompressible (or the compressor failed): store the payload as it is.
            _ => {
                self.compressed.truncate(CHUNK_HEADER_LEN);
                self.compressed.extend_from_slice(&self.payload);
                0
            }
        };
        let stored = &self.compressed[CHUNK_HEADER_LEN..];
        let info = ChunkInfo {
            seq: self.counts.chunks as u32,
            compressed_len: stored.len() as u32,
            uncompressed_len: self.payload.len() as u32,
            record_count,
            first_ts: self.first_ts.unwrap_or(0),
            last_ts: self.last_ts,
            flags,
            crc: crc32c::crc32c(stored),
        };
        self.compressed[..CHUNK_HEADER_LEN].copy_from_slice(&info.to_bytes());
        if let Err(e) = out.write_all(&self.compressed) {
            // The file may now hold a torn chunk; readers treat it as truncation.
            self.out = None;
            return Err(e.into());
        }
        self.bytes_written += self.compressed.len() as u64;
        self.counts.chunks += 1;
        self.stored = self.counts.clone();
        self.first_ts = None;
        Ok(())
    }
}
