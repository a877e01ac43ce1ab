//! Damaged traces: cut at every offset, flipped bits, wrong versions and magic, and a
//! seeded mutation loop (the CI arm of the `read_trace` fuzzer).

mod common;

use common::*;
use heaptape_format::{
    decode_parallel, AllocFn, ReadError, Record, TraceReader, FORMAT_VERSION, MAGIC,
    OLDEST_READ_VERSION,
};

/// A small allocator-like stream with a few rare records.
fn sample_records(n: usize, seed: u64) -> Vec<Record> {
    let mut rng = Rng(seed);
    let mut out = vec![Record::ThreadStart {
        ts: 0,
        pid: 10,
        tid: 10,
    }];
    let mut live: Vec<u64> = Vec::new();
    let mut top = 0x5555_5556_0010u64;
    let mut ts = 0;
    for i in 0..n {
        ts += 100 + rng.below(2000);
        let tid = 10 + rng.below(3) as u32;
        if i % 97 == 0 {
            out.push(Record::StackNode {
                id: (i / 97 + 1) as u32,
                parent: (i / 97) as u32,
                address: 0x5555_5555_0000 + rng.below(1 << 20),
            });
        }
        if live.is_empty() || rng.below(2) == 0 {
            let size = [16, 32, 48, 1000][rng.below(4) as usize];
            let address = top;
            top += size + 16;
            live.push(address);
            out.push(Record::Alloc {
                ts,
                tid,
                func: AllocFn::Malloc,
                address,
                size,
                align: 0,
                stack: rng.below(5) as u32,
            });
        } else {
            let idx = live.len() - 1 - rng.below(live.len().min(4) as u64) as usize;
            let address = live.remove(idx);
            out.push(Record::Free {
                ts,
                tid,
                func: AllocFn::Free,
                address,
                stack: 7,
            });
        }
        if i % 250 == 0 {
            out.push(Record::RssSample(Box::new(heaptape_format::RssSample {
                ts,
                pid: 10,
                rss: ts,
                hwm: ts,
                anon: 1,
                file: 2,
                pss: Some(3),
            })));
        }
    }
    out
}

/// A seeded SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Byte offsets where each chunk ends, and the number of records (End included) the
/// chunks up to there hold.
fn chunk_ends(bytes: &[u8]) -> (u64, Vec<(u64, usize)>) {
    let mut r = TraceReader::new(bytes).expect("valid");
    let start = r.offset();
    let mut ends = Vec::new();
    let mut total = 0;
    while let Some(c) = r.next_chunk().expect("valid") {
        total += c.info.record_count as usize;
        ends.push((r.offset(), total));
    }
    (start, ends)
}

#[test]
fn cut_at_every_offset() {
    let records = sample_records(600, 1);
    let bytes = write_trace(&records, 700, 999_999);
    let full = read_all(&bytes).records;
    assert_eq!(full.len(), records.len() + 1);
    let (preamble, ends) = chunk_ends(&bytes);
    assert!(ends.len() >= 5, "want several chunks, got {}", ends.len());
    for cut in 0..bytes.len() {
        let out = read_all(&bytes[..cut]);
        if (cut as u64) < preamble {
            match out.error {
                Some(ReadError::TruncatedHeader { offset }) => assert!(offset <= cut as u64),
                other => panic!("cut at {cut} inside the preamble gave {other:?}"),
            }
            continue;
        }
        assert!(out.error.is_none(), "cut at {cut}: {:?}", out.error);
        // Exactly the records of the complete chunks before the cut.
        let complete = ends.iter().take_while(|(end, _)| *end <= cut as u64).last();
        let (end, n) = complete.copied().unwrap_or((preamble, 0));
        assert_eq!(out.records, full[..n], "cut at {cut}");
        assert!(!out.complete, "cut at {cut} reads as complete");
        let t = out
            .truncation
            .unwrap_or_else(|| panic!("cut at {cut}: no truncation reported"));
        assert_eq!(t.offset, end, "cut at {cut}: truncation offset");
    }
    // And the whole file is complete.
    let out = read_all(&bytes);
    assert!(out.complete && out.truncation.is_none() && out.error.is_none());
}

