//! Decodes the synthetic benchmark stream over and over, for profiling the decoder
//! (`perf record`, `perf stat`) without the encoder in the picture.
//!
//! `cargo run --release -p heaptape-format --example decode_loop [rounds] [events] [mode]`
//!
//! Modes: `into` (`decode_into` into one vector emptied with `Vec::clear`, the default),
//! `recycled` (the same vector emptied with `clear_records`, as the analyzer does),
//! `fresh` (`decode`, a fresh vector per chunk, dropped) and `each` (`for_each_record`):
//! the four one-core harnesses of the criterion benchmark.

#[path = "../benches/support/synth.rs"]
mod synth;

use std::time::Instant;

use heaptape_format::{clear_records, Record, TraceReader, TraceWriter};

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let mode = args.next().unwrap_or_else(|| "into".into());
    assert!(
        ["into", "recycled", "fresh", "each"].contains(&mode.as_str()),
        "mode: into, recycled, fresh or each"
    );
    let recs = synth::events(n, 42);
    let mut w = TraceWriter::new(Vec::new(), &synth::header()).expect("header");
    for r in &recs {
        w.write(r).expect("write");
    }
    let bytes = w.finish(0).expect("finish");
    let mut reader = TraceReader::new(&bytes[..]).expect("open");
    let mut chunks = Vec::new();
    while let Some(c) = reader.next_chunk().expect("chunk") {
        chunks.push(c);
    }
    let mut out: Vec<Record> = Vec::new();
    let mut best_cpu = u64::MAX;
    let mut best_wall = f64::MAX;
    for _ in 0..rounds {
        let c0 = thread_cpu_ns();
        let t = Instant::now();
        let mut k = 0;
        for c in &chunks {
            match mode.as_str() {
                "each" => {
                    k += c
                        .for_each_record(|r| {
                            std::hint::black_box(r);
                        })
                        .expect("decode") as usize;
                }
                "fresh" => k += std::hint::black_box(c.decode().expect("decode")).len(),
                "recycled" => {
                    clear_records(&mut out);
                    c.decode_into(&mut out).expect("decode");
                    k += std::hint::black_box(&out).len();
                }
                _ => {
                    out.clear();
                    c.decode_into(&mut out).expect("decode");
                    k += std::hint::black_box(&out).len();
                }
            }
        }
        best_wall = best_wall.min(t.elapsed().as_secs_f64());
        best_cpu = best_cpu.min(thread_cpu_ns() - c0);
        assert_eq!(k, recs.len() + 1);
    }
    println!(
        "{}: {:.1} M records/s per CPU-second, {:.1} M/s wall (best of {rounds})",
        mode,
        recs.len() as f64 / (best_cpu as f64 / 1e9) / 1e6,
        recs.len() as f64 / best_wall / 1e6
    );
}
