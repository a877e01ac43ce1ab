//! Chunk framing: a fixed little-endian header, then a zstd-compressed payload of
//! delta-encoded records.
//!
//! ```text
//! offset size field
//!      0    4 magic "HTCK"
//!      4    4 compressed payload length
//!      8    4 uncompressed payload length
//!     12    4 record count
//!     16    8 first timestamp in the chunk
//!     24    8 last timestamp in the chunk
//!     32    4 flags (bit 0: payload is zstd-compressed)
//!     36    4 CRC32C of bytes 0..36 and of the compressed payload
//! ```

use crate::error::ReadError;
use crate::record::Record;
use crate::wire::{DeltaState, Wire};
use crate::MAX_CHUNK_BYTES;

/// Magic that starts every chunk (also a resynchronisation point for recovery tools).
pub const CHUNK_MAGIC: [u8; 4] = *b"HTCK";
/// Size of the fixed chunk header.
pub const CHUNK_HEADER_LEN: usize = 40;
/// Flag: the payload is zstd-compressed.
pub const FLAG_ZSTD: u32 = 1;

/// The decoded fixed part of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
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
    /// CRC32C over the header's first 36 bytes and the stored payload.
    pub crc: u32,
}

impl ChunkInfo {
    pub(crate) fn to_bytes(self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&CHUNK_MAGIC);
        b[4..8].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.record_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_ts.to_le_bytes());
        b[24..32].copy_from_slice(&self.last_ts.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Parses and bounds-checks a chunk header found at `offset`.
    pub(crate) fn parse(b: &[u8; CHUNK_HEADER_LEN], offset: u64) -> Result<Self, ReadError> {
        if b[0..4] != CHUNK_MAGIC {
            return Err(ReadError::corrupt(offset, "bad chunk magic"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let info = ChunkInfo {
            compressed_len: u32_at(4),
            uncompressed_len: u32_at(8),
            record_count: u32_at(12),
            first_ts: u64_at(16),
            last_ts: u64_at(24),
            flags: u32_at(32),
            crc: u32_at(36),
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
        Ok(info)
    }

    pub(crate) fn compute_crc(&self, payload: &[u8]) -> u32 {
        let head = self.to_bytes();
        let c = crc32c::crc32c(&head[..36]);
        crc32c::crc32c_append(c, payload)
    }
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
    /// Decompresses and decodes the chunk's records.
    pub fn decode(&self) -> Result<Vec<Record>, ReadError> {
        let mut out = Vec::with_capacity(self.info.record_count as usize);
        self.decode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes the chunk's records, appending them to `out`.
    pub fn decode_into(&self, out: &mut Vec<Record>) -> Result<(), ReadError> {
        let payload_offset = self.offset + CHUNK_HEADER_LEN as u64;
        let owned;
        let raw: &[u8] = if self.info.flags & FLAG_ZSTD != 0 {
            owned = zstd::bulk::decompress(&self.payload, self.info.uncompressed_len as usize)
                .map_err(|e| {
                    ReadError::corrupt(payload_offset, format!("chunk does not decompress: {e}"))
                })?;
            &owned
        } else {
            &self.payload
        };
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
        let mut state = DeltaState::default();
        let mut rest = raw;
        for i in 0..self.info.record_count {
            let (wire, tail) = postcard::take_from_bytes::<Wire<Record>>(rest).map_err(|e| {
                ReadError::corrupt(
                    payload_offset,
                    format!(
                        "record {i} of the chunk (payload byte {}) does not decode: {e}",
                        raw.len() - rest.len()
                    ),
                )
            })?;
            out.push(state.decode(wire));
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(ReadError::corrupt(
                payload_offset,
                format!("{} bytes left after the chunk's last record", rest.len()),
            ));
        }
        Ok(())
    }
}
