//! The heaptape trace format.
//!
//! A trace is a small uncompressed preamble followed by a stream of independent chunks:
//!
//! ```text
//! "HEAPTAPE" | version u32 | header length u32 | header CRC32C u32 | header (postcard)
//! chunk*     (see [`chunk`]: fixed header with sequence number, lengths, counts, time
//!             range and checksums, then a zstd-compressed payload of column-encoded
//!             records)
//! ```
//!
//! Why this shape: the recorder must be able to stop at any instant (a crash, SIGKILL, a
//! full disk) and leave a readable file, so the writer appends whole chunks and the
//! reader treats a cut-off tail as truncation rather than an error. Chunks reset their
//! delta state, so the analyzer can decode them on every core. Checksums and hard bounds
//! on every length make hostile input an error, never a panic or a huge allocation.
//! `docs/FORMAT.md` is the full specification.
//!
//! [`heuristics`] holds memcheck's interior-pointer heuristics, whose verdicts the trace
//! carries, and the live-block index they are evaluated with.

#![deny(unsafe_code)]

pub mod chunk;
mod error;
pub mod heuristics;
mod reader;
mod record;
mod tail;
pub mod units;
mod wire;
mod writer;

pub use chunk::{ChunkInfo, RawChunk};
pub use error::{ReadError, WriteError};
pub use reader::{decode_parallel, Records, TraceReader, Truncation};
pub use record::*;
pub use tail::{trailing_symbols, AppendError, TraceAppender};
pub use writer::{TraceWriter, DEFAULT_CHUNK_TARGET, DEFAULT_ZSTD_LEVEL};

/// The eight bytes every trace starts with.
pub const MAGIC: [u8; 8] = *b"HEAPTAPE";
/// The format version this crate writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 4;
/// The oldest format version this crate reads: version 2 is version 3 without
/// [`Record::Symbols`] records, and version 3 is version 4 without
/// [`Record::SnapshotThread`] and [`Record::SnapshotInfo`] records, so each reads as it
/// always did.
pub const OLDEST_READ_VERSION: u32 = 2;
/// Upper bound on the encoded header.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Upper bound on a chunk's payload, compressed or not. Every record takes at least
/// [`MIN_RECORD_BYTES`] of payload, so this also bounds the records (and the memory) one
/// chunk can decode to.
pub const MAX_CHUNK_BYTES: usize = 32 << 20;
/// Upper bound on one encoded record (a writer refuses larger ones). Big reachability
/// snapshots must be split over several records.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// Every encoded record takes at least this many payload bytes (a tag byte and two
/// fields); a chunk that claims more records than its payload allows is corrupt.
pub const MIN_RECORD_BYTES: usize = 3;
