//! Recorder overhead, measured side by side in one run (machines here are shared and
//! noisy, so only ratios of figures taken together mean anything):
//!
//! 1. the floor: a bare ptrace stop (int3, waitpid, CONT) with tracer and tracee on the
//!    same CPU, on different CPUs, and unpinned; plus the same stop with the recorder's
//!    hot-path system calls (GETREGS, a 4 KiB process_vm_readv, SETREGS);
//! 2. heaptape `--mode stop`'s cost per allocator call on an allocation loop, as a ratio
//!    to the floor, and its stops per call (from `record --stats`; ring mode's too);
//! 3. wall-clock slowdown against the native run for heaptape (ring mode, the default,
//!    and `--mode stop` pinned and unpinned), heaptrack and memcheck on
//!    an allocation loop, a 4-thread allocation loop and a compute-heavy program.
//!
//! Run: `cargo bench --bench recorder_overhead` (add `-- --quick` for fewer repetitions).
//! Figures and the command are kept in docs/PERFORMANCE.md.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use heaptape_recorder::low_level::{self as sys, WaitEvent};

mod support;
use support::{have, median, time_cmd};

const HEAPTAPE: &str = env!("CARGO_BIN_EXE_heaptape");

fn compile(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    // The thread loop is the test fixture; the others are benchmark programs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = if name == "threads" {
        root.join("tests/fixtures/threads.c")
    } else {
        root.join("benches/programs").join(format!("{name}.c"))
    };
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(["-O2", "-fno-builtin", "-g", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "compiling {name}");
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Placement {
    Same,
    Cross,
    Free,
}

/// Microseconds per stop of a tracer that only CONTs (`full`: plus the hot-path calls).
fn bare_stop_us(prog: &Path, n: u64, placement: Placement, full: bool) -> f64 {
    let cpus = sys::allowed_cpus();
    let (a, b) = (cpus[0], *cpus.last().unwrap());
    match placement {
        Placement::Same | Placement::Cross => sys::pin_current_thread(&[a]).unwrap(),
        Placement::Free => sys::pin_current_thread(&cpus).unwrap(),
    }
    let path = CString::new(prog.to_str().unwrap()).unwrap();
    let argv = [path.clone(), CString::new(n.to_string()).unwrap()];
    let pid = sys::spawn_seized(&path, &argv).expect("spawn");
    if placement == Placement::Cross {
        sys::pin_current_thread(&[b]).unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let mut stops = 0u64;
    let mut start = None;
    loop {
        match sys::wait_blocking(pid).expect("wait") {
            WaitEvent::Signal { sig: libc::SIGTRAP } => {
                stops += 1;
                if stops == 100 {
                    start = Some(Instant::now());
                }
                if full {
                    let regs = sys::get_regs(pid).unwrap();
                    let _ = sys::read_memory(pid, regs.rsp, &mut buf);
                    sys::set_regs(pid, &regs).unwrap();
                }
                sys::cont(pid, 0).unwrap();
            }
            WaitEvent::Exited { .. } | WaitEvent::Signaled { .. } => break,
            _ => sys::cont(pid, 0).unwrap(),
        }
    }
    let elapsed = start.expect("enough stops").elapsed();
    sys::pin_current_thread(&cpus).unwrap();
    elapsed.as_secs_f64() * 1e6 / (stops - 100) as f64
}

struct Tools<'a> {
    dir: &'a Path,
    reps: usize,
}

impl Tools<'_> {
    fn run(&self, tool: &str, prog: &Path, args: &[String]) -> f64 {
        let trace = self.dir.join("bench.trace");
        median(
            (0..self.reps)
                .map(|_| {
                    let mut cmd = match tool {
                        "native" => Command::new(prog),
                        "heaptape-ring" => {
                            let mut c = Command::new(HEAPTAPE);
                            c.args(["record", "-o"]).arg(&trace).arg("--").arg(prog);
                            c
                        }
                        "heaptape-stop-same" | "heaptape-stop-free" => {
                            let mut c = Command::new(HEAPTAPE);
                            c.args(["record", "--mode", "stop", "--cpu", &tool[14..], "-o"])
                                .arg(&trace)
                                .arg("--")
                                .arg(prog);
                            c
                        }
                        "heaptrack" => {
                            let mut c = Command::new("heaptrack");
                            c.arg("-o").arg(self.dir.join("ht")).arg(prog);
                            c
                        }
                        "memcheck" => {
                            let mut c = Command::new("valgrind");
                            c.args(["-q", "--tool=memcheck"]).arg(prog);
                            c
                        }
                        _ => unreachable!(),
                    };
                    cmd.args(args);
                    time_cmd(&mut cmd).as_secs_f64()
                })
                .collect(),
        )
    }
}

