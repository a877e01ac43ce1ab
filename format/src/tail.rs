//! A finished trace's tail: appending records before its [`Record::End`] record
//! ([`TraceAppender`]), and reading the [`Record::Symbols`] records at its end without
//! reading the rest ([`trailing_symbols`]).
//!
//! Both find the chunks by their framing alone: each chunk header is read and checked
//! (magic, checksum, bounds, sequence number) and the reader seeks over its payload, so
//! a trace of any length costs one small read per chunk. Only the last chunks are
//! decompressed and decoded.
//!
//! Appending rewrites the trace's last chunk: its records but the end record are
//! encoded again into a chunk of their own, the new records follow in chunks of their
//! own, then a new end record whose counts cover them all. That tail is built in memory
//! and written over the old last chunk, the part beyond the old end of the file first:
//! a full disk fails that first write and the trace is left as it was; only a machine
//! that stops between the two writes leaves a damaged trace (the reader then reports
//! the damage at the last chunk's offset, every earlier chunk intact).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::chunk::{ChunkInfo, RawChunk, CHUNK_HEADER_LEN};
use crate::error::{ReadError, WriteError};
use crate::reader::TraceReader;
use crate::record::{EndCounts, ModuleSymbols, Record, Timestamp};
use crate::writer::TraceWriter;
use crate::FORMAT_VERSION;

/// Why records could not be appended to a trace.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The trace could not be read, or is damaged.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The new tail could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The trace cannot take more records: it is incomplete (no end record: nothing can
    /// follow a cut-off trace without hiding the cut) or of an older format version.
    #[error("{0}")]
    Refused(String),
}

/// Where a chunk is and what its header says.
struct Span {
    offset: u64,
    info: ChunkInfo,
}

/// The chunks of `file` from `start` (the end of the preamble): their headers, checked,
/// and whether the last one ends exactly at the end of the file (`false`: the file is
/// cut inside a chunk, which is left out).
fn scan(file: &File, start: u64) -> Result<(Vec<Span>, bool), ReadError> {
    let len = file.metadata()?.len();
    let mut spans = Vec::new();
    let mut offset = start;
    while offset < len {
        if len - offset < CHUNK_HEADER_LEN as u64 {
            return Ok((spans, false));
        }
        let mut head = [0u8; CHUNK_HEADER_LEN];
        file.read_exact_at(&mut head, offset)?;
        let info = ChunkInfo::parse(&head, offset)?;
        if u64::from(info.seq) != spans.len() as u64 {
            return Err(ReadError::corrupt(
                offset,
                format!(
                    "chunk number {} found where chunk number {} belongs",
                    info.seq,
                    spans.len()
                ),
            ));
        }
        let end = offset + CHUNK_HEADER_LEN as u64 + u64::from(info.compressed_len);
        if end > len {
            return Ok((spans, false));
        }
        spans.push(Span { offset, info });
        offset = end;
    }
    Ok((spans, true))
}

/// Reads the chunk at `span` and checks its payload's checksum.
fn load(file: &File, span: &Span) -> Result<RawChunk, ReadError> {
    let mut payload = vec![0u8; span.info.compressed_len as usize];
    file.read_exact_at(&mut payload, span.offset + CHUNK_HEADER_LEN as u64)?;
    if crc32c::crc32c(&payload) != span.info.crc {
        return Err(ReadError::corrupt(
            span.offset + CHUNK_HEADER_LEN as u64,
            "chunk payload checksum mismatch",
        ));
    }
    Ok(RawChunk {
        offset: span.offset,
        info: span.info,
        payload,
    })
}

/// The [`Record::Symbols`] records at the end of the trace at `path`, in file order:
/// those of the last chunks whose first record is a `Symbols` record (the writer puts
/// them in chunks of their own, after every other record; the end record may share the
/// last of them or have a chunk of its own). Empty when there are none
/// (a trace recorded with `--no-symbolize`, or of format version 2). A trace cut short
/// gives the symbols of its complete chunks. Reads the framing of every chunk and
/// decodes only those last chunks; a damaged framing or chunk is an error (the
/// sequential reader reports the same damage).
pub fn trailing_symbols(path: &Path) -> Result<Vec<ModuleSymbols>, ReadError> {
    let file = File::open(path)?;
    let start = TraceReader::new(&file)?.offset();
    let (spans, _) = scan(&file, start)?;
    let mut chunks: Vec<Vec<ModuleSymbols>> = Vec::new();
    for span in spans.iter().rev() {
        let mut records = load(&file, span)?.decode()?;
        if matches!(records.last(), Some(Record::End { .. })) {
            records.pop();
            if records.is_empty() {
                // The end record alone in the last chunk.
                continue;
            }
        }
        if !matches!(records.first(), Some(Record::Symbols(_))) {
            break;
        }
        chunks.push(
            records
                .into_iter()
                .filter_map(|r| match r {
                    Record::Symbols(s) => Some(*s),
                    _ => None,
                })
                .collect(),
        );
    }
    Ok(chunks.into_iter().rev().flatten().collect())
}

