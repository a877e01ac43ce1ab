//! Helpers of `tests/attach.rs` and `tests/resources.rs`: a private scratch directory,
//! fixtures compiled from inline C, commands with a time limit, and the JSON report.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `heaptape` binary under test.
pub const HEAPTAPE: &str = env!("CARGO_BIN_EXE_heaptape");

/// How long any single command may take before the test fails instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// A private directory, removed when the test passes and kept (and named) when it fails.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "heaptape-res-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch directory");
        let path = path.canonicalize().expect("canonicalize scratch directory");
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Compiles `source` (C) into an executable called `name`.
    pub fn compile(&self, name: &str, source: &str) -> PathBuf {
        let src = self.join(&format!("{name}.c"));
        std::fs::write(&src, source).expect("write fixture source");
        let exe = self.join(name);
        let out = Command::new("gcc")
            .args(["-g", "-O0", "-pthread", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .expect("run gcc");
        assert!(
            out.status.success(),
            "gcc failed for {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    }
}

impl Drop for Scratch {
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
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Waits for `child` (whose output goes to `out`/`err` files) at most [`TIMEOUT`].
pub fn wait(mut child: Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion with a time limit, capturing its output through files in
/// `dir` (so that a program that never closes its output cannot hang the test).
pub fn run(dir: &Scratch, cmd: &mut Command, what: &str) -> Run {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let (o, e) = (
        dir.join(&format!("out.{n}.txt")),
        dir.join(&format!("err.{n}.txt")),
    );
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).expect("stdout file"))
        .stderr(std::fs::File::create(&e).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {what}: {err}"));
    let status = wait(child, what);
    Run {
        status,
        stdout: std::fs::read_to_string(&o).unwrap_or_default(),
        stderr: std::fs::read_to_string(&e).unwrap_or_default(),
    }
}

/// `heaptape record -o TRACE ARGS...`, which must succeed.
pub fn record(dir: &Scratch, trace: &Path, args: &[&str]) -> Run {
    let r = run(
        dir,
        Command::new(HEAPTAPE)
            .arg("record")
            .arg("-o")
            .arg(trace)
            .args(args),
        "heaptape record",
    );
    assert!(
        r.status.success(),
        "heaptape record {args:?} failed ({:?}): {}",
        r.status,
        r.stderr
    );
    r
}

/// `heaptape analyze --json TRACE`, parsed.
pub fn analyze_json(dir: &Scratch, trace: &Path) -> Value {
    let r = run(
        dir,
        Command::new(HEAPTAPE)
            .arg("analyze")
            .arg("--json")
            .arg(trace),
        "heaptape analyze --json",
    );
    assert!(
        r.status.success(),
        "heaptape analyze --json {} failed: {}",
        trace.display(),
        r.stderr
    );
    serde_json::from_str(&r.stdout).expect("analyze --json prints JSON")
}

/// `heaptape analyze TRACE` (the text report).
pub fn analyze_text(dir: &Scratch, trace: &Path) -> String {
    let r = run(
        dir,
        Command::new(HEAPTAPE).arg("analyze").arg(trace),
        "heaptape analyze",
    );
    assert!(r.status.success(), "heaptape analyze failed: {}", r.stderr);
    r.stdout
}

/// The process object of `pid` in a JSON report.
pub fn process(report: &Value, pid: u32) -> &Value {
    report["processes"]
        .as_array()
        .expect("processes array")
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in the report"))
}

/// Whether any frame of a JSON stack names `function`.
pub fn stack_has(stack: &Value, function: &str) -> bool {
    stack
        .as_array()
        .is_some_and(|frames| frames.iter().any(|f| f["function"] == function))
}
