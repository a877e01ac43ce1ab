//! Programs running in the background: started and read up to their first line, and
//! watched through /proc.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Starts `cmd` with its stdout piped (stdin and stderr as `cmd` says) and reads its
/// first line, which must be `first`; returns the child and the rest of its stdout.
pub fn spawn_until_line(cmd: &mut Command, first: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read first line");
    assert_eq!(line, first);
    (child, stdout)
}

/// The pid of the program that heaptape process `heaptape_pid` runs (its first child).
pub fn traced_child(heaptape_pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{heaptape_pid}/task")).ok()?;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            if let Some(pid) = s.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The state letter of /proc/PID/stat (R, S, T, t, Z, ...).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may contain spaces and parentheses; take what follows
    // the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}