/// Appends records to a complete trace, before its end record (see the module docs):
/// [`TraceAppender::open`], [`TraceAppender::write`] each record, then
/// [`TraceAppender::finish`]. Nothing changes in the file before `finish`.
pub struct TraceAppender {
    file: File,
    /// Where the old last chunk starts: the new tail is written there.
    at: u64,
    /// The new tail, from `at`.
    writer: TraceWriter<Vec<u8>>,
    /// The old end record's timestamp, kept by the new one.
    end_ts: Timestamp,
}

impl TraceAppender {
    /// Opens the complete trace at `path` (of this crate's format version) for
    /// appending. Fails on a trace without an end record, on one of an older version,
    /// and on any damage found in its framing or its last chunk.
    pub fn open(path: &Path) -> Result<TraceAppender, AppendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(ReadError::from)?;
        let reader = TraceReader::new(&file)?;
        if reader.version() != FORMAT_VERSION {
            return Err(AppendError::Refused(format!(
                "the trace is in format version {}; only version {FORMAT_VERSION} traces take new records",
                reader.version()
            )));
        }
        let (spans, whole) = scan(&file, reader.offset())?;
        let incomplete = || {
            AppendError::Refused(
                "the trace has no end record (the recorder did not finish); nothing can be appended to it"
                    .into(),
            )
        };
        let Some(last) = spans.last().filter(|_| whole) else {
            return Err(incomplete());
        };
        let mut records = load(&file, last)?.decode()?;
        let Some(Record::End { ts: end_ts, counts }) = records.pop() else {
            return Err(incomplete());
        };
        let kept_events = records.iter().filter(|r| r.is_alloc_event()).count() as u64;
        let before = EndCounts {
            records: counts
                .records
                .checked_sub(records.len() as u64)
                .ok_or_else(|| {
                    ReadError::corrupt(
                        last.offset,
                        "end record counts fewer records than its chunk holds",
                    )
                })?,
            alloc_events: counts
                .alloc_events
                .checked_sub(kept_events)
                .ok_or_else(|| {
                    ReadError::corrupt(
                        last.offset,
                        "end record counts fewer allocator events than its chunk holds",
                    )
                })?,
            chunks: counts.chunks,
        };
        if before.chunks != u64::from(last.info.seq) {
            return Err(ReadError::corrupt(
                last.offset,
                format!(
                    "end record counts {} chunks before its own, which is chunk number {}",
                    before.chunks, last.info.seq
                ),
            )
            .into());
        }
        let mut writer =
            TraceWriter::resume(Vec::new(), before, last.offset).map_err(WriteError::from)?;
        for rec in &records {
            writer.write(rec)?;
        }
        // The new records start a chunk of their own.
        writer.flush()?;
        Ok(TraceAppender {
            file,
            at: last.offset,
            writer,
            end_ts,
        })
    }

    /// Appends one record (kept in memory until [`TraceAppender::finish`]).
    pub fn write(&mut self, rec: &Record) -> Result<(), WriteError> {
        self.writer.write(rec)
    }

    /// Closes the chunk being built: the next record starts a new one.
    pub fn end_chunk(&mut self) -> Result<(), WriteError> {
        self.writer.flush()
    }

    /// Writes the new tail (the old last chunk's records, the appended ones, a new end
    /// record with the old one's timestamp) over the old last chunk. Returns the
    /// trace's new length in bytes.
    ///
    /// The part of the tail that extends the file is written first, so that a full disk
    /// fails before anything the trace holds is overwritten: the file is then cut back
    /// to its old length and the trace is as it was.
    pub fn finish(self) -> Result<u64, AppendError> {
        let tail = self.writer.finish(self.end_ts)?;
        let end = self.at + tail.len() as u64;
        let old_len = self.file.metadata().map_err(WriteError::from)?.len();
        let kept = usize::try_from(old_len.saturating_sub(self.at)).unwrap_or(usize::MAX);
        let result = if tail.len() > kept {
            let (over, beyond) = tail.split_at(kept);
            match self.file.write_all_at(beyond, old_len) {
                Ok(()) => self.file.write_all_at(over, self.at),
                Err(e) => {
                    let _ = self.file.set_len(old_len);
                    Err(e)
                }
            }
        } else {
            self.file
                .write_all_at(&tail, self.at)
                .and_then(|()| self.file.set_len(end))
        };
        result.map_err(WriteError::from)?;
        Ok(end)
    }
}
