//! Snapshots during the run: `record --snapshot-every` and SIGUSR2 sent to the recorder
//! stop the program, take a reachability snapshot of it, and let it go on exactly as
//! before; each snapshot carries its threads' stacks (`SnapshotThread`) and its trigger
//! and pause (`SnapshotInfo`), in its place among the allocation events.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use heaptape_format::{Record, SnapshotThread, SnapshotTrigger, TraceReader, EMPTY_STACK};

/// One snapshot of a trace, as its records say.
#[derive(Debug, Default)]
struct Snap {
    /// Allocation records before its `SnapshotBegin`.
    allocs_before: u64,
    threads: Vec<SnapshotThread>,
    trigger: Option<SnapshotTrigger>,
    pause_ns: u64,
    ended: bool,
}

/// The snapshots of `trace` in order, and its stack trie (node -> (parent, address)).
fn snapshots(trace: &Path) -> (Vec<Snap>, HashMap<u32, (u32, u64)>) {
    let mut snaps: Vec<Snap> = Vec::new();
    let mut nodes = HashMap::new();
    let mut allocs = 0;
    let mut inside = false;
    for rec in TraceReader::open(trace).expect("open trace").records() {
        match rec.expect("record") {
            Record::Alloc { .. } => {
                assert!(!inside, "an allocation inside a snapshot");
                allocs += 1;
            }
            Record::StackNode {
                id,
                parent,
                address,
            } => {
                nodes.insert(id, (parent, address));
            }
            Record::SnapshotBegin { .. } => {
                assert!(!inside, "a snapshot inside a snapshot");
                inside = true;
                snaps.push(Snap {
                    allocs_before: allocs,
                    ..Snap::default()
                });
            }
            Record::SnapshotThread(t) => {
                assert!(inside, "SnapshotThread outside a snapshot");
                snaps.last_mut().unwrap().threads.push(*t);
            }
            Record::SnapshotInfo {
                trigger, pause_ns, ..
            } => {
                assert!(inside, "SnapshotInfo outside a snapshot");
                let s = snaps.last_mut().unwrap();
                assert!(s.trigger.is_none(), "two SnapshotInfo in one snapshot");
                s.trigger = Some(trigger);
                s.pause_ns = pause_ns;
            }
            Record::SnapshotEnd { .. } => {
                assert!(inside, "SnapshotEnd outside a snapshot");
                inside = false;
                snaps.last_mut().unwrap().ended = true;
            }
            _ => {}
        }
    }
    (snaps, nodes)
}

/// The addresses of stack `id`, innermost first.
fn stack(nodes: &HashMap<u32, (u32, u64)>, mut id: u32) -> Vec<u64> {
    let mut out = Vec::new();
    while id != EMPTY_STACK {
        let (parent, address) = nodes[&id];
        out.push(address);
        id = parent;
    }
    out
}

/// Checks what every snapshot of `snaps` must hold: an info record, a stack per thread
/// with ascending frames.
fn check_well_formed(snaps: &[Snap], nodes: &HashMap<u32, (u32, u64)>) {
    for (i, s) in snaps.iter().enumerate() {
        assert!(s.ended, "snapshot {i} has no end");
        assert!(s.trigger.is_some(), "snapshot {i} has no SnapshotInfo");
        assert!(s.pause_ns > 0, "snapshot {i}: pause 0");
        assert!(!s.threads.is_empty(), "snapshot {i}: no SnapshotThread");
        for t in &s.threads {
            assert_ne!(
                t.stack, EMPTY_STACK,
                "snapshot {i}: thread {} empty stack",
                t.tid
            );
            let addresses = stack(nodes, t.stack);
            assert_eq!(
                addresses.len(),
                t.frames.len(),
                "snapshot {i}: thread {}: one frame per stack node",
                t.tid
            );
            assert!(
                t.frames.windows(2).all(|w| w[0] < w[1]),
                "snapshot {i}: thread {} frames not ascending: {:x?}",
                t.tid,
                t.frames
            );
        }
    }
}

fn compile_fixture(dir: &TestDir) -> std::path::PathBuf {
    // Not position-independent: `nm`'s addresses are the run's.
    dir.compile("snapshots.c", "snapshots", &["-pthread", "-no-pie"])
}

#[test]
fn periodic_snapshots_during_the_run() {
    let dir = TestDir::new("snapshot-every");
    let prog = compile_fixture(&dir);
    let native = run_native(&dir, &prog, &["list"]);
    assert_eq!(native.stdout_str(), "list of 50 nodes\n");
    assert_eq!(native.shell_code(), 7);
    let trace = dir.join("list.trace");
    let recorded = record(
        &dir,
        &trace,
        &["--snapshot-every", "1s", "--stats"],
        &prog,
        &["list"],
    );
    assert_same_run(&native, &recorded);
    let (snaps, nodes) = snapshots(&trace);
    check_well_formed(&snaps, &nodes);
    let (last, during) = snaps.split_last().expect("snapshots");
    assert_eq!(last.trigger, Some(SnapshotTrigger::Exit));
    assert!(
        during.len() >= 3,
        "{} snapshots during the run; stderr:\n{}",
        during.len(),
        recorded.stderr
    );
    assert!(during
        .iter()
        .all(|s| s.trigger == Some(SnapshotTrigger::Periodic)));
    // In their place among the allocations: one every 100 ms, a snapshot every second.
    for (i, s) in during.iter().enumerate() {
        assert!(
            s.allocs_before >= 5 * (i as u64 + 1),
            "snapshot {i} after only {} allocations",
            s.allocs_before
        );
    }
    assert!(during
        .windows(2)
        .all(|w| w[0].allocs_before < w[1].allocs_before));
    assert!(
        recorded
            .stderr
            .contains(&format!("snapshots during the run: {} taken", during.len())),
        "--stats: {}",
        recorded.stderr
    );
    // The analyzer reads every snapshot.
    let json = analyze(&trace);
    let t = totals(root_process(&json));
    assert_eq!(t.live_at_exit_blocks, 51);
}

