//! Trace format codec benchmark on a synthetic but realistic allocator event stream
//! (see `support/synth.rs`): encode throughput (writer into memory), decode throughput
//! on one core (`RawChunk::decode`, `decode_into`, `for_each_record`) and on all cores
//! (`decode_parallel`), and compressed bytes per event (printed before the runs).
//!
//! `cargo bench -p heaptape-format --bench codec`

#[path = "support/synth.rs"]
mod synth;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heaptape_format::{clear_records, decode_parallel, RawChunk, Record, TraceReader, TraceWriter};

const EVENTS: usize = 1_000_000;

fn encode(recs: &[Record]) -> Vec<u8> {
    let mut w =
        TraceWriter::new(Vec::with_capacity(recs.len() * 4), &synth::header()).expect("header");
    for r in recs {
        w.write(r).expect("write");
    }
    w.finish(u64::MAX).expect("finish")
}

fn chunks(bytes: &[u8]) -> Vec<RawChunk> {
    let mut reader = TraceReader::new(bytes).expect("open");
    let mut out = Vec::new();
    while let Some(c) = reader.next_chunk().expect("chunk") {
        out.push(c);
    }
    out
}

fn bench(c: &mut Criterion) {
    let recs = synth::events(EVENTS, 42);
    let events = recs.iter().filter(|r| r.is_alloc_event()).count();
    let bytes = encode(&recs);
    let raws = chunks(&bytes);
    let uncompressed: u64 = raws
        .iter()
        .map(|c| u64::from(c.info.uncompressed_len))
        .sum();
    println!(
        "codec: {} records ({} allocator events) -> {} bytes in {} chunks: {:.2} bytes/event compressed, {:.2} before zstd",
        recs.len(),
        events,
        bytes.len(),
        raws.len(),
        bytes.len() as f64 / events as f64,
        uncompressed as f64 / events as f64,
    );

    let mut g = c.benchmark_group("codec");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(encode(black_box(&recs)))));
    g.bench_function("decode_one_core", |b| {
        b.iter(|| {
            let mut n = 0;
            for c in &raws {
                n += black_box(c.decode().expect("decode")).len();
            }
            n
        })
    });
    g.bench_function("decode_into_recycled_one_core", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let mut n = 0;
            for c in &raws {
                clear_records(&mut out);
                c.decode_into(&mut out).expect("decode");
                n += black_box(&out).len();
            }
            n
        })
    });
    g.bench_function("decode_into_one_core", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let mut n = 0;
            for c in &raws {
                out.clear();
                c.decode_into(&mut out).expect("decode");
                n += black_box(&out).len();
            }
            n
        })
    });
    g.bench_function("for_each_record_one_core", |b| {
        b.iter(|| {
            let mut n = 0;
            for c in &raws {
                n += c
                    .for_each_record(|r| {
                        black_box(r);
                    })
                    .expect("decode");
            }
            n
        })
    });
    g.bench_function("decode_parallel", |b| {
        b.iter(|| black_box(decode_parallel(&raws).expect("decode")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
