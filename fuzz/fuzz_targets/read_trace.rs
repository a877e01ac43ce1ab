//! Feeds arbitrary bytes to the whole reader: header, chunk framing, checksums, record
//! decoding, completeness checks, and the parallel chunk decoder.

#![no_main]

use heaptape_format::{decode_parallel, ReadError, TraceReader};
use libfuzzer_sys::fuzz_target;

fn check_offset(e: &ReadError, len: usize) {
    if let ReadError::Corrupt { offset, .. } | ReadError::TruncatedHeader { offset } = e {
        assert!(
            *offset <= len as u64,
            "error offset {offset} past the end ({len}): {e}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // Record by record.
    if let Ok(reader) = TraceReader::new(data) {
        let mut records = reader.records();
        for r in records.by_ref() {
            if let Err(e) = r {
                check_offset(&e, data.len());
                break;
            }
        }
        assert!(records.next().is_none());
        let _ = records.truncation();
    }
    // Chunk by chunk, decoded in parallel.
    match TraceReader::new(data) {
        Ok(mut reader) => {
            let mut raws = Vec::new();
            loop {
                match reader.next_chunk() {
                    Ok(Some(c)) => raws.push(c),
                    Ok(None) => break,
                    Err(e) => {
                        check_offset(&e, data.len());
                        break;
                    }
                }
            }
            if let Err(e) = decode_parallel(&raws) {
                check_offset(&e, data.len());
            }
        }
        Err(e) => check_offset(&e, data.len()),
    }
});
