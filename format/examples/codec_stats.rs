//! Prints how well the trace format compresses a synthetic allocator event stream and
//! how fast it encodes and decodes it, in plain words.
//!
//! `cargo run --release -p heaptape-format --example codec_stats [events]`

#[path = "../benches/support/synth.rs"]
mod synth;

use std::time::{Duration, Instant};

use heaptape_format::{clear_records, decode_parallel, Record, TraceReader, TraceWriter};

/// Nanoseconds this thread has run on a CPU (Linux `/proc/thread-self/schedstat`), so
/// that throughput per core can be told apart from a busy machine's wall clock.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Best wall time and best on-CPU time of `runs` runs of `f`.
fn measure(runs: usize, mut f: impl FnMut()) -> (Duration, Option<Duration>) {
    let mut wall = Duration::MAX;
    let mut cpu: Option<Duration> = None;
    for _ in 0..runs {
        let c0 = thread_cpu_ns();
        let t = Instant::now();
        f();
        wall = wall.min(t.elapsed());
        if let (Some(a), Some(b)) = (c0, thread_cpu_ns()) {
            let d = Duration::from_nanos(b.saturating_sub(a));
            cpu = Some(cpu.map_or(d, |c| c.min(d)));
        }
    }
    (wall, cpu)
}

fn rate(n: f64, d: Option<Duration>) -> String {
    match d {
        Some(d) if !d.is_zero() => format!("{:.1}", n / d.as_secs_f64() / 1e6),
        _ => "n/a".into(),
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let recs = synth::events(n, 42);
    let events = recs.iter().filter(|r| r.is_alloc_event()).count();
    let header = synth::header();

    // Each measurement is the best of a few runs: the machine may be shared.
    const RUNS: usize = 5;
    let mut bytes = Vec::new();
    let (enc, enc_cpu) = measure(RUNS, || {
        let mut w = TraceWriter::new(Vec::with_capacity(n * 4), &header).expect("header");
        for r in &recs {
            w.write(r).expect("write");
        }
        bytes = w.finish(0).expect("finish");
    });

    let mut reader = TraceReader::new(&bytes[..]).expect("open");
    let mut chunks = Vec::new();
    while let Some(c) = reader.next_chunk().expect("chunk") {
        chunks.push(c);
    }
    let uncompressed: u64 = chunks
        .iter()
        .map(|c| u64::from(c.info.uncompressed_len))
        .sum();

    let mut out: Vec<Record> = Vec::new();
    let mut decoded = 0;
    let (dec, dec_cpu) = measure(RUNS, || {
        decoded = 0;
        for c in &chunks {
            out.clear();
            c.decode_into(&mut out).expect("decode");
            decoded += out.len();
        }
    });
    // The same, recycling the vector as the analyzer does (no drop call per record).
    let (dec_recycled, dec_recycled_cpu) = measure(RUNS, || {
        for c in &chunks {
            clear_records(&mut out);
            c.decode_into(&mut out).expect("decode");
            std::hint::black_box(&out);
        }
    });
    let (dec_each, dec_each_cpu) = measure(RUNS, || {
        for c in &chunks {
            c.for_each_record(|r| {
                std::hint::black_box(r);
            })
            .expect("decode");
        }
    });
    let (dec_fresh, dec_fresh_cpu) = measure(RUNS, || {
        for c in &chunks {
            std::hint::black_box(c.decode().expect("decode"));
        }
    });

    let mut pdec = Duration::MAX;
    let mut par = Vec::new();
    for _ in 0..RUNS {
        drop(par);
        let t = Instant::now();
        par = decode_parallel(&chunks).expect("decode");
        pdec = pdec.min(t.elapsed());
    }
    let par_n: usize = par.iter().map(Vec::len).sum();
    // Every record plus the end record, unchanged.
    assert_eq!(decoded, recs.len() + 1);
    assert_eq!(par_n, recs.len() + 1);
    let flat: Vec<&Record> = par.iter().flatten().collect();
    assert!(
        flat.iter().zip(&recs).all(|(a, b)| *a == b),
        "round trip differs"
    );

    let total = recs.len() as f64;
    println!(
        "records:              {} ({} allocator events)",
        recs.len(),
        events
    );
    println!("chunks:               {}", chunks.len());
    println!(
        "trace size:           {} bytes = {:.2} bytes/event ({:.2} before zstd)",
        bytes.len(),
        bytes.len() as f64 / events as f64,
        uncompressed as f64 / events as f64
    );
    println!(
        "versus 40 raw bytes:  {:.1}x smaller",
        40.0 * events as f64 / bytes.len() as f64
    );
    let rows = [
        ("encode:              ", enc, enc_cpu, ""),
        (
            "decode, one thread:  ",
            dec,
            dec_cpu,
            " (decode_into, reused vector)",
        ),
        (
            "",
            dec_recycled,
            dec_recycled_cpu,
            " (decode_into, vector recycled with clear_records)",
        ),
        ("", dec_each, dec_each_cpu, " (for_each_record, no vector)"),
        ("", dec_fresh, dec_fresh_cpu, " (decode, fresh vector)"),
    ];
    for (label, wall, cpu, what) in rows {
        println!(
            "{label:<21} {:.1} M records/s wall, {} M/s per CPU-second{what}",
            total / wall.as_secs_f64() / 1e6,
            rate(total, cpu)
        );
    }
    println!(
        "decode, parallel:     {:.1} M records/s on {} threads",
        total / pdec.as_secs_f64() / 1e6,
        rayon::current_num_threads()
    );
}
