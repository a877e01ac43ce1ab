//! `heaptape record --pid`: attaching to a running program leaves it undisturbed (same
//! output and exit status as a native run, also after 20 attach/detach cycles), records
//! what happens in the window (leaks counted exactly), and refuses clearly when there is
//! no such process or when another tracer holds it.

mod common;

use std::io::{BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Four threads run a fixed, seeded allocation workload and sum what they read back;
/// then they keep allocating (outside the sum) until stdin reaches end of file. Prints
/// `ready`, then the checksum; exits with status 3.
const WORKER_C: &str = r#"
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#define THREADS 4
#define ITERS 300000
static atomic_int stop;
static unsigned long sums[THREADS];
static void *work(void *arg) {
    long id = (long)arg;
    unsigned long sum = 0, x = (unsigned long)id + 1;
    struct timespec nap = {0, 1000 * 1000};
    for (long i = 0;; i++) {
        if (i < ITERS) {
            x = x * 6364136223846793005UL + 1442695040888963407UL;
            size_t n = 16 + (x >> 33) % 512;
            unsigned char *p = malloc(n);
            memset(p, (int)(x & 0xff), n);
            sum = sum * 31 + p[n - 1] + n;
            free(p);
        } else {
            if (atomic_load(&stop)) break;
            void *p = malloc(64);
            free(p);
            if (i % 100 == 0) nanosleep(&nap, 0);
        }
    }
    sums[id] = sum;
    return 0;
}
int main(void) {
    printf("ready\n");
    fflush(stdout);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], 0, work, (void *)i);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    atomic_store(&stop, 1);
    unsigned long total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], 0);
        total = total * 1000003 + sums[i];
    }
    printf("checksum %lu\n", total);
    return 3;
}
"#;

/// Leaks one 64-byte block every 10 ms (absolute deadlines, so the rate is steady) by
/// overwriting the only pointer to it, and leaks a descriptor of argv[1] every tenth
/// block. Prints `ready` first; runs until killed.
const LEAKER_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static void *volatile current;
int main(int argc, char **argv) {
    printf("ready\n");
    fflush(stdout);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (unsigned long i = 1;; i++) {
        next.tv_nsec += 10 * 1000 * 1000;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, 0);
        void *p = malloc(64);
        memset(p, 0x5a, 64);
        current = p; /* the previous block is now lost */
        if (i % 10 == 0 && argc > 1) open(argv[1], O_RDONLY);
    }
}
"#;

/// Writes its pid to argv[1] (atomically) and waits for stdin to close.
const SLEEPER_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
    FILE *f = fopen(tmp, "w");
    fprintf(f, "%d\n", getpid());
    fclose(f);
    rename(tmp, argv[1]);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}
"#;

/// A running fixture whose first output line (`ready`) has been read; killed if dropped
/// while still running (a test failing midway).
struct Running {
    child: Option<Child>,
    stdout: Option<BufReader<ChildStdout>>,
    pid: u32,
}