#[test]
fn trace_without_end_record_is_truncated() {
    let records = sample_records(300, 2);
    let bytes = write_unfinished(&records, 500);
    let out = read_all(&bytes);
    assert!(out.error.is_none());
    assert_eq!(out.records, records);
    assert!(!out.complete);
    let t = out.truncation.expect("truncation");
    assert_eq!(t.offset, bytes.len() as u64);
    assert!(t.reason.contains("no end record"), "{}", t.reason);
}

/// Every single-bit flip anywhere in the file must be reported as an error (the
/// checksums cover every byte), never read as a different trace. The one exception is
/// the version field, which no checksum covers: a flip that turns version 3 into
/// version 2 reads the same records (version 2 is version 3 without `Symbols` records,
/// decoded the same way).
#[test]
fn every_bit_flip_is_an_error_with_an_offset() {
    let records = sample_records(200, 3);
    let bytes = write_trace(&records, 400, 5);
    let clean = read_all(&bytes);
    let mut damaged = bytes.clone();
    for i in 0..bytes.len() {
        for bit in [0, 3, 7] {
            damaged[i] ^= 1 << bit;
            let out = read_all(&damaged);
            let version = u32::from_le_bytes(damaged[8..12].try_into().unwrap());
            damaged[i] ^= 1 << bit;
            if (8..12).contains(&i) && (OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
                assert!(out.error.is_none() && out.complete, "version {version}");
                assert_eq!(out.records, clean.records, "read as version {version}");
                continue;
            }
            let e = out
                .error
                .unwrap_or_else(|| panic!("flip of bit {bit} at byte {i} went unnoticed"));
            let off = error_offset(&e).expect("offset");
            assert!(
                off <= bytes.len() as u64,
                "offset {off} outside the file: {e}"
            );
            // Whatever was yielded before the error is a prefix of the real records.
            assert_eq!(out.records, clean.records[..out.records.len()], "byte {i}");
            if let ReadError::Corrupt { offset, .. } = e {
                // The damaged byte is at or after the structure the error names.
                assert!(offset <= i as u64, "error at {offset} for damage at {i}");
            }
        }
    }
}

