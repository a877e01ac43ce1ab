//! Signals: handled signals (including SIGTRAP) reach the program, fatal ones end it as
//! natively with a complete trace, SIGSTOP/SIGCONT and Ctrl-C behave as without heaptape.

mod common;

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn handled_signals_reach_the_program() {
    let dir = TestDir::new("signals");
    let prog = dir.compile("signals.c", "signals", &[]);
    let p = assert_counts_match_valgrind(&dir, "signals", &prog, &[]);
    // SIGTRAP (5) + SIGUSR1 (10) + SIGRTMIN+2 (36) each ran the handler once.
    let native = run_native(&dir, &prog, &[]);
    assert_eq!(native.stdout_str(), "got 51\n");
    assert_eq!(p["exit"], json!({"code": 0}));
    let t = totals(&p);
    assert_eq!((t.allocations, t.frees), (2, 1));
}

#[test]
fn sigsegv_ends_the_program_as_natively_with_a_complete_trace() {
    let dir = TestDir::new("crash");
    let prog = dir.compile("crash.c", "crash", &[]);
    let native = run_native(&dir, &prog, &[]);
    assert_eq!(native.shell_code(), 139);
    let trace = dir.join("crash.trace");
    let recorded = record(&dir, &trace, &[], &prog, &[]);
    assert_same_run(&native, &recorded);
    assert_eq!(recorded.status.code(), Some(139));
    let json = analyze(&trace);
    let p = root_process(&json);
    assert_eq!(p["exit"], json!({"signal": 11}));
    // Known: 10 blocks of 100 bytes and stdout's buffer (4096 bytes on a pipe), none
    // freed; valgrind agrees.
    let t = totals(p);
    assert_eq!((t.allocations, t.frees, t.allocated_bytes), (11, 0, 5096));
    assert_eq!((t.live_at_exit_blocks, t.live_at_exit_bytes), (11, 5096));
    let sites = p["sites_live_at_exit"].as_array().expect("sites");
    assert!(
        sites
            .iter()
            .any(|s| s["live_at_exit_blocks"] == 10 && s["live_at_exit_bytes"] == 1000),
        "no site with the 10 leaked blocks: {sites:?}"
    );
    let (_, vg) = valgrind_single(&dir, &prog, &[]);
    assert_eq!(HeapUsage::of(&t), vg);
}

#[test]
fn sigstop_then_sigcont_completes_normally() {
    let dir = TestDir::new("sigstop");
    let prog = dir.compile("stop.c", "stop", &[]);
    let native = run_native_stopped(&dir, None, &[], &prog);
    assert_eq!(native.stdout_str(), "stopping\ncontinued\n");
    let trace = dir.join("stop.trace");
    let recorded = run_native_stopped(&dir, Some(&trace), &[], &prog);
    assert_same_run(&native, &recorded);
    let json = analyze(&trace);
    let t = totals(root_process(&json));
    // 40 and 50 bytes, both freed, and stdout's buffer.
    assert_eq!((t.allocations, t.frees, t.allocated_bytes), (3, 2, 4186));
}

#[test]
fn sigstop_then_sigcont_with_snapshots_during_the_run() {
    // Snapshots taken while the program is in its group-stop interrupt it there: it
    // must stay stopped until the SIGCONT, then finish as natively.
    let dir = TestDir::new("sigstop-snapshots");
    let prog = dir.compile("stop.c", "stop", &[]);
    let native = run_native_stopped(&dir, None, &[], &prog);
    let trace = dir.join("stop.trace");
    let opts = ["--snapshot-every", "50ms", "--stats"];
    let recorded = run_native_stopped(&dir, Some(&trace), &opts, &prog);
    assert_same_run(&native, &recorded);
    let json = analyze(&trace);
    let t = totals(root_process(&json));
    assert_eq!((t.allocations, t.frees, t.allocated_bytes), (3, 2, 4186));
    let periodic = heaptape_format::TraceReader::open(&trace)
        .expect("trace")
        .records()
        .filter(|r| {
            matches!(
                r,
                Ok(heaptape_format::Record::SnapshotInfo {
                    trigger: heaptape_format::SnapshotTrigger::Periodic,
                    ..
                })
            )
        })
        .count();
    assert!(
        periodic >= 2,
        "{periodic} periodic snapshots; stderr:\n{}",
        recorded.stderr
    );
}