impl Running {
    fn start(exe: &Path, args: &[&str]) -> Running {
        let (child, stdout) = spawn_until_line(
            std::process::Command::new(exe)
                .args(args)
                .stdin(Stdio::piped())
                .stderr(Stdio::inherit()),
            "ready\n",
        );
        Running {
            pid: child.id(),
            child: Some(child),
            stdout: Some(stdout),
        }
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    /// Closes its stdin and waits for it: (the rest of its output, its status).
    fn finish(mut self) -> (String, ExitStatus) {
        let mut child = self.child.take().expect("running");
        let mut stdout = self.stdout.take().expect("running");
        drop(child.stdin.take());
        let reader = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
            rest
        });
        let status = wait(child, "fixture");
        (reader.join().expect("reader thread"), status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The worker's output and status when nothing attaches to it.
fn native(exe: &Path) -> (String, ExitStatus) {
    let run = Running::start(exe, &[]);
    std::thread::sleep(Duration::from_millis(200));
    run.finish()
}

fn attach(pid: u32, duration: &str, trace: &Path) -> Run {
    run(heaptape()
        .args([
            "record",
            "--pid",
            &pid.to_string(),
            "--duration",
            duration,
            "-o",
        ])
        .arg(trace))
}

#[test]
fn attaching_leaves_a_multithreaded_program_undisturbed() {
    let dir = TestDir::new("attach-once");
    let exe = dir.compile_c("worker", WORKER_C);
    let (want_out, want_status) = native(&exe);
    assert!(want_out.starts_with("checksum "), "{want_out}");
    assert_eq!(want_status.code(), Some(3));

    let run = Running::start(&exe, &[]);
    std::thread::sleep(Duration::from_millis(200));
    let trace = dir.join("once.trace");
    let rec = attach(run.pid(), "1s", &trace);
    assert!(rec.status.success(), "record --pid failed: {}", rec.stderr);
    let (out, status) = run.finish();
    assert_eq!(out, want_out);
    assert_eq!(status.code(), want_status.code());

    let report = analyze_json(&trace);
    let p = traced_process(&report);
    assert_eq!(p["origin"], "attached");
    assert_eq!(p["exit"]["detached"], true);
    assert!(
        p["totals"]["allocations"].as_u64().unwrap() > 0,
        "{}",
        p["totals"]
    );
}

#[test]
fn twenty_attach_detach_cycles_on_one_process() {
    let dir = TestDir::new("attach-20");
    let exe = dir.compile_c("worker", WORKER_C);
    let (want_out, want_status) = native(&exe);
    let run = Running::start(&exe, &[]);
    for i in 0..20 {
        let trace = dir.join(format!("cycle{i}.trace"));
        let rec = attach(run.pid(), "100ms", &trace);
        assert!(
            rec.status.success(),
            "cycle {i}: record --pid failed: {}",
            rec.stderr
        );
        let report = analyze_json(&trace);
        assert_eq!(report["trace"]["complete"], true, "cycle {i}");
        let p = process(&report, run.pid());
        assert_eq!(p["origin"], "attached", "cycle {i}");
        assert_eq!(p["exit"]["detached"], true, "cycle {i}");
    }
    let (out, status) = run.finish();
    assert_eq!(out, want_out);
    assert_eq!(status.code(), want_status.code());
}

/// The recorder's mappings in `pid`: probe memory lines in its maps, and its VmSize.
fn recorder_mappings(pid: u32) -> (usize, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let probes = maps
        .lines()
        .filter(|l| l.contains("heaptape-probe"))
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let vm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("pid {pid} is gone: {status}"));
    (probes, vm_kib)
}

/// An upper bound of one session's probe memory, in KiB: the ring region and 64 MiB for
/// the rest (code, slots, thread areas: about 10 MiB).
fn one_session_kib() -> u64 {
    use heaptape_recorder::low_level::ring;
    let rings = ring::AREAS_OFF
        + ring::DEFAULT_AREAS as usize * (ring::HEADER_BYTES + ring::DEFAULT_RING_BYTES);
    (rings as u64 + (64 << 20)) / 1024
}

#[test]
fn a_hundred_attaches_leave_at_most_one_sessions_mappings() {
    // Four threads allocate without pause: a detach often finds one inside malloc, whose
    // session's probe memory and trampoline page then stay (it returns through them);
    // the next attach or detach removes them. Never more than one session's.
    let dir = TestDir::new("attach-100");
    let exe = dir.compile_c("worker", WORKER_C);
    let (want_out, want_status) = native(&exe);
    let run = Running::start(&exe, &[]);
    // Its threads and their malloc arenas exist by then.
    std::thread::sleep(Duration::from_millis(300));
    let (none, vm_before) = recorder_mappings(run.pid());
    assert_eq!(none, 0);
    for i in 0..100 {
        let trace = dir.join("cycle.trace");
        let rec = attach(run.pid(), "10ms", &trace);
        assert!(rec.status.success(), "cycle {i}: {}", rec.stderr);
        let (probes, vm) = recorder_mappings(run.pid());
        assert!(probes <= 2, "cycle {i}: {probes} probe mappings");
        // One session's probe memory is its ring region (one ring per thread slot)
        // and about 10 MiB besides, of (sparse) address space.
        assert!(
            vm <= vm_before + one_session_kib(),
            "cycle {i}: VmSize {vm_before} -> {vm} KiB"
        );
    }
    let (out, status) = run.finish();
    assert_eq!(out, want_out);
    assert_eq!(status.code(), want_status.code());
}

/// A thread sleeps inside a hooked function (`my_malloc`, hooked with
/// `--allocator-prefix my_`) for most of the time; prints `done` and exits with 5.
const SLOW_ALLOC_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) void *my_malloc(size_t n) { usleep(200000); return malloc(n); }
int main(void) {
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < 12; i++) free(my_malloc(100));
    printf("done\n");
    return 5;
}
"#;