/// A trace whose symbols were appended (`heaptape record`'s last step), cut at every
/// offset inside the symbols' chunks: it reads as the records of its complete chunks,
/// truncated, never an error; `trailing_symbols` gives the symbols of the complete
/// chunks, never more, and never panics.
#[test]
fn cut_inside_the_symbols_section() {
    use heaptape_format::{trailing_symbols, ModuleSymbols, SymbolFrame, SymbolizedAddress};
    let records = sample_records(300, 3);
    let path = std::env::temp_dir().join(format!("heaptape-damage-sym-{}", std::process::id()));
    std::fs::write(&path, write_trace(&records, 1 << 20, 77)).unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let mut appender = heaptape_format::TraceAppender::open(&path).unwrap();
    let mut modules = Vec::new();
    for m in 0..3u64 {
        let s = ModuleSymbols {
            path: format!("/lib/m{m}.so"),
            build_id: vec![m as u8; 20],
            strings: (0..50).map(|i| format!("function_{m}_{i}")).collect(),
            addresses: (0..400u64)
                .map(|i| SymbolizedAddress {
                    address: 0x1000 + i * 16,
                    frames: vec![SymbolFrame {
                        function: Some((i % 50) as u32),
                        mangled: None,
                        file: None,
                        line: Some(i as u32),
                        inlined: i % 2 == 0,
                    }],
                })
                .collect(),
        };
        appender
            .write(&Record::Symbols(Box::new(s.clone())))
            .unwrap();
        // Each module in a chunk of its own, so that a cut can fall between them.
        appender.end_chunk().unwrap();
        modules.push(s);
    }
    appender.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let full = read_all(&bytes);
    assert!(full.complete && full.error.is_none());
    assert_eq!(full.records.len(), records.len() + 3 + 1);
    let (_, ends) = chunk_ends(&bytes);
    let cut_path = path.with_extension("cut");
    // Every offset from the re-encoded last chunk of events (`before` minus its length,
    // at most a chunk) to the end, in steps (each cut is a file written and read twice).
    let (preamble, _) = chunk_ends(&bytes);
    let first = before.saturating_sub(1 << 16).max(preamble) as usize;
    let mut seen = [false; 4];
    for cut in (first..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        let out = read_all(&bytes[..cut]);
        assert!(out.error.is_none(), "cut at {cut}: {:?}", out.error);
        let complete = ends.iter().take_while(|(end, _)| *end <= cut as u64).last();
        let n = complete.map_or(0, |c| c.1);
        assert_eq!(out.records, full.records[..n], "cut at {cut}");
        assert!(!out.complete && out.truncation.is_some(), "cut at {cut}");
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let tail = trailing_symbols(&cut_path).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(
            modules.starts_with(&tail),
            "cut at {cut}: {} modules",
            tail.len()
        );
        seen[tail.len()] = true;
    }
    // Cuts before, between and after the modules' chunks were all met.
    assert_eq!(seen, [true; 4]);
    // Damage inside a symbols chunk is an error naming an offset, for both readers.
    let mut bad = bytes.clone();
    let at = bytes.len() - 100;
    bad[at] ^= 0x40;
    let out = read_all(&bad);
    assert!(matches!(out.error, Some(ReadError::Corrupt { offset, .. }) if offset <= at as u64));
    std::fs::write(&cut_path, &bad).unwrap();
    assert!(matches!(
        trailing_symbols(&cut_path),
        Err(ReadError::Corrupt { .. })
    ));
    let _ = std::fs::remove_file(&cut_path);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn future_version_is_unsupported() {
    let mut bytes = write_trace(&sample_records(10, 4), 1 << 20, 1);
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    match TraceReader::new(&bytes[..]) {
        Err(ReadError::UnsupportedVersion {
            found,
            oldest,
            newest,
        }) => {
            assert_eq!(found, FORMAT_VERSION + 1);
            assert_eq!((oldest, newest), (OLDEST_READ_VERSION, FORMAT_VERSION));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("future version accepted"),
    }
    let e = TraceReader::new(&bytes[..]).err().unwrap().to_string();
    assert!(e.contains("written by a newer heaptape"), "{e}");
}

#[test]
fn older_version_names_the_heaptape_that_wrote_it() {
    let mut bytes = write_trace(&sample_records(10, 4), 1 << 20, 1);
    bytes[8..12].copy_from_slice(&(OLDEST_READ_VERSION - 1).to_le_bytes());
    let e = TraceReader::new(&bytes[..])
        .err()
        .expect("an old version is refused");
    assert!(
        matches!(e, ReadError::UnsupportedVersion { found, .. } if found == OLDEST_READ_VERSION - 1),
        "{e}"
    );
    let e = e.to_string();
    assert!(
        e.contains(
            "written by an older heaptape: analyze it with the heaptape version that recorded it"
        ),
        "{e}"
    );
    assert!(!e.contains("newer"), "{e}");
}

#[test]
fn bad_magic_is_rejected() {
    let mut bytes = write_trace(&sample_records(10, 5), 1 << 20, 1);
    assert_eq!(bytes[..8], MAGIC);
    bytes[0] = b'X';
    assert!(matches!(
        TraceReader::new(&bytes[..]),
        Err(ReadError::BadMagic)
    ));
    assert!(matches!(
        TraceReader::new(&b"ELF\x7f not a trace"[..]),
        Err(ReadError::BadMagic)
    ));
    assert!(matches!(
        TraceReader::new(&b""[..]),
        Err(ReadError::TruncatedHeader { offset: 0 })
    ));
}

#[test]
fn file_is_created_with_mode_0600_and_reads_back() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.trace");
    let mut w = heaptape_format::TraceWriter::create(&path, &header()).expect("create");
    let records = sample_records(50, 6);
    for r in &records {
        w.write(r).expect("write");
    }
    w.finish(1).expect("finish");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let mut it = TraceReader::open(&path).expect("open").records();
    let read: Vec<Record> = it.by_ref().map(|r| r.expect("record")).collect();
    assert_eq!(read[..records.len()], records[..]);
    assert!(it.is_complete());
}

#[test]
fn missing_repeated_or_reordered_chunks_are_errors() {
    let records = sample_records(400, 7);
    let bytes = write_trace(&records, 300, 1);
    let (preamble, ends) = chunk_ends(&bytes);
    let mut bounds = vec![preamble];
    bounds.extend(ends.iter().map(|(e, _)| *e));
    let chunk = |i: usize| &bytes[bounds[i] as usize..bounds[i + 1] as usize];
    let pre = &bytes[..preamble as usize];
    let n = ends.len();
    assert!(n >= 4);
    // Drop a middle chunk.
    let mut dropped = pre.to_vec();
    for i in (0..n).filter(|&i| i != 1) {
        dropped.extend_from_slice(chunk(i));
    }
    // Repeat one.
    let mut repeated = pre.to_vec();
    for i in [0, 1, 1, 2] {
        repeated.extend_from_slice(chunk(i));
    }
    // Swap two.
    let mut swapped = pre.to_vec();
    for i in [0, 2, 1] {
        swapped.extend_from_slice(chunk(i));
    }
    // Append a chunk after the end record.
    let mut after_end = bytes.clone();
    after_end.extend_from_slice(chunk(0));
    // Trailing garbage after the end record.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"junk");
    for (name, t) in [
        ("dropped", dropped),
        ("repeated", repeated),
        ("swapped", swapped),
        ("after end", after_end),
        ("trailing", trailing),
    ] {
        let out = read_all(&t);
        match out.error {
            Some(ReadError::Corrupt { offset, .. }) => assert!(offset < t.len() as u64, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn wrong_end_counts_are_an_error() {
    let records = sample_records(100, 8);
    let mut buf = Vec::new();
    let mut w = heaptape_format::TraceWriter::new(&mut buf, &header()).expect("header");
    for r in &records {
        w.write(r).expect("write");
    }
    let mut counts = w.counts().clone();
    counts.records += 1;
    w.write(&Record::End { ts: 1, counts }).expect("write");
    w.flush().expect("flush");
    drop(w);
    let out = read_all(&buf);
    // Everything before the end record is still yielded.
    assert_eq!(out.records, records);
    assert!(
        matches!(out.error, Some(ReadError::Corrupt { .. })),
        "{:?}",
        out.error
    );
    assert!(!out.complete);
}

/// The CI arm of the fuzzer: thousands of mutated traces (bit flips, byte runs,
/// insertions, deletions, splices, tampered length fields, and payload damage behind
/// recomputed checksums) must never panic, and every error must name an offset inside
/// the file.
#[test]
fn mutated_traces_never_panic() {
    let bases: Vec<Vec<u8>> = (0..4)
        .map(|s| write_trace(&sample_records(150 + 100 * s as usize, 10 + s), 200 << s, 9))
        .collect();
    let mut rng = Rng(0xF00D);
    let iterations = 20_000;
    let mut errors = 0;
    let mut decode_errors = 0;
    for it in 0..iterations {
        let base = &bases[it % bases.len()];
        let mut t = base.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut t, &bases, &mut rng);
        }
        if rng.below(3) == 0 {
            fix_checksums(&mut t);
        }
        let out = read_all(&t);
        if let Some(e) = &out.error {
            errors += 1;
            if matches!(e, ReadError::Corrupt { what, .. } if what.contains(", record ")) {
                decode_errors += 1;
            }
            if let Some(off) = error_offset(e) {
                assert!(
                    off <= t.len() as u64,
                    "iteration {it}: offset {off} past {} ({e})",
                    t.len()
                );
            }
        }
        // Chunk-level path, as the analyzer uses it, must not panic either.
        if let Ok(mut r) = TraceReader::new(&t[..]) {
            let mut raws = Vec::new();
            while let Ok(Some(c)) = r.next_chunk() {
                raws.push(c);
            }
            if let Err(e) = decode_parallel(&raws) {
                let off = error_offset(&e).expect("offset");
                assert!(off <= t.len() as u64, "{e}");
            }
        }
    }
    assert!(
        errors > iterations / 2,
        "only {errors} of {iterations} mutations were noticed"
    );
    // The checksum-fixing mutations must reach the record decoder.
    assert!(
        decode_errors > iterations / 50,
        "only {decode_errors} payload decoding errors"
    );
}

fn mutate(t: &mut Vec<u8>, bases: &[Vec<u8>], rng: &mut Rng) {
    if t.is_empty() {
        t.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(t.len() as u64) as usize;
    match rng.below(8) {
        0 => t[at] ^= 1 << rng.below(8),
        1 => {
            let n = (1 + rng.below(16) as usize).min(t.len() - at);
            for b in &mut t[at..at + n] {
                *b = rng.next_u64() as u8;
            }
        }
        2 => {
            let n = 1 + rng.below(32) as usize;
            let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            t.splice(at..at, ins);
        }
        3 => {
            let n = (1 + rng.below(64) as usize).min(t.len() - at);
            t.drain(at..at + n);
        }
        4 => {
            // Splice in a piece of another trace.
            let other = &bases[rng.below(bases.len() as u64) as usize];
            let from = rng.below(other.len() as u64) as usize;
            let n = (rng.below(512) as usize).min(other.len() - from);
            t.splice(
                at..(at + n).min(t.len()),
                other[from..from + n].iter().copied(),
            );
        }
        5 if t.len() >= 4 => {
            // Tamper with a 32-bit little-endian field (lengths, counts).
            let at = at.min(t.len().saturating_sub(4));
            let v = match rng.below(4) {
                0 => 0u32,
                1 => u32::MAX,
                2 => rng.next_u64() as u32,
                _ => u32::from_le_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]])
                    .wrapping_add(1 + rng.below(3) as u32),
            };
            t[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        6 => t.truncate(at),
        _ => {
            // Damage a chunk payload behind valid checksums: decompress, mutate, store
            // uncompressed with fixed-up lengths (fix_checksums then recomputes CRCs).
            damage_payload(t, rng);
        }
    }
}

const CH: usize = heaptape_format::chunk::CHUNK_HEADER_LEN;

/// Walks the chunks from the preamble as long as the framing holds; returns their
/// header offsets.
fn chunk_offsets(t: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    if t.len() < 20 || t[..8] != MAGIC {
        return out;
    }
    let hlen = u32::from_le_bytes([t[12], t[13], t[14], t[15]]) as usize;
    let mut at = 20 + hlen;
    while at + CH <= t.len() && t[at..at + 4] == *b"HTCK" {
        out.push(at);
        let clen = u32::from_le_bytes([t[at + 8], t[at + 9], t[at + 10], t[at + 11]]) as usize;
        at += CH + clen;
    }
    out
}

fn fix_checksums(t: &mut [u8]) {
    for at in chunk_offsets(t) {
        let clen = u32::from_le_bytes([t[at + 8], t[at + 9], t[at + 10], t[at + 11]]) as usize;
        let end = (at + CH + clen).min(t.len());
        let crc = crc32c::crc32c(&t[at + CH..end]);
        t[at + 40..at + 44].copy_from_slice(&crc.to_le_bytes());
        let hcrc = crc32c::crc32c(&t[at..at + 44]);
        t[at + 44..at + 48].copy_from_slice(&hcrc.to_le_bytes());
    }
}

fn damage_payload(t: &mut Vec<u8>, rng: &mut Rng) {
    let offs = chunk_offsets(t);
    if offs.is_empty() {
        return;
    }
    let at = offs[rng.below(offs.len() as u64) as usize];
    let clen = u32::from_le_bytes([t[at + 8], t[at + 9], t[at + 10], t[at + 11]]) as usize;
    let ulen = u32::from_le_bytes([t[at + 12], t[at + 13], t[at + 14], t[at + 15]]) as usize;
    if at + CH + clen > t.len() {
        return;
    }
    let stored = &t[at + CH..at + CH + clen];
    let flags = u32::from_le_bytes([t[at + 20], t[at + 21], t[at + 22], t[at + 23]]);
    let mut raw = if flags & 1 != 0 {
        match zstd::bulk::decompress(stored, ulen) {
            Ok(r) => r,
            Err(_) => return,
        }
    } else {
        stored.to_vec()
    };
    if raw.is_empty() {
        return;
    }
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(raw.len() as u64) as usize;
        match rng.below(4) {
            0 => raw[i] ^= 1 << rng.below(8),
            1 => raw[i] = rng.next_u64() as u8,
            2 => {
                raw.insert(i, rng.next_u64() as u8);
            }
            _ => {
                raw.remove(i);
                if raw.is_empty() {
                    raw.push(0);
                }
            }
        }
    }
    let mut head = t[at..at + CH].to_vec();
    head[8..12].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    head[12..16].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    head[20..24].copy_from_slice(&0u32.to_le_bytes());
    if rng.below(4) == 0 {
        // Sometimes claim a different record count too.
        let n = rng.below(raw.len() as u64 + 2) as u32;
        head[16..20].copy_from_slice(&n.to_le_bytes());
    }
    let mut chunk = head;
    chunk.extend_from_slice(&raw);
    t.splice(at..at + CH + clen, chunk);
    fix_checksums(t);
}

/// Reading with payload buffers given back ([`TraceReader::recycle`]) reads the same
/// records and finds the same cut: a reused buffer larger than the chunk being read
/// must not hide that the file ends inside it.
#[test]
fn recycled_buffers_read_the_same_and_still_see_cuts() {
    let records = sample_records(600, 9);
    let bytes = write_trace(&records, 200, 999_999);
    let read = |bytes: &[u8], recycle: bool| {
        let mut reader = TraceReader::new(bytes).expect("a header");
        let mut out = Vec::new();
        let end = loop {
            match reader.next_chunk() {
                Ok(Some(raw)) => {
                    out.extend(raw.decode().expect("a chunk that decodes"));
                    if recycle {
                        reader.recycle(raw);
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        (out, end, reader.truncation().cloned(), reader.chunks_read())
    };
    let whole = read(&bytes, true);
    // The records written, then the end record.
    assert_eq!(whole.0[..records.len()], records[..]);
    assert!(matches!(whole.0[records.len()..], [Record::End { .. }]));
    assert!(whole.3 > 4, "{} chunks", whole.3);
    assert_eq!(whole, read(&bytes, false));
    let mut cuts_seen = 0;
    for cut in (100..bytes.len()).step_by(53) {
        let cut_bytes = &bytes[..cut];
        let (got, want) = (read(cut_bytes, true), read(cut_bytes, false));
        assert_eq!(got, want, "cut at {cut}");
        // A cut inside a chunk (not between two) is seen by the reader itself.
        cuts_seen += usize::from(got.2.is_some());
    }
    assert!(cuts_seen > 20, "{cuts_seen} cuts seen");
}
