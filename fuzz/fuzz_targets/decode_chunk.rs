//! Feeds arbitrary bytes to the record decoder, past the checksums: the input (after a
//! 4-byte record count) becomes the uncompressed payload of a chunk whose framing and
//! checksums are made valid here, inside an otherwise valid trace.

#![no_main]

use heaptape_format::{ClockSource, Header, ReadError, TraceReader, TraceWriter};
use libfuzzer_sys::fuzz_target;

fn preamble() -> Vec<u8> {
    let header = Header {
        tool_version: "fuzz".into(),
        command: vec![],
        pid: 1,
        start_time_unix_ns: 0,
        host: String::new(),
        kernel: String::new(),
        page_size: 4096,
        pointer_size: 8,
        clock: ClockSource::Synthetic,
    };
    TraceWriter::new(Vec::new(), &header)
        .and_then(|w| w.finish(0).map_err(std::io::Error::other))
        .map(|mut bytes| {
            // Keep the preamble only: 20 bytes plus the header length.
            let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
            bytes.truncate(20 + len);
            bytes
        })
        .expect("a trace can be written to memory")
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let count = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let payload = &data[4..];
    let mut t = preamble();
    let mut head = [0u8; 48];
    head[0..4].copy_from_slice(b"HTCK");
    // seq 0, stored = uncompressed length, record count, flags 0, timestamps 0.
    head[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[16..20].copy_from_slice(&count.to_le_bytes());
    head[40..44].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let hcrc = crc32c::crc32c(&head[..44]);
    head[44..48].copy_from_slice(&hcrc.to_le_bytes());
    t.extend_from_slice(&head);
    t.extend_from_slice(payload);
    let reader = match TraceReader::new(&t[..]) {
        Ok(r) => r,
        Err(e) => panic!("valid preamble rejected: {e}"),
    };
    for r in reader.records() {
        if let Err(e) = r {
            if let ReadError::Corrupt { offset, .. } = e {
                assert!(offset <= t.len() as u64);
            }
            break;
        }
    }
    // The chunk's records one at a time must be the same as all at once: the same
    // records, or the same error after a prefix of them.
    let mut reader = match TraceReader::new(&t[..]) {
        Ok(r) => r,
        Err(e) => panic!("valid preamble rejected: {e}"),
    };
    if let Ok(Some(chunk)) = reader.next_chunk() {
        let all = chunk.decode();
        let mut each = Vec::new();
        let one = chunk.for_each_record(|r| each.push(r));
        match (all, one) {
            (Ok(all), Ok(n)) => {
                assert_eq!(n as usize, all.len());
                assert!(all == each, "for_each_record differs from decode");
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("decode {:?} but for_each_record {:?}", a.map(|v| v.len()), b),
        }
    }
});
