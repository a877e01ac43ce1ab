//! Writes a few small valid traces as fuzzing seeds.
//!
//! `cargo run -p heaptape-format --example make_seeds -- DIR`
//!
//! For each trace `N.trace` it also writes `N.chunk`: the record count and the
//! uncompressed payload of the trace's first chunk, the input shape of the
//! `decode_chunk` fuzz target.

#[path = "../benches/support/synth.rs"]
mod synth;

use std::path::PathBuf;

use heaptape_format::{TraceReader, TraceWriter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: make_seeds DIR")?);
    std::fs::create_dir_all(&dir)?;
    for (i, (events, target)) in [(40, 1 << 20), (300, 512), (1500, 4096), (200, 64)]
        .into_iter()
        .enumerate()
    {
        let recs = synth::events(events, 7 + i as u64);
        let mut w = TraceWriter::new(Vec::new(), &synth::header())?.with_chunk_target(target);
        for r in &recs {
            w.write(r)?;
        }
        let bytes = w.finish(1)?;
        std::fs::write(dir.join(format!("{i}.trace")), &bytes)?;

        let mut reader = TraceReader::new(&bytes[..])?;
        if let Some(c) = reader.next_chunk()? {
            let raw = if c.info.flags & heaptape_format::chunk::FLAG_ZSTD != 0 {
                zstd::bulk::decompress(c.stored_payload(), c.info.uncompressed_len as usize)?
            } else {
                c.stored_payload().to_vec()
            };
            let mut seed = c.info.record_count.to_le_bytes().to_vec();
            seed.extend_from_slice(&raw);
            std::fs::write(dir.join(format!("{i}.chunk")), seed)?;
        }
    }
    Ok(())
}
