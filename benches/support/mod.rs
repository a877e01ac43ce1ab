//! What the bench binaries share: timing a command, medians, whether a tool is installed,
//! tables of commands run side by side.

#![allow(dead_code)] // each bench binary uses a part

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `cmd` takes (its output discarded); panics if it fails.
pub fn time_cmd(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("command runs");
    assert!(st.success(), "{cmd:?} failed");
    t.elapsed()
}

/// The median of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A row of a side-by-side table: its name and how to build its command.
pub type Row<'a> = (&'static str, Box<dyn Fn() -> Command + 'a>);

/// The row `name` that runs the program `program` adds (the program and its arguments)
/// under `tool` and its arguments `tool_args` (`heaptrack -o FILE PROGRAM ...`); with no
/// tool, natively (through `env`, which runs its arguments).
pub fn under<'a>(
    name: &'static str,
    tool: Option<&'a str>,
    tool_args: Vec<std::ffi::OsString>,
    program: &'a dyn Fn(&mut Command),
) -> Row<'a> {
    (
        name,
        Box::new(move || {
            let mut c = Command::new(tool.unwrap_or("env"));
            c.args(&tool_args);
            program(&mut c);
            c
        }),
    )
}

/// Runs every row's command once per round, rows interleaved so that all see the same
/// load, and prints the medians as a markdown table against the first row.
pub fn compare(rows: &[Row], rounds: usize) {
    let mut times = vec![Vec::new(); rows.len()];
    for _ in 0..rounds {
        for (i, (_, make)) in rows.iter().enumerate() {
            times[i].push(time_cmd(&mut make()).as_secs_f64());
        }
    }
    let base = median(times[0].clone());
    println!("| | wall | vs {} |", rows[0].0);
    println!("|---|---:|---:|");
    for (i, (name, _)) in rows.iter().enumerate() {
        let m = median(times[i].clone());
        println!("| {name} | {m:.2} s | {:.2}x |", m / base);
    }
}

/// The allocations in heaptape's report of `trace` (`total heap usage: N allocs`).
pub fn heaptape_allocs(heaptape: &str, trace: &Path) -> String {
    let out = Command::new(heaptape)
        .args(["analyze", "--no-symbols"])
        .arg(trace)
        .output()
        .expect("analyze runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("total heap usage: "))
        .and_then(|l| l.split(" allocs").next())
        .unwrap_or("?")
        .to_string()
}

/// Records `cmd` (built by `args`) with `heaptape record --stats` and prints its
/// `tracer:` and `ring:` lines.
pub fn print_ring_stats(heaptape: &str, trace: &Path, args: impl FnOnce(&mut Command)) {
    let mut c = Command::new(heaptape);
    c.args(["record", "--stats", "-o"]).arg(trace).arg("--");
    args(&mut c);
    let out = c.output().expect("heaptape runs");
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        if l.contains("ring:") || l.contains("tracer:") {
            println!("{l}");
        }
    }
}
