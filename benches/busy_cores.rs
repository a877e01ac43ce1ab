//! A program that keeps both cores busy itself: `xz -T2` compressing a generated file
//! (24 MiB of pseudo-random words, so both of its threads have blocks to work on). The
//! ring recorder's thread then competes with the program for the CPUs instead of using
//! an idle one. Rows: native, heaptape (ring mode, the default), heaptrack (when
//! installed); medians of interleaved rounds. Also the allocation counts and heaptape's
//! `--stats` lines.
//!
//! Run: `cargo bench --bench busy_cores` (`-- --rounds N`, default 5). Figures and the
//! command are kept in docs/PERFORMANCE.md.

use std::io::Write;
use std::process::Command;

mod support;
use support::{compare, have, heaptape_allocs, print_ring_stats, under, Row};

const HEAPTAPE: &str = env!("CARGO_BIN_EXE_heaptape");

/// 24 MiB of words drawn from a small vocabulary by a fixed generator: compressible, and
/// the same in every run.
fn input(path: &std::path::Path) {
    const WORDS: [&str; 16] = [
        "heap", "trace", "alloc", "free", "stack", "frame", "ring", "block", "leak", "peak",
        "growth", "site", "thread", "unwind", "symbol", "report",
    ];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut written = 0usize;
    while written < 24 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = WORDS[(x % 16) as usize];
        let sep = if x % 11 == 0 { "\n" } else { " " };
        write!(out, "{w}{}{sep}", x % 1000).unwrap();
        written += w.len() + 4;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(5usize);
    if !have("xz") {
        eprintln!("xz not installed: nothing to measure");
        return;
    }
    let dir = std::env::temp_dir().join(format!("heaptape-bench-xz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("in.txt");
    input(&file);
    let xz = |c: &mut Command| {
        c.args(["xz", "-T2", "-1", "-c", "-k"]).arg(&file);
    };
    let trace = dir.join("t.trace");
    let mut rows: Vec<Row> = vec![
        under("native", None, vec![], &xz),
        under(
            "heaptape (ring, default)",
            Some(HEAPTAPE),
            vec![
                "record".into(),
                "-o".into(),
                trace.clone().into(),
                "--".into(),
            ],
            &xz,
        ),
    ];
    if have("heaptrack") {
        rows.push(under(
            "heaptrack",
            Some("heaptrack"),
            vec!["-o".into(), dir.join("ht").into()],
            &xz,
        ));
    }
    println!("xz -T2 -1 on 24 MiB of generated text, {rounds} rounds, medians, unpinned");
    compare(&rows, rounds);
    println!(
        "heaptape allocations: {}",
        heaptape_allocs(HEAPTAPE, &trace)
    );
    print_ring_stats(HEAPTAPE, &trace, |c| xz(c));
    let _ = std::fs::remove_dir_all(&dir);
}
