//! Shared helpers of the integration tests: compile fixtures into a private temporary
//! directory, run a program natively, under `heaptape record` and under valgrind, and
//! read `heaptape analyze --json`.
//!
//! Every test gets its own directory (removed when the test passes, kept and named on
//! stderr when it fails), so the tests can run in parallel with each other and with the
//! rest of the workspace's tests.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `heaptape` binary under test.
pub const HEAPTAPE: &str = env!("CARGO_BIN_EXE_heaptape");

/// How long any single command may take before the test fails instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// The source of fixture `name` (e.g. `threads.c`).
pub fn fixture_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

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

    /// Compiles fixture `src` (gcc for `.c`, g++ for `.cc`) at -O0 -g into `out`.
    pub fn compile(&self, src: &str, out: &str, extra: &[&str]) -> PathBuf {
        let compiler = if src.ends_with(".cc") { "g++" } else { "gcc" };
        let out_path = self.join(out);
        let res = Command::new(compiler)
            .args(["-O0", "-g", "-w", "-o"])
            .arg(&out_path)
            .arg(fixture_src(src))
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
        assert!(
            res.status.success(),
            "{compiler} {src} failed:\n{}",
            String::from_utf8_lossy(&res.stderr)
        );
        out_path
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

/// Waits for `child` (whose stdout/stderr are pipes), failing the test after `TIMEOUT`.
pub fn wait_output(mut child: Child, what: &str) -> Run {
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        stdout: t_out.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&t_err.join().expect("stderr reader")).into_owned(),
        status,
    }
}

/// Runs `cmd` with stdin from /dev/null, capturing its output.
pub fn run(mut cmd: Command) -> Run {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    wait_output(child, &what)
}

/// Runs `prog args` natively.
pub fn run_native(dir: &TestDir, prog: impl AsRef<OsStr>, args: &[&str]) -> Run {
    let mut cmd = Command::new(prog);
    cmd.args(args).current_dir(dir.path());
    run(cmd)
}

