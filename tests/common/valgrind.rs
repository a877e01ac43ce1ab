//! The oracle: valgrind memcheck, one log per process (following children, no
//! exit-time freeres), its heap usage and the body of its log lines.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use super::{findings, processes, record_like_native, root_process, run, run_native, totals};
use super::{Run, TestDir, Totals};

/// valgrind's "total heap usage: N allocs, M frees, B bytes allocated".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    pub allocs: u64,
    pub frees: u64,
    pub bytes: u64,
}

impl HeapUsage {
    /// The same figures from a heaptape process's totals.
    pub fn of(t: &Totals) -> HeapUsage {
        HeapUsage {
            allocs: t.allocations,
            frees: t.frees,
            bytes: t.allocated_bytes,
        }
    }
}

/// Parses valgrind's "total heap usage" line out of a log.
pub fn parse_heap_usage(log: &str) -> Option<HeapUsage> {
    let line = log.lines().find(|l| l.contains("total heap usage:"))?;
    let rest = line.split("total heap usage:").nth(1)?;
    // "2,003 allocs, 2,000 frees, 98,680 bytes allocated": commas are thousands
    // separators as well as list separators, so split on the words.
    let mut figures = Vec::new();
    for part in rest.split(" allocs,").flat_map(|s| s.split(" frees,")) {
        let digits: String = part
            .trim()
            .trim_end_matches("bytes allocated")
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect();
        figures.push(digits.parse::<u64>().ok()?);
    }
    match figures[..] {
        [allocs, frees, bytes] => Some(HeapUsage {
            allocs,
            frees,
            bytes,
        }),
        _ => None,
    }
}

/// The body of a memcheck log line (without the `==PID== ` prefix).
pub fn memcheck_body(line: &str) -> &str {
    if let Some(rest) = line.strip_prefix("==") {
        if let Some(i) = rest.find("==") {
            let body = &rest[i + 2..];
            return body.strip_prefix(' ').unwrap_or(body);
        }
    }
    line
}

/// The log valgrind wrote for one process.
#[derive(Debug)]
pub struct ValgrindLog {
    pub pid: u32,
    pub path: PathBuf,
    pub text: String,
}

/// Runs `prog args` in `dir` under valgrind with `opts` (following children, no
/// exit-time freeres) and returns the run and the log of each process, by pid.
pub fn valgrind_logs(
    dir: &TestDir,
    opts: &[&str],
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> (Run, Vec<ValgrindLog>) {
    valgrind_logs_env(dir, opts, &[], prog, args)
}

/// [`valgrind_logs`] with `env` set (e.g. `LD_PRELOAD`, which valgrind hands to the
/// program with its own preloads).
pub fn valgrind_logs_env(
    dir: &TestDir,
    opts: &[&str],
    env: &[(&str, &OsStr)],
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> (Run, Vec<ValgrindLog>) {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let logs = dir.join(format!("vg{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&logs).expect("valgrind log directory");
    let res = run(Command::new("valgrind")
        .args([
            "--run-libc-freeres=no",
            "--run-cxx-freeres=no",
            "--trace-children=yes",
        ])
        .args(opts)
        .arg(format!("--log-file={}/vg.%p", logs.display()))
        .arg(prog)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir.path()));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&logs).expect("read valgrind logs") {
        let path = entry.expect("log entry").path();
        let pid: u32 = path
            .extension()
            .and_then(|e| e.to_str())
            .and_then(|e| e.parse().ok())
            .expect("valgrind log named vg.PID");
        let text = std::fs::read_to_string(&path).expect("read valgrind log");
        out.push(ValgrindLog { pid, path, text });
    }
    out.sort_by_key(|l| l.pid);
    assert!(!out.is_empty(), "valgrind wrote no logs: {}", res.stderr);
    (res, out)
}

/// Runs `prog args` under valgrind memcheck (see [`valgrind_logs`]) and returns the run
/// and each process's heap usage as `(pid, usage)`, by pid.
pub fn valgrind(
    dir: &TestDir,
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> (Run, Vec<(u32, HeapUsage)>) {
    let (res, logs) = valgrind_logs(dir, &[], prog, args);
    let usage = logs
        .iter()
        .map(|log| {
            let u = parse_heap_usage(&log.text).unwrap_or_else(|| {
                panic!(
                    "no heap usage line in {}:\n{}",
                    log.path.display(),
                    log.text
                )
            });
            (log.pid, u)
        })
        .collect();
    (res, usage)
}

/// valgrind's heap usage of a single-process program.
pub fn valgrind_single(dir: &TestDir, prog: impl AsRef<OsStr>, args: &[&str]) -> (Run, HeapUsage) {
    let (res, usage) = valgrind(dir, prog, args);
    assert_eq!(
        usage.len(),
        1,
        "expected one process under valgrind: {usage:?}"
    );
    (res, usage[0].1)
}

/// Records a single-process program and checks its totals against valgrind's: equal
/// allocations, frees and bytes, no findings, and every block not freed live at exit.
/// Returns the analysis' process.
pub fn assert_counts_match_valgrind(
    dir: &TestDir,
    name: &str,
    prog: &Path,
    args: &[&str],
) -> Value {
    let json = record_like_native(dir, name, prog, args);
    assert_eq!(processes(&json).len(), 1, "one process expected: {json}");
    let p = root_process(&json).clone();
    let t = totals(&p);
    let (vg_run, vg) = valgrind_single(dir, prog, args);
    let native = run_native(dir, prog, args);
    assert_eq!(
        vg_run.stdout, native.stdout,
        "valgrind run printed differently"
    );
    assert_eq!(HeapUsage::of(&t), vg, "heaptape totals vs valgrind's");
    assert_eq!(findings(&p), vec![], "unexpected findings");
    assert_eq!(t.live_at_exit_blocks, t.allocations - t.frees);
    p
}

/// memcheck's LEAK SUMMARY of one log as `(blocks, bytes)` per line: `definitely
/// lost`, `indirectly lost`, `possibly lost`, `still reachable`, `suppressed` (all zero
/// when "All heap blocks were freed"). Panics on a log without a leak check.
pub fn memcheck_leak_summary(log: &str) -> std::collections::BTreeMap<String, (u64, u64)> {
    const LINES: [&str; 5] = [
        "definitely lost",
        "indirectly lost",
        "possibly lost",
        "still reachable",
        "suppressed",
    ];
    let mut out: std::collections::BTreeMap<String, (u64, u64)> =
        LINES.iter().map(|l| (l.to_string(), (0, 0))).collect();
    if log.contains("All heap blocks were freed") {
        return out;
    }
    assert!(log.contains("LEAK SUMMARY"), "no leak summary in:\n{log}");
    let digits = |s: &str| -> u64 {
        s.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {s:?}"))
    };
    for body in log.lines().map(memcheck_body) {
        // "   definitely lost: 1,088 bytes in 4 blocks"
        let Some((label, figures)) = body.trim().split_once(": ") else {
            continue;
        };
        if !LINES.contains(&label) {
            continue;
        }
        let Some((bytes, blocks)) = figures.split_once(" bytes in ") else {
            continue;
        };
        let blocks = blocks.split_whitespace().next().unwrap_or("");
        out.insert(label.to_string(), (digits(blocks), digits(bytes)));
    }
    out
}