#[test]
fn mappings_a_thread_is_inside_stay_until_it_is_out() {
    let dir = TestDir::new("attach-inside");
    let exe = dir.compile_c("slow", SLOW_ALLOC_C);
    let slow = Running::start(&exe, &[]);
    let mut kept = Vec::new();
    for i in 0..3 {
        let trace = dir.join(format!("inside{i}.trace"));
        let rec = run(heaptape()
            .args(["record", "--allocator-prefix", "my_", "--pid"])
            .arg(slow.pid().to_string())
            .args(["--duration", "300ms", "-o"])
            .arg(&trace));
        assert!(rec.status.success(), "{}", rec.stderr);
        kept.push(recorder_mappings(slow.pid()).0);
    }
    // Each detach finds the thread asleep inside my_malloc, called through this
    // session's trampoline: that session's probe stays, the earlier ones are gone.
    assert_eq!(kept, vec![2, 2, 2]);
    let (out, status) = slow.finish();
    assert_eq!(out, "done\n");
    assert_eq!(status.code(), Some(5));
}

#[test]
fn leaks_during_the_window_are_counted() {
    let dir = TestDir::new("attach-leak");
    let exe = dir.compile_c("leaker", LEAKER_C);
    let file = dir.join("opened.txt");
    std::fs::write(&file, "x").unwrap();
    let run = Running::start(&exe, &[file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    let trace = dir.join("leak.trace");
    let start = Instant::now();
    let rec = attach(run.pid(), "2s", &trace);
    let took = start.elapsed();
    assert!(rec.status.success(), "record --pid failed: {}", rec.stderr);
    drop(run); // kills the leaker
    assert!(took >= Duration::from_secs(2), "detached after {took:?}");

    let report = analyze_json(&trace);
    let p = traced_process(&report);
    let allocations = p["totals"]["allocations"].as_u64().unwrap();
    let lost = p["leaks"]["definitely_lost"]["blocks"]
        .as_u64()
        .unwrap_or_else(|| panic!("no leak classification: {}", p["leaks_unavailable"]));
    // 100 blocks/s over 2 s; generous bounds for a loaded machine.
    assert!(
        (20..=1000).contains(&allocations),
        "{allocations} allocations"
    );
    // Every block but the latest few (still in `current`, a register or the stack)
    // is definitely lost.
    assert!(
        lost <= allocations && lost + 2 >= allocations,
        "{lost} definitely lost of {allocations} leak allocations"
    );
    assert_eq!(p["leaks"]["definitely_lost"]["bytes"], lost * 64);
    // The descriptors opened during the window are still open at detach.
    let fds = p["fd_leaks"].as_array().unwrap();
    assert!(!fds.is_empty(), "no fd leaks");
    assert!(fds.iter().all(|f| f["path"] == file.to_str().unwrap()));
    assert!(fds.len() as u64 <= allocations / 10 + 1);
    let text = analyze_text(&trace);
    assert!(
        text.contains(&format!(
            "FILE DESCRIPTORS: {} open at detach (opened by the program)",
            fds.len()
        )),
        "{text}"
    );
}

#[test]
fn a_missing_process_is_a_one_line_error() {
    let dir = TestDir::new("attach-missing");
    // Beyond PID_MAX_LIMIT (4194304 on 64-bit): no process can have this pid.
    let r = run(heaptape()
        .args(["record", "--pid", "4194400", "-o"])
        .arg(dir.join("none.trace")));
    assert!(!r.status.success());
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("no process"), "{}", r.stderr);
}

/// `heaptape record --pid PID` refused with one line that contains every one of `want`.
fn refused(dir: &TestDir, pid: u32, want: &[&str]) {
    let r = run(heaptape()
        .args(["record", "--pid", &pid.to_string(), "-o"])
        .arg(dir.join("refused.trace")));
    assert!(!r.status.success(), "pid {pid}: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    for w in want {
        assert!(r.stderr.contains(w), "pid {pid}: {w:?} not in {}", r.stderr);
    }
    assert!(!r.stderr.contains("seccomp"), "pid {pid}: {}", r.stderr);
    assert!(!dir.join("refused.trace").exists());
}

/// The main thread leaves with pthread_exit while another thread sleeps.
const LEADER_EXITS_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *w(void *a) { (void)a; sleep(5); return 0; }
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, w, 0);
    printf("ready\n");
    fflush(stdout);
    pthread_exit(0);
}
"#;

