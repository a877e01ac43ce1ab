//! Chunk framing: a fixed little-endian header, then a (usually zstd-compressed)
//! payload of column-encoded records.
//!
//! ```text
//! offset size field
//!      0    4 magic "HTCK"
//!      4    4 sequence number (0 for the first chunk, then +1)
//!      8    4 stored payload length
//!     12    4 uncompressed payload length
//!     16    4 record count
//!     20    4 flags (bit 0: payload is zstd-compressed)
//!     24    8 first timestamp in the chunk
//!     32    8 last timestamp in the chunk
//!     40    4 CRC32C of the stored payload
//!     44    4 CRC32C of bytes 0..44 of this header
//! ```
//!
//! The header has its own checksum so that a damaged length is reported as corruption
//! before it is used to read or allocate anything.

use crate::error::ReadError;
use crate::record::Record;
use crate::wire::{decode_payload_each, decode_payload_padded, DecodeError, DECODE_PAD};
use crate::MAX_CHUNK_BYTES;

/// Magic that starts every chunk (also a resynchronisation point for recovery tools).
pub const CHUNK_MAGIC: [u8; 4] = *b"HTCK";
/// Size of the fixed chunk header.
pub const CHUNK_HEADER_LEN: usize = 48;
/// Flag: the payload is zstd-compressed.
pub const FLAG_ZSTD: u32 = 1;

/// The decoded fixed part of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Position of the chunk in the trace: 0 for the first, then +1.
    pub seq: u32,
    /// Length of the payload as stored.
    pub compressed_len: u32,
    /// Length of the payload once decompressed.
    pub uncompressed_len: u32,
    /// Number of records in the chunk.
    pub record_count: u32,
    /// Timestamp of the first timestamped record (0 if none).
    pub first_ts: u64,
    /// Timestamp of the last timestamped record (0 if none).
    pub last_ts: u64,
    /// Flag bits.
    pub flags: u32,
    /// CRC32C of the stored payload.
    pub crc: u32,
}

impl ChunkInfo {
    pub(crate) fn to_bytes(self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&CHUNK_MAGIC);
        b[4..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..12].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.record_count.to_le_bytes());
        b[20..24].copy_from_slice(&self.flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_ts.to_le_bytes());
        b[32..40].copy_from_slice(&self.last_ts.to_le_bytes());
        b[40..44].copy_from_slice(&self.crc.to_le_bytes());
        let head_crc = crc32c::crc32c(&b[..44]);
        b[44..48].copy_from_slice(&head_crc.to_le_bytes());
        b
    }

    /// Parses and bounds-checks a chunk header found at `offset`.
    pub(crate) fn parse(b: &[u8; CHUNK_HEADER_LEN], offset: u64) -> Result<Self, ReadError> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        if b[0..4] != CHUNK_MAGIC {
            return Err(ReadError::corrupt(offset, "bad chunk magic"));
        }
        if crc32c::crc32c(&b[..44]) != u32_at(44) {
            return Err(ReadError::corrupt(offset, "chunk header checksum mismatch"));
        }
        let info = ChunkInfo {
            seq: u32_at(4),
            compressed_len: u32_at(8),
            uncompressed_len: u32_at(12),
            record_count: u32_at(16),
            flags: u32_at(20),
            first_ts: u64_at(24),
            last_ts: u64_at(32),
            crc: u32_at(40),
        };
        if info.compressed_len as usize > MAX_CHUNK_BYTES
            || info.uncompressed_len as usize > MAX_CHUNK_BYTES
        {
            return Err(ReadError::corrupt(
                offset,
                format!(
                    "chunk declares {} bytes ({} uncompressed), over the {} byte limit",
                    info.compressed_len, info.uncompressed_len, MAX_CHUNK_BYTES
                ),
            ));
        }
        if info.record_count > info.uncompressed_len {
            return Err(ReadError::corrupt(
                offset,
                "chunk declares more records than payload bytes",
            ));
        }
        if info.flags & !FLAG_ZSTD != 0 {
            return Err(ReadError::corrupt(offset, "unknown chunk flags"));
        }
        if info.flags & FLAG_ZSTD == 0 && info.compressed_len != info.uncompressed_len {
            return Err(ReadError::corrupt(
                offset,
                "uncompressed chunk with differing stored and payload lengths",
            ));
        }
        Ok(info)
    }
}

/// Per-thread decompression state, reused from chunk to chunk.
#[derive(Default)]
struct Scratch {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    buf: Vec<u8>,
}

/// Decompression buffers up to this size are kept for the next chunk.
const SCRATCH_KEEP: usize = 8 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// A chunk as read from the file: verified framing, payload not yet decoded.
/// Decoding is independent of every other chunk, so chunks can be decoded in parallel.
#[derive(Clone, Debug)]
pub struct RawChunk {
    /// Byte offset of the chunk header in the file.
    pub offset: u64,
    /// Its header.
    pub info: ChunkInfo,
    pub(crate) payload: Vec<u8>,
}

