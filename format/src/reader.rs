//! Reading traces: sequentially, record by record, or chunk by chunk for parallel
//! decoding.
//!
//! The reader never trusts a length it has not bounded: the header and every chunk are
//! checked against the format's limits before anything is allocated, and every chunk's
//! CRC32C is verified before its payload is decompressed.
//!
//! A file that simply stops (the recorder was killed, the disk filled) is not an error:
//! the reader yields every complete chunk and then reports a [`Truncation`]. A trace is
//! complete when its last record is [`Record::End`].

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use rayon::prelude::*;

use crate::chunk::{ChunkInfo, RawChunk, CHUNK_HEADER_LEN};
use crate::error::ReadError;
use crate::record::{EndCounts, Header, Record};
use crate::{FORMAT_VERSION, MAGIC, MAX_HEADER_BYTES, OLDEST_READ_VERSION};

/// Where and why a trace stops short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Byte offset where the readable data ends.
    pub offset: u64,
    /// What was found there.
    pub reason: String,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trace is truncated at byte offset {} ({}); everything before it was read",
            self.offset, self.reason
        )
    }
}

/// Reads a trace from any byte stream.
pub struct TraceReader<R: Read> {
    src: R,
    version: u32,
    header: Header,
    offset: u64,
    truncation: Option<Truncation>,
    done: bool,
    chunks: u64,
    /// Payload buffers given back by [`TraceReader::recycle`].
    spare: Vec<Vec<u8>>,
}

/// Most payload buffers a reader keeps for reuse.
const SPARE_PAYLOADS: usize = 32;

impl TraceReader<BufReader<File>> {
    /// Opens a trace file and reads its header.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let file = File::open(path)?;
        TraceReader::new(BufReader::with_capacity(1 << 20, file))
    }
}