#[test]
fn refusals_say_what_is_really_the_matter() {
    let dir = TestDir::new("attach-refusals");
    // A zombie: a child that exited and was not reaped yet.
    let mut z = std::process::Command::new("true").spawn().unwrap();
    let zpid = z.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_state(zpid) != Some('Z') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    refused(&dir, zpid, &["has exited", "zombie"]);
    z.wait().unwrap();
    // A process whose main thread called pthread_exit.
    let exe = dir.compile_c("leader_exits", LEADER_EXITS_C);
    let run_ = Running::start(&exe, &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_state(run_.pid()) != Some('Z') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    refused(&dir, run_.pid(), &["main thread has exited"]);
    drop(run_);
    // A kernel thread, when this PID namespace shows one (not in most containers).
    let kthread = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| s.lines().any(|l| l == "Kthread:\t1"))
        });
    match kthread {
        Some(pid) => refused(&dir, pid, &["kernel thread"]),
        None => eprintln!("no kernel thread visible: that case is not checked"),
    }
    // heaptape itself.
    let me = run(std::process::Command::new("sh").arg("-c").arg(format!(
        "exec {} record --pid $$ -o {}",
        env!("CARGO_BIN_EXE_heaptape"),
        dir.join("self.trace").display()
    )));
    assert!(!me.status.success());
    assert!(me.stderr.contains("this heaptape process"), "{}", me.stderr);
    // --duration belongs to --pid.
    let r = run(heaptape()
        .args(["record", "--duration", "1s", "-o"])
        .arg(dir.join("d.trace"))
        .args(["--", "true"]));
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("needs --pid"), "{}", r.stderr);
}

/// Two threads allocate and count; the main thread writes the sum to the file named by
/// argv[1] every millisecond (whole: written aside, then renamed).
const COUNTER_C: &str = r#"
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static atomic_long count;
static void *work(void *a) {
    (void)a;
    for (;;) {
        void *volatile p = malloc(32);
        free(p);
        atomic_fetch_add(&count, 1);
        usleep(50);
    }
    return 0;
}
int main(int argc, char **argv) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, work, 0);
    printf("ready\n");
    fflush(stdout);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
    for (;;) {
        FILE *f = fopen(tmp, "w");
        fprintf(f, "%ld\n", atomic_load(&count));
        fclose(f);
        rename(tmp, argv[1]); /* readers never see a half-written file */
        usleep(1000);
    }
}
"#;

#[test]
fn a_stopped_process_stays_stopped_while_attached() {
    let dir = TestDir::new("attach-stopped");
    let exe = dir.compile_c("counter", COUNTER_C);
    let file = dir.join("count");
    let counter = Running::start(&exe, &[file.to_str().unwrap()]);
    let pid = counter.pid();
    let count = || -> u64 {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(count() > 0, "the counter does not count");
    run(std::process::Command::new("kill").args(["-STOP", &pid.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_state(pid) != Some('T') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let before = count();
    let trace = dir.join("stopped.trace");
    let rec = attach(pid, "500ms", &trace);
    assert!(rec.status.success(), "{}", rec.stderr);
    assert_eq!(count(), before, "the stopped process ran while attached");
    assert_eq!(proc_state(pid), Some('T'));
    let report = analyze_json(&trace);
    assert_eq!(traced_process(&report)["totals"]["allocations"], 0);
    // SIGCONT during a recording: it runs on and is recorded.
    let cont = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        run(std::process::Command::new("kill").args(["-CONT", &pid.to_string()]));
    });
    let trace = dir.join("continued.trace");
    let rec = attach(pid, "1s", &trace);
    cont.join().unwrap();
    assert!(rec.status.success(), "{}", rec.stderr);
    assert!(count() > before, "it did not go on after SIGCONT");
    assert_ne!(proc_state(pid), Some('T'));
    let report = analyze_json(&trace);
    let allocations = traced_process(&report)["totals"]["allocations"]
        .as_u64()
        .unwrap();
    assert!(allocations > 100, "{allocations} allocations after SIGCONT");
}

#[test]
fn a_process_traced_by_another_heaptape_is_refused() {
    let dir = TestDir::new("attach-busy");
    let exe = dir.compile_c("sleeper", SLEEPER_C);
    let pidfile = dir.join("pid");
    let mut first = heaptape()
        .arg("record")
        .arg("-o")
        .arg(dir.join("first.trace"))
        .arg(&exe)
        .arg(&pidfile)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start heaptape record");
    let start = Instant::now();
    let pid = loop {
        // The file may exist before the pid is written into it: poll until it parses.
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            break p;
        }
        if start.elapsed() > TIMEOUT {
            let _ = first.kill();
            panic!("the sleeper never started");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = attach(pid, "1s", &dir.join("second.trace"));
    drop(first.stdin.take()); // the sleeper, then the first recorder, exit
    let first_status = wait(first, "first heaptape record");
    assert!(!r.status.success());
    assert!(r.stderr.contains("already being traced"), "{}", r.stderr);
    assert!(first_status.success(), "{first_status:?}");
}