fn stats_line(prog: &Path, args: &[String], dir: &Path, mode: &str) -> String {
    let out = Command::new(HEAPTAPE)
        .args(["record", "--stats", "--cpu", "same", "--mode", mode, "-o"])
        .arg(dir.join("stats.trace"))
        .arg("--")
        .arg(prog)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("heaptape runs");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("stops:") || l.contains("tracer:") || l.contains("ring:"))
        .map(|l| l.trim_start_matches("heaptape: ").to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 3 };
    let dir = std::env::temp_dir().join(format!("heaptape-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let int3 = compile(&dir, "int3_loop", &[]);
    let alloc = compile(&dir, "alloc_loop", &[]);
    let threads = compile(&dir, "threads", &["-lpthread"]);
    let compute = compile(&dir, "compute", &[]);

    println!("## Bare ptrace stop (us per stop, median of {reps})");
    let n_stops = 20_000;
    let mut floor = std::collections::HashMap::new();
    for (name, p) in [
        ("same CPU", Placement::Same),
        ("other CPU", Placement::Cross),
        ("unpinned", Placement::Free),
    ] {
        let bare = median(
            (0..reps)
                .map(|_| bare_stop_us(&int3, n_stops, p, false))
                .collect(),
        );
        let full = median(
            (0..reps)
                .map(|_| bare_stop_us(&int3, n_stops, p, true))
                .collect(),
        );
        println!("| {name} | int3+waitpid+CONT {bare:.1} us | + GETREGS, readv 4 KiB, SETREGS {full:.1} us |");
        floor.insert(name, (bare, full));
    }

    let tools = Tools { dir: &dir, reps };
    let n_pairs: u64 = if quick { 20_000 } else { 50_000 };
    let calls = (2 * n_pairs) as f64;
    let alloc_args = vec![n_pairs.to_string()];
    let small_args = vec![(n_pairs / 10).to_string()];
    // Interleaved with the floor, round by round, so that both see the same load; per
    // call is differential, (t(N) - t(N/10)) / (0.9 N calls), which removes start-up,
    // hooking and the exit snapshot; the ratio is taken per round, then the median.
    let rounds = if quick { 3 } else { 9 };
    let once = Tools { dir: &dir, reps: 1 };
    println!(
        "\n## heaptape --mode stop per allocator call ({} calls, alloc_loop, median of {rounds} interleaved rounds)",
        2 * n_pairs
    );
    for (policy, tool, placement) in [
        ("same", "heaptape-stop-same", Placement::Same),
        ("free", "heaptape-stop-free", Placement::Free),
    ] {
        let (mut per_calls, mut bares, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let bare = bare_stop_us(&int3, n_stops, placement, false);
            let t = once.run(tool, &alloc, &alloc_args);
            let t_small = once.run(tool, &alloc, &small_args);
            let native =
                once.run("native", &alloc, &alloc_args) - once.run("native", &alloc, &small_args);
            let per_call = ((t - t_small) - native) * 1e6 / (0.9 * calls);
            per_calls.push(per_call);
            bares.push(bare);
            ratios.push(per_call / bare);
        }
        let (per_call, bare, ratio) = (median(per_calls), median(bares), median(ratios));
        let full = floor[if placement == Placement::Same {
            "same CPU"
        } else {
            "unpinned"
        }]
        .1;
        println!(
            "| --cpu {policy} | {per_call:.1} us/call | {ratio:.2}x the bare stop ({bare:.1} us) | {:.2}x the stop with GETREGS, readv, SETREGS ({full:.1} us) |",
            per_call / full
        );
    }
    println!(
        "stats (--mode stop --cpu same): {}",
        stats_line(&alloc, &alloc_args, &dir, "stop")
    );
    println!(
        "stats (ring mode): {}",
        stats_line(&alloc, &alloc_args, &dir, "ring")
    );

    println!("\n## Slowdown vs native (wall clock, median of {reps}); per event = (t(N) - t(N/10)) / (events(N) - events(N/10)), which removes start-up cost");
    let mut tool_list = vec!["heaptape-ring", "heaptape-stop-same", "heaptape-stop-free"];
    if have("heaptrack") {
        tool_list.push("heaptrack");
    }
    if have("valgrind") {
        tool_list.push("memcheck");
    }
    println!("| workload | native | {} |", tool_list.join(" | "));
    let per_thread = (n_pairs / 4).to_string();
    let small_thread = (n_pairs / 40).to_string();
    let small_pairs = (n_pairs / 10).to_string();
    // (name, program, args, args of the 1/10 run, events of the full run)
    type Workload<'a> = (&'a str, &'a Path, Vec<String>, Vec<String>, f64);
    let workloads: Vec<Workload> = vec![
        (
            "alloc loop",
            &alloc,
            alloc_args.clone(),
            vec![small_pairs],
            calls,
        ),
        (
            "4-thread alloc loop",
            &threads,
            vec!["4".into(), per_thread],
            vec!["4".into(), small_thread],
            calls,
        ),
        // 25 ms: start-up, hooking and the exit snapshot dominate the ratio.
        ("compute-heavy", &compute, vec!["300".into()], vec![], 0.0),
        // ~0.5 s of the same work: what a program that rarely allocates pays for a
        // recording that lasts.
        (
            "compute-heavy, longer",
            &compute,
            vec!["800".into()],
            vec![],
            0.0,
        ),
    ];
    for (name, prog, args, small, calls) in workloads {
        let native = tools.run("native", prog, &args);
        let native_small = tools.run("native", prog, &small);
        let mut row = format!("| {name} | {native:.3} s |");
        for tool in &tool_list {
            let t = tools.run(tool, prog, &args);
            if calls > 0.0 {
                let t_small = tools.run(tool, prog, &small);
                let per_event = ((t - t_small) - (native - native_small)) * 1e6 / (0.9 * calls);
                row += &format!(" {:.0}x ({per_event:.2} us/event) |", t / native);
            } else {
                row += &format!(" {:.2}x |", t / native);
            }
        }
        println!("{row}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
