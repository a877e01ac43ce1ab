//! What the bench binaries share: timing a command, medians, whether a tool is installed.

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
