//! Errors of reading and writing traces.

use std::io;

/// Why a trace could not be read. Every variant that concerns the file's contents names
/// the byte offset where the problem starts, so a user can tell a damaged region from a
/// wrong file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The operating system refused a read.
    #[error("cannot read trace: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with the heaptape magic.
    #[error("not a heaptape trace (bad magic at byte offset 0)")]
    BadMagic,
    /// The file was written in another format version: by an older heaptape (read it
    /// with the heaptape that recorded it) or a newer one.
    #[error(
        "trace format version {found} is not supported (this heaptape reads versions {oldest} to {newest}); {}",
        if found < oldest {
            "it was written by an older heaptape: analyze it with the heaptape version that recorded it"
        } else {
            "it was written by a newer heaptape: use that version or a later one"
        }
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// The oldest version this reader understands.
        oldest: u32,
        /// The newest version this reader understands (the one it writes).
        newest: u32,
    },
    /// The file ends before its header is complete.
    #[error("trace is truncated inside its header (at byte offset {offset})")]
    TruncatedHeader {
        /// Where the file ended.
        offset: u64,
    },
    /// A structure is damaged.
    #[error("trace is corrupt at byte offset {offset}: {what}")]
    Corrupt {
        /// Where the damaged structure starts.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

impl ReadError {
    pub(crate) fn corrupt(offset: u64, what: impl Into<String>) -> Self {
        ReadError::Corrupt {
            offset,
            what: what.into(),
        }
    }
}

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The operating system refused a write (a full disk shows up here).
    #[error("cannot write trace: {0}")]
    Io(#[from] io::Error),
    /// One record encodes to more than [`crate::MAX_RECORD_BYTES`].
    #[error("record of {0} bytes exceeds the format's limit; split it")]
    RecordTooLarge(usize),
    /// The writer was already finished or failed earlier.
    #[error("trace writer is closed after an earlier error")]
    Closed,
}