/// The command line `heaptape record -o trace OPTS -- prog args`.
pub fn record_cmd(
    dir: &TestDir,
    trace: &Path,
    opts: &[&str],
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(HEAPTAPE);
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
    run(record_cmd(dir, trace, opts, prog, args))
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

/// Runs `heaptape analyze --json trace`: returns its exit status, parsed JSON (Null when
/// it did not print JSON) and stderr.
pub fn analyze_raw(trace: &Path) -> (Run, Value) {
    let mut cmd = Command::new(HEAPTAPE);
    cmd.arg("analyze").arg("--json").arg(trace);
    let res = run(cmd);
    let json = serde_json::from_slice(&res.stdout).unwrap_or(Value::Null);
    (res, json)
}

/// Analyzes a trace that must be complete: `analyze` exits 0, prints nothing on stderr
/// (no truncation warning) and reports the trace complete without warnings.
pub fn analyze(trace: &Path) -> Value {
    let (res, json) = analyze_raw(trace);
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

/// The processes of an analysis.
pub fn processes(json: &Value) -> &Vec<Value> {
    json["processes"].as_array().expect("processes array")
}

/// The single root process (the one without a parent).
pub fn root_process(json: &Value) -> &Value {
    let roots: Vec<&Value> = processes(json)
        .iter()
        .filter(|p| p["parent_pid"].is_null())
        .collect();
    assert_eq!(roots.len(), 1, "expected one root process: {json}");
    roots[0]
}

fn num(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// A process's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub allocations: u64,
    pub frees: u64,
    pub allocated_bytes: u64,
    pub live_at_exit_blocks: u64,
    pub live_at_exit_bytes: u64,
    pub inherited_blocks: u64,
    pub inherited_bytes: u64,
}

pub fn totals(process: &Value) -> Totals {
    let t = &process["totals"];
    Totals {
        allocations: num(&t["allocations"], "allocations"),
        frees: num(&t["frees"], "frees"),
        allocated_bytes: num(&t["allocated_bytes"], "allocated_bytes"),
        live_at_exit_blocks: num(&t["live_at_exit_blocks"], "live_at_exit_blocks"),
        live_at_exit_bytes: num(&t["live_at_exit_bytes"], "live_at_exit_bytes"),
        inherited_blocks: num(&t["inherited_blocks"], "inherited_blocks"),
        inherited_bytes: num(&t["inherited_bytes"], "inherited_bytes"),
    }
}

/// The bad frees of a process as `(kind, count)` per group ("invalid_frees"; called
/// "findings" in earlier reports).
pub fn findings(process: &Value) -> Vec<(String, u64)> {
    let list = if process["invalid_frees"].is_array() {
        &process["invalid_frees"]
    } else {
        &process["findings"]
    };
    list.as_array()
        .unwrap_or_else(|| panic!("no invalid_frees array in {process}"))
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("?").to_string(),
                f["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

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

/// Runs `prog args` under valgrind memcheck (following children, no exit-time freeres)
/// and returns the run and each process's heap usage as `(pid, usage)`, by pid.
pub fn valgrind(
    dir: &TestDir,
    prog: impl AsRef<OsStr>,
    args: &[&str],
) -> (Run, Vec<(u32, HeapUsage)>) {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let logs = dir.join(format!("vg{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&logs).expect("valgrind log directory");
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--run-libc-freeres=no",
        "--run-cxx-freeres=no",
        "--trace-children=yes",
    ])
    .arg(format!("--log-file={}/vg.%p", logs.display()))
    .arg(prog)
    .args(args)
    .current_dir(dir.path());
    let res = run(cmd);
    let mut usage = Vec::new();
    for entry in std::fs::read_dir(&logs).expect("read valgrind logs") {
        let path = entry.expect("log entry").path();
        let pid: u32 = path
            .extension()
            .and_then(|e| e.to_str())
            .and_then(|e| e.parse().ok())
            .expect("valgrind log named vg.PID");
        let log = std::fs::read_to_string(&path).expect("read valgrind log");
        let u = parse_heap_usage(&log)
            .unwrap_or_else(|| panic!("no heap usage line in {}:\n{log}", path.display()));
        usage.push((pid, u));
    }
    usage.sort_by_key(|u| u.0);
    assert!(!usage.is_empty(), "valgrind wrote no logs: {}", res.stderr);
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

/// The load bias of module `path` in a process (its "base").
pub fn module_base(process: &Value, path: &Path) -> u64 {
    let path = path.to_str().expect("utf-8 path");
    let m = process["modules"]
        .as_array()
        .expect("modules array")
        .iter()
        .find(|m| m["path"] == path)
        .unwrap_or_else(|| panic!("module {path} not in {}", process["modules"]));
    parse_hex(&m["base"])
}

pub fn parse_hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("bad hex {s}: {e}"))
}

/// The return addresses of a site's stack, innermost first.
pub fn frame_addresses(site: &Value) -> Vec<u64> {
    site["frames"]
        .as_array()
        .expect("frames array")
        .iter()
        .map(|f| parse_hex(&f["address"]))
        .collect()
}

/// Function names of return addresses in `binary` loaded at `base`, innermost first,
/// by `addr2line -f` on the call instruction (return address - 1); frames outside the
/// binary give "??".
pub fn symbolize(binary: &Path, base: u64, addresses: &[u64]) -> Vec<String> {
    let mut cmd = Command::new("addr2line");
    cmd.arg("-f").arg("-e").arg(binary);
    for a in addresses {
        cmd.arg(format!("{:#x}", a.wrapping_sub(1).wrapping_sub(base)));
    }
    let res = run(cmd);
    assert!(res.status.success(), "addr2line failed: {}", res.stderr);
    res.stdout_str()
        .lines()
        .step_by(2)
        .map(str::to_string)
        .collect()
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
