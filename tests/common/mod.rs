//! The harness of the integration tests: every `tests/*.rs` says `mod common;` and
//! `use common::*;` (except `architecture.rs`, which only reads the source tree).
//!
//! - this file: scratch directories, running commands with a time limit, running
//!   `heaptape` (record, analyze);
//! - [`browser`]: headless Chromium, for the HTML report;
//! - [`fixtures`]: compiling the fixtures of `tests/fixtures/` and inline sources;
//! - [`report`]: reading `heaptape analyze --json` reports;
//! - [`valgrind`]: the memcheck oracle (heap usage, leak logs);
//! - [`procs`]: programs running in the background (waiting for their first line,
//!   their state in /proc);
//! - [`allocators`]: the replacement allocators (jemalloc, tcmalloc, mimalloc) fixtures
//!   are also run under.
//!
//! Every test gets its own directory (removed when the test passes, kept and named on
//! stderr when it fails), so the tests can run in parallel with each other and with the
//! rest of the workspace's tests.

#![allow(dead_code, unused_imports)]

pub mod allocators;
pub mod browser;
pub mod fixtures;
pub mod procs;
pub mod report;
pub mod valgrind;

pub use allocators::*;
pub use browser::*;
pub use fixtures::*;
pub use procs::*;
pub use report::*;
pub use valgrind::*;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `heaptape` binary under test.
pub const HEAPTAPE: &str = env!("CARGO_BIN_EXE_heaptape");

/// How long any single command may take before the test fails instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------------------

/// A private temporary directory for one test.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "heaptape-itest-{name}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test directory");
        // Module paths in traces are canonical; make ours canonical too.
        let path = path.canonicalize().expect("canonicalize test directory");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// What a finished command did.
#[derive(Debug)]
pub struct Run {
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub status: ExitStatus,
}

impl Run {
    /// The exit status as a shell reports it: the code, or 128+N for signal N.
    pub fn shell_code(&self) -> i32 {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => unreachable!("a finished process has a code or a signal"),
        }
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Waits for `child` at most [`TIMEOUT`], killing it and failing the test after that.
pub fn wait(mut child: Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `pipe` to its end on a thread; the receiver gets the bytes.
fn read_on_thread(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut v);
        }
        let _ = tx.send(v);
    });
    rx
}

/// Waits for `child` (see [`wait`]) and collects what it wrote to the pipes still
/// attached to it (stdout and stderr; one already taken or not piped reads as empty).
/// Fails the test when a pipe stays open until [`TIMEOUT`] (a program that left a
/// descendant holding it).
pub fn wait_output(mut child: Child, what: &str) -> Run {
    let start = Instant::now();
    let out = read_on_thread(child.stdout.take());
    let err = read_on_thread(child.stderr.take());
    let status = wait(child, what);
    let collect = |rx: mpsc::Receiver<Vec<u8>>, name: &str| {
        rx.recv_timeout(TIMEOUT.saturating_sub(start.elapsed()))
            .unwrap_or_else(|_| panic!("the {name} of {what} stayed open after it exited"))
    };
    let stdout = collect(out, "stdout");
    let stderr = collect(err, "stderr");
    Run {
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        status,
    }
}

/// Runs `cmd` with stdin from /dev/null, capturing its output.
pub fn run(cmd: &mut Command) -> Run {
    run_with_stdout(cmd, Stdio::piped())
}

/// Runs `cmd` with stdin from /dev/null and its standard output sent to `stdout`
/// (captured only when that is [`Stdio::piped`]), capturing its stderr.
pub fn run_with_stdout(cmd: &mut Command, stdout: Stdio) -> Run {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    wait_output(child, &what)
}

/// Runs `prog args` natively in `dir`.
pub fn run_native(dir: &TestDir, prog: impl AsRef<OsStr>, args: &[&str]) -> Run {
    run(Command::new(prog).args(args).current_dir(dir.path()))
}

// ---------------------------------------------------------------------------------------
// heaptape
// ---------------------------------------------------------------------------------------

/// A command line of the `heaptape` binary under test.
pub fn heaptape() -> Command {
    Command::new(HEAPTAPE)
}

/// Runs `heaptape ARGS...`.
pub fn run_heaptape<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Run {
    run(heaptape().args(args))
}