impl RawChunk {
    /// The payload as stored in the file (zstd-compressed when the header's flags say
    /// so), for tools that copy or inspect chunks without decoding them.
    pub fn stored_payload(&self) -> &[u8] {
        &self.payload
    }

    /// Decompresses and decodes the chunk's records.
    pub fn decode(&self) -> Result<Vec<Record>, ReadError> {
        let mut out = Vec::new();
        self.decode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes the chunk's records, appending them to `out` (left as it was on error).
    /// Reusing one vector across chunks saves the allocation (and the page faults) of a
    /// fresh one per chunk.
    pub fn decode_into(&self, out: &mut Vec<Record>) -> Result<(), ReadError> {
        let before = out.len();
        self.with_uncompressed(|buf, len| {
            decode_payload_padded(buf, len, self.info.record_count, out).map_err(|e| {
                out.truncate(before);
                self.decode_error(e)
            })
        })
    }

    /// Decodes the chunk's records and hands each to `f`, in order, without collecting
    /// them: the fastest way to consume a chunk. On error, `f` has seen the records
    /// before the damaged one; returns the number of records.
    pub fn for_each_record(&self, mut f: impl FnMut(Record)) -> Result<u32, ReadError> {
        self.with_uncompressed(|buf, len| {
            // Decoding succeeds only with every record of the count handed on.
            decode_payload_each(buf, len, self.info.record_count, &mut f)
                .map_err(|e| self.decode_error(e))?;
            Ok(self.info.record_count)
        })
    }

    /// Calls `f` with a buffer that starts with the payload, decompressed if needed and
    /// checked against the header's length, and the payload's length. The buffer holds
    /// [`DECODE_PAD`] more bytes after the payload (for the fast decoder), except in a
    /// nested call (from a `for_each_record` callback), which uses fresh buffers.
    /// Decompression reuses this thread's zstd context and buffer (a fresh 1 MiB buffer
    /// per chunk costs its page faults every time); an uncompressed payload is copied
    /// into that buffer too.
    fn with_uncompressed<R>(
        &self,
        f: impl FnOnce(&[u8], usize) -> Result<R, ReadError>,
    ) -> Result<R, ReadError> {
        let len = self.info.uncompressed_len as usize;
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let Scratch { zstd, buf } = &mut *scratch;
                buf.clear();
                // The header bounds `len` by MAX_CHUNK_BYTES.
                buf.reserve(len + DECODE_PAD);
                let r = if self.info.flags & FLAG_ZSTD == 0 {
                    buf.extend_from_slice(&self.payload);
                    Ok(())
                } else {
                    if zstd.is_none() {
                        *zstd = zstd::bulk::Decompressor::new().ok();
                    }
                    match zstd {
                        Some(z) => z
                            .decompress_to_buffer(&self.payload, buf)
                            .map(drop)
                            .map_err(|e| self.decompress_error(e)),
                        None => zstd::bulk::decompress(&self.payload, len)
                            .map(|v| buf.extend_from_slice(&v))
                            .map_err(|e| self.decompress_error(e)),
                    }
                };
                let r = r.and_then(|()| {
                    self.check_len(buf)?;
                    buf.resize(len + DECODE_PAD, 0);
                    f(buf, len)
                });
                if buf.capacity() > SCRATCH_KEEP {
                    *buf = Vec::new();
                }
                r
            }
            Err(_) => {
                if self.info.flags & FLAG_ZSTD == 0 {
                    return f(self.check_len(&self.payload)?, len);
                }
                let raw = zstd::bulk::decompress(&self.payload, len)
                    .map_err(|e| self.decompress_error(e))?;
                f(self.check_len(&raw)?, len)
            }
        })
    }

    fn decompress_error(&self, e: std::io::Error) -> ReadError {
        ReadError::corrupt(
            self.offset + CHUNK_HEADER_LEN as u64,
            format!("chunk does not decompress: {e}"),
        )
    }

    /// Checks a (decompressed) payload against the header's length.
    fn check_len<'a>(&self, raw: &'a [u8]) -> Result<&'a [u8], ReadError> {
        let payload_offset = self.offset + CHUNK_HEADER_LEN as u64;
        if raw.len() != self.info.uncompressed_len as usize {
            return Err(ReadError::corrupt(
                payload_offset,
                format!(
                    "chunk decompresses to {} bytes, header says {}",
                    raw.len(),
                    self.info.uncompressed_len
                ),
            ));
        }
        Ok(raw)
    }

    fn decode_error(&self, e: DecodeError) -> ReadError {
        ReadError::corrupt(
            self.offset + CHUNK_HEADER_LEN as u64,
            format!(
                "chunk {} (at byte offset {}), record {}: {}",
                self.info.seq, self.offset, e.record, e.what
            ),
        )
    }
}