/// `prog args` in `dir`, under `heaptape record -o trace` when `trace` is given, with
/// stdin from /dev/null and stderr piped.
fn native_or_recorded(
    dir: &TestDir,
    trace: Option<&std::path::Path>,
    opts: &[&str],
    prog: &std::path::Path,
    args: &[&str],
) -> Command {
    let mut cmd = match trace {
        Some(t) => record_cmd(dir, t, opts, prog, args),
        None => {
            let mut c = Command::new(prog);
            c.args(args).current_dir(dir.path());
            c
        }
    };
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Runs the stop fixture (under heaptape when `trace` is given), waits for it to stop
/// and continues it with SIGCONT.
fn run_native_stopped(
    dir: &TestDir,
    trace: Option<&std::path::Path>,
    opts: &[&str],
    prog: &std::path::Path,
) -> Run {
    let mut cmd = native_or_recorded(dir, trace, opts, prog, &[]);
    let (child, mut stdout) = spawn_until_line(&mut cmd, "stopping\n");
    let prog_pid = match trace {
        Some(_) => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(pid) = traced_child(child.id()) {
                    break pid;
                }
                assert!(Instant::now() < deadline, "no traced child of heaptape");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        None => child.id(),
    };
    // Wait until it is stopped: 'T' natively; under ptrace a group stop shows as 't'.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = proc_state(prog_pid);
        if st == Some('T') || st == Some('t') {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "program never stopped (state {st:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    if !opts.is_empty() {
        // Recorder options (snapshots during the run): give them time to act on the
        // stopped program, which must still be stopped after.
        std::thread::sleep(Duration::from_millis(300));
        let st = proc_state(prog_pid);
        assert!(
            st == Some('T') || st == Some('t'),
            "the program no longer stopped (state {st:?})"
        );
    }
    // Under ptrace the stop passes through the tracer before it takes effect; a SIGCONT
    // sent in between is overtaken by the stop, so repeat it until the program runs on.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            rest.push_str(&line);
            line.clear();
            let _ = tx.send(());
        }
        rest
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // SAFETY: plain kill(2) on a process we started (or its traced child).
        unsafe { libc::kill(prog_pid as i32, libc::SIGCONT) };
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "program did not continue after SIGCONT"
        );
    }
    let mut run = wait_output(child, "the stop fixture");
    let rest = reader.join().expect("reader");
    run.stdout = format!("stopping\n{rest}").into_bytes();
    run
}

/// Runs the SIGINT fixture in its own process group (under heaptape when `trace` is
/// given), waits for "ready" and sends SIGINT to the whole group, like Ctrl-C.
fn ctrl_c(
    dir: &TestDir,
    trace: Option<&std::path::Path>,
    prog: &std::path::Path,
    args: &[&str],
) -> Run {
    let mut cmd = native_or_recorded(dir, trace, &[], prog, args);
    cmd.process_group(0);
    // A shell without job control starts background commands with SIGINT ignored, and
    // an ignored signal stays ignored across exec: give the run the default action that
    // a terminal's Ctrl-C meets, whatever started the tests.
    // SAFETY: signal(2) is async-signal-safe, the only kind of call allowed between
    // fork and exec; it touches nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let (child, mut stdout) = spawn_until_line(&mut cmd, "ready\n");
    // SAFETY: kill(2) on the process group we just created.
    let rc = unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("stdout");
    let mut run = wait_output(child, "the SIGINT fixture");
    run.stdout = format!("ready\n{rest}").into_bytes();
    run
}

#[test]
fn ctrl_c_with_a_handler_lets_the_program_finish() {
    let dir = TestDir::new("ctrlc-handler");
    let prog = dir.compile("sigint.c", "sigint", &[]);
    let native = ctrl_c(&dir, None, &prog, &["handler"]);
    assert_eq!(native.stdout_str(), "ready\ninterrupted\n");
    assert_eq!(native.shell_code(), 0);
    let trace = dir.join("ctrlc.trace");
    let recorded = ctrl_c(&dir, Some(&trace), &prog, &["handler"]);
    assert_same_run(&native, &recorded);
    let json = analyze(&trace);
    let p = root_process(&json);
    assert_eq!(p["exit"], json!({"code": 0}));
    // The kept block and stdout's buffer; the loop's blocks and the kept one are freed.
    let t = totals(p);
    assert_eq!(t.frees, t.allocations - 1);
    assert_eq!((t.live_at_exit_blocks, t.live_at_exit_bytes), (1, 4096));
    assert_eq!(t.allocated_bytes, 77 + 4096 + 100 * (t.allocations - 2));
}

#[test]
fn ctrl_c_without_a_handler_kills_the_program_and_heaptape_exits_130() {
    let dir = TestDir::new("ctrlc-default");
    let prog = dir.compile("sigint.c", "sigint", &[]);
    let native = ctrl_c(&dir, None, &prog, &[]);
    assert_eq!(native.stdout_str(), "ready\n");
    assert_eq!(native.shell_code(), 130);
    let trace = dir.join("ctrlc.trace");
    let recorded = ctrl_c(&dir, Some(&trace), &prog, &[]);
    assert_same_run(&native, &recorded);
    assert_eq!(recorded.status.code(), Some(130));
    let json = analyze(&trace);
    let p = root_process(&json);
    assert_eq!(p["exit"], json!({"signal": 2}));
    let t = totals(p);
    // Killed in its loop: the kept block and stdout's buffer are live, at most one loop
    // block is (if the signal came between its malloc and free).
    assert!(
        t.live_at_exit_blocks == 2 || t.live_at_exit_blocks == 3,
        "{t:?}"
    );
    assert_eq!(
        t.live_at_exit_bytes,
        77 + 4096 + 100 * (t.live_at_exit_blocks - 2)
    );
}

