//! Leak-check cost on a big heap, heaptape vs memcheck, side by side.
//!
//! `leak_graph N` holds N ~100-byte blocks (10 M by default: about 1 GiB) in a dense
//! pointer graph, three quarters reachable from a global table and one quarter lost.
//! Measured:
//! - heaptape: the time to take the exit snapshot (from `record --stats`), the snapshot's
//!   share of the trace, and the analyzer's time for the whole analysis (replay +
//!   classification), with the leak summary;
//! - memcheck: its leak check's time, as the difference between runs with
//!   `--leak-check=full` and `--leak-check=no`, with its leak summary.
//!
//! Run: `cargo bench --bench snapshot` (`-- --blocks N` to change the size). Recording
//! 10 M allocations under ptrace takes minutes; the figures are in docs/PERFORMANCE.md.
//!
//! `-- --during-run` measures a snapshot during the run instead: the pause of a
//! program holding 1 GiB in 1 M blocks of 1 KiB (`benches/programs/hold_heap.c`;
//! `--blocks N`, `--block-size BYTES` to change it), asked for with SIGUSR2 once the
//! heap is built, from `record --stats` (the pause is also in the trace's
//! `SnapshotInfo`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HEAPTAPE: &str = env!("CARGO_BIN_EXE_heaptape");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--during-run") {
        during_run(&args);
        return;
    }
    let blocks: u64 = args
        .iter()
        .position(|a| a == "--blocks")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if args.iter().any(|a| a == "--quick") {
            1_000_000
        } else {
            10_000_000
        });
    let dir = std::env::temp_dir().join(format!("heaptape-snapbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("leak_graph");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/programs/leak_graph.c");
    assert!(Command::new("gcc")
        .args(["-O0", "-g", "-o"])
        .arg(&prog)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let n = blocks.to_string();
    let trace = dir.join("lg.trace");

    println!("## Leak check of {blocks} live blocks (dense pointer graph)");
    let t = Instant::now();
    let out = Command::new(HEAPTAPE)
        .args(["record", "--stats", "-o"])
        .arg(&trace)
        .arg("--")
        .arg(&prog)
        .arg(&n)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let record_s = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let snap_line = stderr
        .lines()
        .find(|l| l.contains("snapshots:"))
        .unwrap_or("")
        .trim_start_matches("heaptape: ")
        .to_string();
    let snap_s: f64 = snap_line
        .split(" in ")
        .last()
        .and_then(|s| s.trim_end_matches(" s").parse().ok())
        .unwrap_or(f64::NAN);
    let trace_bytes = std::fs::metadata(&trace).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let analyze = Command::new(HEAPTAPE)
        .args(["analyze", "--json", "--no-symbols"])
        .arg(&trace)
        .output()
        .unwrap();
    let analyze_s = t.elapsed().as_secs_f64();
    let json: serde_json::Value = serde_json::from_slice(&analyze.stdout).unwrap_or_default();
    let leaks = json["processes"][0]["leaks"].to_string();
    println!("heaptape: recording {record_s:.1} s; {snap_line}");
    println!(
        "heaptape: trace {:.1} MiB; analyze (replay + classification) {analyze_s:.2} s; leaks {leaks}",
        trace_bytes as f64 / 1048576.0
    );

    let run_vg = |check: &str| {
        let t = Instant::now();
        let out = Command::new("valgrind")
            .arg(format!("--leak-check={check}"))
            .args(["--run-libc-freeres=no"])
            .arg(&prog)
            .arg(&n)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        (
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (full_s, report) = run_vg("full");
    let (none_s, _) = run_vg("no");
    println!(
        "memcheck: run with leak check {full_s:.1} s, without {none_s:.1} s: leak check {:.2} s",
        full_s - none_s
    );
    for l in report
        .lines()
        .filter(|l| l.contains("lost:") || l.contains("reachable:"))
    {
        println!("memcheck: {}", l.split("==").last().unwrap_or(l).trim());
    }
    println!(
        "ratio: heaptape snapshot + analysis {:.2} s vs memcheck leak check {:.2} s = {:.2}x",
        snap_s + analyze_s,
        full_s - none_s,
        (snap_s + analyze_s) / (full_s - none_s)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The value after `flag` in `args`, parsed.
fn arg<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.parse().ok()
}

/// A snapshot during the run of a program holding a big heap: its pause.
fn during_run(args: &[String]) {
    let blocks: u64 = arg(args, "--blocks").unwrap_or(1 << 20);
    let size: u64 = arg(args, "--block-size").unwrap_or(1024);
    let dir = std::env::temp_dir().join(format!("heaptape-snapbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("hold_heap");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/programs/hold_heap.c");
    assert!(Command::new("gcc")
        .args(["-O2", "-g", "-o"])
        .arg(&prog)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let trace = dir.join("hold.trace");
    println!(
        "## Snapshot during the run: {blocks} live blocks of {size} bytes ({:.2} GiB)",
        (blocks * size) as f64 / (1u64 << 30) as f64
    );
    let t = Instant::now();
    let mut child = Command::new(HEAPTAPE)
        .args(["record", "--stats", "--no-symbolize", "-o"])
        .arg(&trace)
        .arg("--")
        .arg(&prog)
        .arg(blocks.to_string())
        .arg(size.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let built_s = t.elapsed().as_secs_f64();
    // SAFETY: kill(2) on the heaptape process started above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) }, 0);
    // The recorder acts on it within a few milliseconds; the program answers once it
    // runs again.
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    writeln!(stdin, "ping").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "pong");
    let answered_s = asked.elapsed().as_secs_f64() + 0.2;
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = |what: &str| {
        stderr
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or("")
            .trim_start_matches("heaptape: ")
            .to_string()
    };
    println!("heaptape: heap built under the recorder in {built_s:.1} s");
    println!("heaptape: {}", line("snapshots during the run:"));
    println!("heaptape: the program answered {answered_s:.2} s after SIGUSR2");
    println!(
        "heaptape: all snapshots (this one and the exit one): {}",
        line("snapshots:")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