/// The command line `heaptape record -o trace OPTS -- prog args`, run in `dir`.
pub fn record_cmd(
    dir: &TestDir,
    trace: &Path,
    opts: &[&str],
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> Command {
    let mut cmd = heaptape();
    cmd.arg("record")
        .arg("-o")
        .arg(trace)
        .args(opts)
        .arg("--")
        .arg(prog)
        .args(args)
        .current_dir(dir.path());
    cmd
}

/// Runs `heaptape record -o trace OPTS -- prog args`.
pub fn record(
    dir: &TestDir,
    trace: &Path,
    opts: &[&str],
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> Run {
    run(&mut record_cmd(dir, trace, opts, prog, args))
}

/// Runs `heaptape record -o trace OPTS -- prog args`, which must succeed (exit 0).
pub fn record_ok(
    dir: &TestDir,
    trace: &Path,
    opts: &[&str],
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> Run {
    let r = record(dir, trace, opts, prog, args);
    assert!(
        r.status.success(),
        "heaptape record {opts:?} {args:?} failed ({:?}): {}",
        r.status,
        r.stderr
    );
    r
}

/// Asserts that the recorded run printed exactly what the native run printed and that
/// `heaptape record` exited with the program's status (128+N for signal N).
pub fn assert_same_run(native: &Run, recorded: &Run) {
    assert_eq!(
        recorded.stdout_str(),
        native.stdout_str(),
        "stdout under heaptape differs from the native run; heaptape stderr:\n{}",
        recorded.stderr
    );
    assert_eq!(
        recorded.stdout, native.stdout,
        "stdout bytes differ from the native run"
    );
    assert!(
        recorded.status.code().is_some(),
        "heaptape itself died of signal {:?}; stderr:\n{}",
        recorded.status.signal(),
        recorded.stderr
    );
    assert_eq!(
        recorded.shell_code(),
        native.shell_code(),
        "heaptape's exit status differs from the program's native one; stderr:\n{}",
        recorded.stderr
    );
}

/// Runs `heaptape analyze --json OPTS trace`: returns its run and the parsed JSON (Null
/// when it did not print JSON), every stack inline (`schema::inline_stacks`: the frames
/// in place of the index into the document's shared stacks).
pub fn analyze_raw_with(trace: &Path, opts: &[&str]) -> (Run, Value) {
    let res = run(heaptape()
        .arg("analyze")
        .arg("--json")
        .args(opts)
        .arg(trace));
    let mut json = serde_json::from_slice(&res.stdout).unwrap_or(Value::Null);
    heaptape_analyzer::schema::inline_stacks(&mut json);
    (res, json)
}

/// Runs `heaptape analyze --json trace` (see [`analyze_raw_with`]).
pub fn analyze_raw(trace: &Path) -> (Run, Value) {
    analyze_raw_with(trace, &[])
}

/// `heaptape analyze --json OPTS trace`, which must succeed and print JSON; warnings
/// and incomplete traces are allowed (see [`analyze`] for the strict check).
pub fn analyze_json_with(trace: &Path, opts: &[&str]) -> Value {
    let (res, json) = analyze_raw_with(trace, opts);
    assert!(
        res.status.success(),
        "heaptape analyze --json {opts:?} {} failed ({:?}): {}",
        trace.display(),
        res.status,
        res.stderr
    );
    assert!(
        !json.is_null(),
        "analyze --json prints JSON: {}",
        res.stdout_str()
    );
    json
}

/// `heaptape analyze --json trace` (see [`analyze_json_with`]).
pub fn analyze_json(trace: &Path) -> Value {
    analyze_json_with(trace, &[])
}

/// Analyzes a trace that must be complete: `analyze` exits 0, prints nothing on stderr
/// (no truncation warning) and reports the trace complete without warnings.
pub fn analyze(trace: &Path) -> Value {
    analyze_complete_with(trace, &[])
}

/// [`analyze`] with options (`heaptape analyze --json OPTS trace`).
pub fn analyze_complete_with(trace: &Path, opts: &[&str]) -> Value {
    let (res, json) = analyze_raw_with(trace, opts);
    assert!(
        res.status.success(),
        "heaptape analyze failed ({:?}): {}",
        res.status,
        res.stderr
    );
    assert_eq!(res.stderr, "", "heaptape analyze printed warnings");
    assert_eq!(
        json["trace"]["complete"],
        Value::Bool(true),
        "trace incomplete"
    );
    assert_eq!(json["trace"]["truncation"], Value::Null, "trace truncated");
    assert_eq!(
        json["warnings"].as_array().map(Vec::len),
        Some(0),
        "analysis warnings: {}",
        json["warnings"]
    );
    json
}

/// `heaptape analyze trace` (the text report), which must succeed.
pub fn analyze_text(trace: &Path) -> String {
    let r = run_heaptape([OsStr::new("analyze"), trace.as_os_str()]);
    assert!(r.status.success(), "heaptape analyze failed: {}", r.stderr);
    r.stdout_str()
}

/// Runs `prog args` natively and under `heaptape record` (trace `name.trace` in `dir`),
/// asserts identical output and status, and returns the complete analysis.
pub fn record_like_native(
    dir: &TestDir,
    name: &str,
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> Value {
    let prog = prog.as_ref();
    let native = run_native(dir, prog, args);
    let trace = dir.join(format!("{name}.trace"));
    let recorded = record(dir, &trace, &[], prog, args);
    assert_same_run(&native, &recorded);
    analyze(&trace)
}