/// Signals delivered while calls are between their hooked entry and the recorder's stop
/// (the entry trampoline's window), SIGTRAP included, with handlers on an alternate
/// stack that call a hooked function: the program runs to its end and every call of its
/// loop is in the trace exactly once, with its result.
#[test]
fn signals_in_the_middle_of_allocator_calls_lose_nothing() {
    let dir = TestDir::new("signal_storm");
    let prog = dir.compile("signal_storm.c", "signal_storm", &["-pthread"]);
    let trace = dir.join("storm.trace");
    let rec = record(&dir, &trace, &[], &prog, &["20000"]);
    assert_eq!(rec.status.code(), Some(0), "{}", rec.stderr);
    let out = rec.stdout_str();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 4, "unexpected output {out:?}");
    let (loop_n, handlers): (u64, u64) = (words[1].parse().unwrap(), words[3].parse().unwrap());
    assert_eq!(loop_n, 20000);
    assert!(handlers > 0, "no signal reached a handler");

    let dump = run(heaptape().arg("dump").arg(&trace));
    assert!(dump.status.success(), "{}", dump.stderr);
    let text = dump.stdout_str();
    let (mut in_loop, mut missing_result) = (0u64, 0u64);
    for line in text.lines().filter(|l| l.starts_with("Alloc {")) {
        let field = |name: &str| -> u64 {
            let rest = &line[line.find(name).expect("field") + name.len()..];
            rest.split([',', ' ']).next().unwrap().parse().unwrap()
        };
        if !(5000..=5255).contains(&field("size: ")) {
            continue;
        }
        in_loop += 1;
        if field("address: ") == 0 {
            missing_result += 1;
        }
    }
    assert_eq!(in_loop, loop_n);
    assert_eq!(missing_result, 0);
    // The trace is complete and reads back without warnings.
    analyze(&trace);
}

/// Allocations in threads that block SIGTRAP (and in a SIGTRAP handler) leave the
/// program's SIGTRAP handling as it was: it still catches the SIGTRAPs it raises later.
#[test]
fn threads_blocking_sigtrap_keep_the_programs_sigtrap_handler() {
    let dir = TestDir::new("sigtrap_blocked");
    let prog = dir.compile("sigtrap_blocked.c", "sigtrap_blocked", &["-pthread"]);
    let native = run_native(&dir, &prog, &[]);
    assert_eq!(native.stdout_str(), "caught 2\n");
    let trace = dir.join("blocked.trace");
    let rec = record(&dir, &trace, &[], &prog, &[]);
    assert_same_run(&native, &rec);
    let p = root_process(&analyze(&trace)).clone();
    let t = totals(&p);
    // The worker's 1000, the two in the handler, stdout's buffer, the thread's own.
    assert!(t.allocations >= 1003, "{t:?}");
}

/// Allocates a little, then dies of SIGSEGV.
const CRASH_C: &str = r#"
#include <stdlib.h>
#include <string.h>
int main(void) {
    for (int i = 0; i < 100; i++) memset(malloc(1000), i, 1000);
    *(volatile int *)0 = 1;
    return 0;
}
"#;

/// The core file a crash in `dir` left (`core` or `core.PID`), removed.
fn take_core(dir: &TestDir) -> Option<u64> {
    let f = std::fs::read_dir(dir.path())
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("core"))?;
    let len = f.metadata().ok()?.len();
    std::fs::remove_file(f.path()).ok()?;
    Some(len)
}

#[test]
fn a_core_dump_holds_what_it_holds_natively() {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pattern = pattern.trim();
    if !pattern.starts_with("core") || pattern.contains('/') {
        eprintln!("core_pattern is {pattern:?} (not a file in the working directory): not checked");
        return;
    }
    let dir = TestDir::new("core-dump");
    let prog = dir.compile_c("crash", CRASH_C);
    let under_ulimit = |cmd: &str| {
        run(std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -c unlimited && exec {cmd}"))
            .current_dir(dir.path()))
    };
    let native = under_ulimit(&prog.display().to_string());
    assert_eq!(native.shell_code(), 139, "{}", native.stderr);
    let Some(native_core) = take_core(&dir) else {
        eprintln!("no core dump natively (limits or policy): not checked");
        return;
    };
    let recorded = under_ulimit(&format!(
        "{} record -o t.trace -- {}",
        env!("CARGO_BIN_EXE_heaptape"),
        prog.display()
    ));
    assert_eq!(recorded.status.code(), Some(139), "{}", recorded.stderr);
    let core = take_core(&dir).expect("a core dump under heaptape");
    // The probe memory, the trampolines and the patched code stay out of it.
    assert!(
        core.abs_diff(native_core) * 10 <= native_core,
        "core dump: {core} bytes under heaptape, {native_core} natively"
    );
}
