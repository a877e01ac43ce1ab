//! Bad input and failing environments: missing or non-executable programs, an
//! unwritable trace path, a disk that fills up while recording, and ptrace refused
//! (heaptape nested under heaptape).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error expected: {stderr:?}");
    lines[0]
}

#[test]
fn missing_program_exits_127() {
    let dir = TestDir::new("missing");
    let trace = dir.join("t.trace");
    for prog in [
        dir.join("no-such-program")
            .to_str()
            .expect("utf-8")
            .to_string(),
        "heaptape-no-such-program-in-path".to_string(),
    ] {
        let res = record(&dir, &trace, &[], &prog, &[]);
        assert_eq!(res.status.code(), Some(127), "{prog}: {}", res.stderr);
        let line = one_line(&res.stderr);
        assert!(
            line.contains("command not found") && line.contains(&prog),
            "{line}"
        );
        assert_eq!(res.stdout, b"");
    }
}

#[test]
fn non_executable_file_exits_126() {
    let dir = TestDir::new("noexec");
    let file = dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\necho ran\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let res = record(&dir, &dir.join("t.trace"), &[], &file, &[]);
    assert_eq!(res.status.code(), Some(126), "{}", res.stderr);
    let line = one_line(&res.stderr);
    assert!(line.contains("not-executable"), "{line}");
    assert_eq!(res.stdout, b"");
    // A directory cannot be executed either.
    let res = record(&dir, &dir.join("t.trace"), &[], dir.path(), &[]);
    assert_eq!(res.status.code(), Some(126), "{}", res.stderr);
}

#[test]
fn a_script_without_a_shebang_runs_with_sh_as_a_shell_would() {
    let dir = TestDir::new("noshebang");
    let script = dir.join("plain-script");
    std::fs::write(&script, "echo \"sh ran $1\"\nexit 3\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Natively, as a shell runs it (std's Command does not fall back to sh).
    let script_s = script.to_str().expect("utf-8");
    let native = run_native(&dir, "sh", &["-c", "\"$0\" \"$1\"", script_s, "x"]);
    assert_eq!(native.shell_code(), 3);
    let trace = dir.join("t.trace");
    let res = record(&dir, &trace, &[], &script, &["x"]);
    assert_same_run(&native, &res);
    assert_eq!(res.stdout_str(), "sh ran x\n");
    // The script (run by the shell) is the recorded process, with the script's status.
    let json = analyze_json(&trace);
    let root = root_process(&json);
    assert!(
        root["command"].to_string().contains("plain-script"),
        "{root}"
    );
    assert_eq!(root["exit"], serde_json::json!({"code": 3}));
}

#[test]
fn a_script_whose_interpreter_is_missing_names_it() {
    let dir = TestDir::new("badinterp");
    let script = dir.join("script");
    std::fs::write(&script, "#!/no/such/interpreter -x\necho ran\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let res = record(&dir, &dir.join("t.trace"), &[], &script, &[]);
    assert_eq!(res.status.code(), Some(127), "{}", res.stderr);
    let line = one_line(&res.stderr);
    assert!(
        line.contains("/no/such/interpreter") && line.contains("bad interpreter"),
        "{line}"
    );
    assert!(!line.contains("command not found"), "{line}");
}

#[test]
fn unwritable_trace_path_fails_before_the_program_runs() {
    let dir = TestDir::new("unwritable");
    let marker = dir.join("marker");
    let trace = dir.join("no-such-dir/sub/t.trace");
    let res = record(
        &dir,
        &trace,
        &[],
        "touch",
        &[marker.to_str().expect("utf-8")],
    );
    assert_ne!(res.status.code(), Some(0), "{}", res.stderr);
    assert!(res.status.code().is_some(), "heaptape died of a signal");
    let line = one_line(&res.stderr);
    assert!(
        line.contains("no-such-dir/sub/t.trace") && line.contains("No such file or directory"),
        "{line}"
    );
    assert!(
        !marker.exists(),
        "the program ran although the trace could not be written"
    );
    assert!(!trace.exists());
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(dir: std::path::PathBuf, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let res = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir));
        if res.status.success() {
            Ok(Tmpfs { dir })
        } else {
            Err(format!(
                "mount failed ({:?}): {}",
                res.status,
                res.stderr.trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[test]
fn full_disk_leaves_the_program_alone_and_the_trace_readable() {
    let dir = TestDir::new("fulldisk");
    let prog = dir.compile("threads.c", "threads", &["-pthread"]);
    // A million malloc/free pairs need about 600 KiB of trace, over four times the
    // 128 KiB the file system holds (one chunk fits).
    let args = ["1", "1000000"];
    let fs = match Tmpfs::mount(dir.join("small"), "128k") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED full_disk_leaves_the_program_alone_and_the_trace_readable: {why}");
            return;
        }
    };
    let native = run_native(&dir, &prog, &args);
    let trace = fs.dir.join("t.trace");
    let recorded = record(&dir, &trace, &["--cpu", "same"], &prog, &args);
    assert_eq!(recorded.stdout, native.stdout, "program output changed");
    assert_eq!(native.shell_code(), 0);
    assert_eq!(recorded.status.code(), Some(1), "{}", recorded.stderr);
    assert!(
        recorded.stderr.contains("No space left on device"),
        "no clear error: {}",
        recorded.stderr
    );
    let (res, json) = analyze_raw(&trace);
    assert!(res.status.success(), "analyze failed: {}", res.stderr);
    assert!(
        res.stderr.contains("truncated"),
        "no truncation warning: {}",
        res.stderr
    );
    assert_eq!(json["trace"]["complete"], false);
    assert!(!json["trace"]["truncation"].is_null());
    let t = totals(root_process(&json));
    assert!(t.allocations > 1000 && t.allocations < 1_000_000, "{t:?}");
    // The summary counts what the file holds, and says how much more was recorded.
    let first = recorded.stderr.lines().next().unwrap_or("");
    let held: u64 = first
        .strip_prefix("heaptape: recorded ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count: {}", recorded.stderr));
    assert_eq!(held, t.allocations + t.frees, "{}", recorded.stderr);
    assert!(
        recorded
            .stderr
            .contains(&format!("it holds {held} of the ")),
        "{}",
        recorded.stderr
    );
    // Every pair before the cut is whole: at most one block is pending, plus stdio's.
    assert!(t.allocations - t.frees <= 2, "{t:?}");
    drop(fs);
}

#[test]
fn nested_heaptape_reports_ptrace_refused() {
    let dir = TestDir::new("nested");
    let outer = dir.join("outer.trace");
    let inner = dir.join("inner.trace");
    let inner_s = inner.to_str().expect("utf-8");
    let res = record(
        &dir,
        &outer,
        &[],
        HEAPTAPE,
        &["record", "-o", inner_s, "--", "/bin/true"],
    );
    // The inner heaptape cannot trace its child: it says so and fails; the outer one
    // passes its status on and records it completely.
    assert_eq!(res.status.code(), Some(1), "{}", res.stderr);
    assert!(
        res.stderr
            .contains("cannot trace /bin/true: ptrace is not permitted"),
        "{}",
        res.stderr
    );
    let native_line = res
        .stderr
        .lines()
        .filter(|l| l.contains("ptrace is not permitted"))
        .count();
    assert_eq!(native_line, 1);
    let json = analyze(&outer);
    let p = root_process(&json);
    assert_eq!(p["exit"], serde_json::json!({"code": 1}));
    assert!(totals(p).allocations > 0);
}