/// Reads as many bytes as are there, up to `buf.len()`. Returns how many were read.
fn read_full<R: Read>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> TraceReader<R> {
    /// Reads and checks the magic, version and header.
    pub fn new(mut src: R) -> Result<Self, ReadError> {
        let mut pre = [0u8; 20];
        let n = read_full(&mut src, &mut pre)?;
        if n < MAGIC.len() || pre[..MAGIC.len()] != MAGIC {
            if n < MAGIC.len() && MAGIC.starts_with(&pre[..n]) {
                return Err(ReadError::TruncatedHeader { offset: n as u64 });
            }
            return Err(ReadError::BadMagic);
        }
        if n < 12 {
            return Err(ReadError::TruncatedHeader { offset: n as u64 });
        }
        let version = u32::from_le_bytes(pre[8..12].try_into().unwrap());
        if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ReadError::UnsupportedVersion {
                found: version,
                oldest: OLDEST_READ_VERSION,
                newest: FORMAT_VERSION,
            });
        }
        if n < 20 {
            return Err(ReadError::TruncatedHeader { offset: n as u64 });
        }
        let len = u32::from_le_bytes(pre[12..16].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(pre[16..20].try_into().unwrap());
        if len > MAX_HEADER_BYTES {
            return Err(ReadError::corrupt(
                12,
                format!("header length {len} is over the {MAX_HEADER_BYTES} byte limit"),
            ));
        }
        let mut head = vec![0u8; len];
        let got = read_full(&mut src, &mut head)?;
        if got < len {
            return Err(ReadError::TruncatedHeader {
                offset: 20 + got as u64,
            });
        }
        if crc32c::crc32c(&head) != crc {
            // Offset 12: the damage may be in the length field as well as in the header.
            return Err(ReadError::corrupt(12, "header checksum mismatch"));
        }
        let header: Header = postcard::from_bytes(&head)
            .map_err(|e| ReadError::corrupt(12, format!("header does not decode: {e}")))?;
        Ok(TraceReader {
            src,
            version,
            header,
            offset: 20 + len as u64,
            truncation: None,
            done: false,
            chunks: 0,
            spare: Vec::new(),
        })
    }

    /// The trace's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The trace's format version (from [`OLDEST_READ_VERSION`] to [`FORMAT_VERSION`]).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Byte offset of the next unread chunk.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Set once the reader found the file cut off (it then yields nothing more).
    pub fn truncation(&self) -> Option<&Truncation> {
        self.truncation.as_ref()
    }

    /// Chunks returned by [`TraceReader::next_chunk`] so far.
    pub fn chunks_read(&self) -> u64 {
        self.chunks
    }

    /// Reads the next chunk's framing and payload and verifies its checksums and its
    /// sequence number (so a missing, repeated or moved chunk is an error).
    /// `Ok(None)` at the end of the file, or when the file is cut off inside a chunk
    /// (see [`TraceReader::truncation`]). After an error it returns `Ok(None)`.
    pub fn next_chunk(&mut self) -> Result<Option<RawChunk>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let offset = self.offset;
        let mut head = [0u8; CHUNK_HEADER_LEN];
        let n = read_full(&mut self.src, &mut head)?;
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        if n < CHUNK_HEADER_LEN {
            return Ok(self.truncated(offset, "file ends inside a chunk header"));
        }
        let info = match ChunkInfo::parse(&head, offset) {
            Ok(info) => info,
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        // Into a buffer given back if there is one: a fresh one per chunk is a fresh
        // mapping whose pages fault in while the kernel copies the file into it (0.5 s
        // of a 276 MB trace's analysis). `read_to_end` fills its spare capacity without
        // zeroing it first. The length was checked against the format's bound.
        let len = info.compressed_len as usize;
        let mut payload = self.spare.pop().unwrap_or_default();
        payload.clear();
        payload.reserve_exact(len);
        let got = (&mut self.src).take(len as u64).read_to_end(&mut payload)?;
        if got < len {
            return Ok(self.truncated(offset, "file ends inside a chunk"));
        }
        if crc32c::crc32c(&payload) != info.crc {
            self.done = true;
            return Err(ReadError::corrupt(
                offset + CHUNK_HEADER_LEN as u64,
                "chunk payload checksum mismatch",
            ));
        }
        if u64::from(info.seq) != self.chunks {
            self.done = true;
            return Err(ReadError::corrupt(
                offset,
                format!(
                    "chunk number {} found where chunk number {} belongs (chunks are missing, repeated or out of order)",
                    info.seq, self.chunks
                ),
            ));
        }
        self.chunks += 1;
        self.offset += (CHUNK_HEADER_LEN + payload.len()) as u64;
        Ok(Some(RawChunk {
            offset,
            info,
            payload,
        }))
    }

    /// Gives a chunk's payload buffer back, for the chunks read next (see
    /// [`TraceReader::next_chunk`]); a reader keeps a few.
    pub fn recycle(&mut self, chunk: RawChunk) {
        if self.spare.len() < SPARE_PAYLOADS {
            self.spare.push(chunk.payload);
        }
    }

    fn truncated(&mut self, offset: u64, reason: &str) -> Option<RawChunk> {
        self.done = true;
        self.truncation = Some(Truncation {
            offset,
            reason: reason.to_string(),
        });
        None
    }

    /// Iterates over every record in order, decoding chunk by chunk.
    pub fn records(self) -> Records<R> {
        Records {
            reader: self,
            buf: Vec::new().into_iter(),
            chunk_offset: 0,
            records: 0,
            alloc_events: 0,
            seen_end: false,
            failed: false,
        }
    }

    /// Reads up to `max` chunks and decodes them in parallel (rayon), returning their
    /// records in file order. An empty vector means the end of the trace.
    pub fn next_batch_parallel(&mut self, max: usize) -> Result<Vec<Vec<Record>>, ReadError> {
        let mut raws = Vec::with_capacity(max);
        while raws.len() < max {
            match self.next_chunk()? {
                Some(raw) => raws.push(raw),
                None => break,
            }
        }
        decode_parallel(&raws)
    }
}