#[test]
fn sigusr2_to_the_recorder_takes_a_snapshot() {
    let dir = TestDir::new("snapshot-sigusr2");
    let prog = compile_fixture(&dir);
    let trace = dir.join("usr2.trace");
    let mut cmd = record_cmd(&dir, &trace, &[], &prog, &["list"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn heaptape");
    // Once the program runs under the recorder (its handlers are in place by then).
    let deadline = Instant::now() + Duration::from_secs(30);
    while traced_child(child.id()).is_none() {
        assert!(Instant::now() < deadline, "no traced child of heaptape");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on the heaptape process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) }, 0);
    let run = wait_output(child, "heaptape record");
    assert_eq!(run.stdout_str(), "list of 50 nodes\n", "{}", run.stderr);
    assert_eq!(run.shell_code(), 7, "{}", run.stderr);
    let (snaps, nodes) = snapshots(&trace);
    check_well_formed(&snaps, &nodes);
    let triggers: Vec<_> = snaps.iter().map(|s| s.trigger.unwrap()).collect();
    assert_eq!(
        triggers,
        [SnapshotTrigger::Signal, SnapshotTrigger::Exit],
        "{}",
        run.stderr
    );
    // Taken a second and a half in: some nodes allocated, not all.
    let at = snaps[0].allocs_before;
    assert!(
        (5..45).contains(&at),
        "signal snapshot after {at} allocations"
    );
}

/// `worker_loop`'s address range in `prog` (`nm -S`).
fn function_range(prog: &Path, name: &str) -> std::ops::Range<u64> {
    let out = Command::new("nm")
        .args(["-S", "--defined-only"])
        .arg(prog)
        .output()
        .expect("nm");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some(name))
        .unwrap_or_else(|| panic!("{name} not in nm's output"));
    let mut f = line.split_whitespace();
    let start = u64::from_str_radix(f.next().unwrap(), 16).unwrap();
    let size = u64::from_str_radix(f.next().unwrap(), 16).unwrap();
    start..start + size
}

#[test]
fn threads_keep_working_through_periodic_snapshots() {
    let dir = TestDir::new("snapshot-threads");
    let prog = compile_fixture(&dir);
    let native = run_native(&dir, &prog, &["threads"]);
    let expected = "worker did 60 rounds\nbusy list intact\nreader got x\nsignals seen 30\n";
    assert_eq!(native.stdout_str(), expected);
    let trace = dir.join("threads.trace");
    let recorded = record(
        &dir,
        &trace,
        &["--snapshot-every", "200ms", "--stats"],
        &prog,
        &["threads"],
    );
    assert_same_run(&native, &recorded);
    let (snaps, nodes) = snapshots(&trace);
    check_well_formed(&snaps, &nodes);
    let during: Vec<&Snap> = snaps
        .iter()
        .filter(|s| s.trigger == Some(SnapshotTrigger::Periodic))
        .collect();
    assert!(
        during.len() >= 5,
        "{} periodic snapshots; stderr:\n{}",
        during.len(),
        recorded.stderr
    );
    // The worker thread, asleep in nanosleep, called from worker_loop: a return address
    // into worker_loop is on its stack.
    let worker_loop = function_range(&prog, "worker_loop");
    let workers: Vec<&SnapshotThread> = during
        .iter()
        .flat_map(|s| &s.threads)
        .filter(|t| t.name == "worker")
        .collect();
    assert!(!workers.is_empty(), "no thread named worker in a snapshot");
    for t in &workers {
        let addresses = stack(&nodes, t.stack);
        assert!(
            addresses[1..].iter().any(|a| worker_loop.contains(a)),
            "worker's stack {addresses:x?} does not pass through worker_loop {worker_loop:x?}"
        );
    }
    // Every snapshot names the four threads while they all run.
    assert!(during.iter().any(|s| s.threads.len() == 4));
}

#[test]
fn periodic_snapshots_while_attached() {
    let dir = TestDir::new("snapshot-attached");
    let prog = compile_fixture(&dir);
    let mut program = Command::new(&prog)
        .arg("list")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the fixture");
    std::thread::sleep(Duration::from_millis(300));
    let trace = dir.join("attached.trace");
    let pid = program.id().to_string();
    let run = run_heaptape([
        "record",
        "--pid",
        &pid,
        "--duration",
        "2s",
        "--snapshot-every",
        "500ms",
        "-o",
        trace.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    let out = program.wait_with_output_or_kill();
    assert_eq!(out.0, "list of 50 nodes\n");
    assert_eq!(out.1, Some(7));
    let (snaps, nodes) = snapshots(&trace);
    check_well_formed(&snaps, &nodes);
    let (last, during) = snaps.split_last().expect("snapshots");
    assert_eq!(last.trigger, Some(SnapshotTrigger::Detach));
    assert!(
        during.len() >= 2,
        "{} snapshots while attached",
        during.len()
    );
    assert!(during
        .iter()
        .all(|s| s.trigger == Some(SnapshotTrigger::Periodic)));
}

trait WaitOrKill {
    /// The program's stdout and exit code, killing it if it runs on for 30 s.
    fn wait_with_output_or_kill(&mut self) -> (String, Option<i32>);
}

impl WaitOrKill for std::process::Child {
    fn wait_with_output_or_kill(&mut self) -> (String, Option<i32>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = self.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                break self.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut s) = self.stdout.take() {
            std::io::Read::read_to_string(&mut s, &mut out).expect("stdout");
        }
        (out, status.code())
    }
}