/// Decodes chunks in parallel, keeping their order.
pub fn decode_parallel(chunks: &[RawChunk]) -> Result<Vec<Vec<Record>>, ReadError> {
    chunks.par_iter().map(RawChunk::decode).collect()
}

/// Iterator over a trace's records (see [`TraceReader::records`]).
///
/// Besides decoding, it checks the trace's completeness rules: the [`Record::End`]
/// record must be the last record of the file, and its counts must match what was read.
pub struct Records<R: Read> {
    reader: TraceReader<R>,
    buf: std::vec::IntoIter<Record>,
    /// Offset of the chunk whose records are in `buf`.
    chunk_offset: u64,
    /// Records (all kinds) and allocator events yielded so far.
    records: u64,
    alloc_events: u64,
    seen_end: bool,
    failed: bool,
}

impl<R: Read> Records<R> {
    /// The trace's header.
    pub fn header(&self) -> &Header {
        self.reader.header()
    }

    /// After iteration: where the trace stops short, if it does. A trace that reads to
    /// the end of its file without an [`Record::End`] record is truncated too.
    pub fn truncation(&self) -> Option<Truncation> {
        if let Some(t) = self.reader.truncation() {
            return Some(t.clone());
        }
        if !self.seen_end && !self.failed {
            return Some(Truncation {
                offset: self.reader.offset(),
                reason: "no end record; the recorder did not finish".into(),
            });
        }
        None
    }

    /// Whether the end record was read.
    pub fn is_complete(&self) -> bool {
        self.seen_end
    }

    fn fail(&mut self, e: ReadError) -> Option<Result<Record, ReadError>> {
        self.failed = true;
        self.buf = Vec::new().into_iter();
        Some(Err(e))
    }

    /// Checks an end record against what was read before it.
    fn check_end(&self, counts: &EndCounts) -> Result<(), ReadError> {
        let chunk = self.reader.chunks_read().saturating_sub(1);
        if counts.records != self.records
            || counts.alloc_events != self.alloc_events
            || counts.chunks != chunk
        {
            return Err(ReadError::corrupt(
                self.chunk_offset,
                format!(
                    "end record counts ({} records, {} allocator events, {} chunks) do not match the trace ({} records, {} allocator events, {} chunks)",
                    counts.records,
                    counts.alloc_events,
                    counts.chunks,
                    self.records,
                    self.alloc_events,
                    chunk
                ),
            ));
        }
        if self.buf.len() != 0 {
            return Err(ReadError::corrupt(
                self.chunk_offset,
                format!("{} records follow the end record", self.buf.len()),
            ));
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(rec) = self.buf.next() {
                if let Record::End { counts, .. } = &rec {
                    if let Err(e) = self.check_end(counts) {
                        return self.fail(e);
                    }
                    self.seen_end = true;
                } else {
                    self.records += 1;
                    if rec.is_alloc_event() {
                        self.alloc_events += 1;
                    }
                }
                return Some(Ok(rec));
            }
            let offset = self.reader.offset();
            match self.reader.next_chunk() {
                Ok(Some(raw)) => {
                    if self.seen_end {
                        return self
                            .fail(ReadError::corrupt(offset, "a chunk follows the end record"));
                    }
                    self.chunk_offset = offset;
                    let decoded = raw.decode();
                    self.reader.recycle(raw);
                    match decoded {
                        Ok(recs) => self.buf = recs.into_iter(),
                        Err(e) => return self.fail(e),
                    }
                }
                Ok(None) => {
                    if self.seen_end {
                        if let Some(t) = self.reader.truncation() {
                            let e = ReadError::corrupt(
                                t.offset,
                                "unexpected bytes after the end record",
                            );
                            return self.fail(e);
                        }
                    }
                    return None;
                }
                Err(e) => return self.fail(e),
            }
        }
    }
}
