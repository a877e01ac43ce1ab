//! Who holds the memory: retention (dominator tree, retained sizes, paths from named
//! roots) on fixtures whose structure is known, checked figure by figure against it:
//!
//! * `cache.cc`: a global `std::unordered_map<int, std::vector<char>>` of 500 entries
//!   of 1000 bytes; the service is killed while it holds them. The variable `cache`
//!   retains the bucket array (541 buckets: 4,328 bytes), the 500 nodes (40 bytes
//!   each) and the 500 buffers: 524,328 bytes in 1,001 blocks, all of the cache.
//! * `thread_list.c`: 100 nodes of 64 bytes reachable only from a local of
//!   `worker_loop`, on a thread named "lister".
//! * `interior.c`: a 256-byte record reachable only through an interior pointer
//!   (+16) from the global `cursor`, and the 4,096-byte buffer it points at.
//! * `shared.c`: globals `left` and `right` own 104 bytes each and share a table of
//!   10,000 bytes and its ten 500-byte blocks, which neither retains alone.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

/// Compiles fixture `retention/NAME.{c,cc}` at -O1 (locals in registers and on the
/// stack as a real build has them).
fn build(dir: &TestDir, name: &str) -> PathBuf {
    let (src, cc) = if name == "cache" {
        ("cache.cc".to_string(), "g++")
    } else {
        (format!("{name}.c"), "gcc")
    };
    let out = dir.join(name);
    common::fixtures::build(
        &[cc, "-O1", "-g", "-pthread"],
        &fixture_src(&format!("retention/{src}")),
        &out,
        &[],
    );
    out
}

/// The process's retention object.
fn retention(doc: &Value) -> &Value {
    &doc["processes"][0]["retention"]
}

/// The retained (blocks, bytes) of the root whose description is `description`.
fn root<'a>(r: &'a Value, description: &str) -> &'a Value {
    r["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .find(|t| t["root"]["description"] == description)
        .unwrap_or_else(|| panic!("no root {description:?} in {:#}", r["roots"]))
}

fn count(v: &Value) -> (u64, u64) {
    (v["blocks"].as_u64().unwrap(), v["bytes"].as_u64().unwrap())
}

#[test]
fn a_global_cache_is_named_by_its_variable_and_holds_all_of_it() {
    let dir = TestDir::new("retention_cache");
    let exe = build(&dir, "cache");
    let trace = dir.join("cache.trace");
    let mut cmd = record_cmd(&dir, &trace, &[], &exe, &[]);
    let (mut child, _out) = spawn_until_line(&mut cmd, "ready 500 -178\n");
    let program = traced_child(child.id()).expect("the traced program");
    // Killed in pause(), where such a service waits (not on its way back from the
    // write that printed "ready": stdio's frames then hold stale words of earlier
    // calls, which a scan without memcheck's definedness bits takes for pointers).
    wait_in_syscall(program, libc_pause_nr());
    // A service stopped by SIGTERM: no destructor runs.
    nix_kill(program, "TERM");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(128 + 15));
    let doc = analyze_json(&trace);
    let r = retention(&doc);
    let cache = root(r, "global `cache` (in cache)");
    assert_eq!(cache["root"]["kind"], "global");
    assert_eq!(cache["root"]["name"], "cache");
    assert_eq!(count(&cache["retained"]), (1001, 524_328));
    // It is the largest root, and holds every block allocated by `lookup`.
    assert_eq!(r["roots"][0]["root"]["name"], "cache");
    let from_lookup: (u64, u64) = doc["processes"][0]["loss_records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|lr| {
            lr["stack"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"].as_str().is_some_and(|f| f.contains("lookup")))
        })
        .fold((0, 0), |(b, y), lr| {
            (
                b + lr["blocks"].as_u64().unwrap(),
                y + lr["bytes"].as_u64().unwrap(),
            )
        });
    assert_eq!(from_lookup, (1001, 524_328));
    // The text report names it too.
    let text = analyze_text(&trace);
    assert!(
        text.contains("#1: 524,328 bytes in 1,001 blocks")
            && text.contains("retained by global `cache` (in cache)"),
        "{text}"
    );
}

/// pause(2)'s system call number on x86_64.
fn libc_pause_nr() -> u32 {
    34
}

/// Waits until `pid` is blocked in system call `nr` (`/proc/PID/syscall`).
fn wait_in_syscall(pid: u32, nr: u32) {
    let want = format!("{nr} ");
    for _ in 0..500 {
        let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if now.starts_with(&want) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("pid {pid} never blocked in system call {nr}");
}

/// Sends SIGname to `pid` with kill(1).
fn nix_kill(pid: u32, sig: &str) {
    let r = run(std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()));
    assert!(r.status.success(), "kill: {}", r.stderr);
}

#[test]
fn a_list_held_by_a_threads_local_is_named_by_the_thread_and_function() {
    let dir = TestDir::new("retention_thread_list");
    let exe = build(&dir, "thread_list");
    let doc = record_like_native(&dir, "thread_list", &exe, &[]);
    let r = retention(&doc);
    let list = r["roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["root"]["kind"] == "frame" && t["root"]["thread"] == "lister")
        .unwrap_or_else(|| panic!("no frame root of thread lister: {:#}", r["roots"]));
    assert_eq!(list["root"]["frame"]["function"], "worker_loop", "{list:#}");
    assert_eq!(count(&list["retained"]), (100, 6_400));
    // The list is a chain: the root holds its head, which retains the rest.
    let held = &list["held"][0];
    assert_eq!(count(&held["retained"]), (100, 6_400));
    assert_eq!(held["path"].as_array().unwrap().len(), 1);
    assert_eq!(held["path"][0]["size"], 64);
    let description = list["root"]["description"].as_str().unwrap();
    assert!(
        description.starts_with("thread ")
            && description.contains("(lister), frame #")
            && description.contains(": worker_loop (thread_list.c:"),
        "{description}"
    );
}

#[test]
fn a_block_held_through_an_interior_pointer_shows_the_hop() {
    let dir = TestDir::new("retention_interior");
    let exe = build(&dir, "interior");
    let doc = record_like_native(&dir, "interior", &exe, &[]);
    let r = retention(&doc);
    let cursor = root(r, "global `cursor` (in interior)");
    assert_eq!(count(&cursor["retained"]), (2, 4_352));
    let held = &cursor["held"][0];
    assert_eq!(count(&held["retained"]), (2, 4_352));
    let hop = &held["path"][0];
    assert_eq!(hop["via"], "interior");
    assert_eq!(hop["interior_offset"], 16);
    // `cursor` is one word: the pointer is at its offset 0.
    assert_eq!(hop["field"], 0);
    assert_eq!(hop["size"], 256);
    let text = analyze_text(&trace_of(&dir, "interior"));
    assert!(
        text.contains("(interior pointer, +16) 256 bytes from main (interior.c:"),
        "{text}"
    );
}

fn trace_of(dir: &TestDir, name: &str) -> PathBuf {
    dir.join(format!("{name}.trace"))
}

#[test]
fn two_roots_sharing_a_subgraph_retain_only_their_own_blocks() {
    let dir = TestDir::new("retention_shared");
    let exe = build(&dir, "shared");
    let doc = record_like_native(&dir, "shared", &exe, &[]);
    let r = retention(&doc);
    assert_eq!(
        count(&root(r, "global `left` (in shared)")["retained"]),
        (1, 104)
    );
    assert_eq!(
        count(&root(r, "global `right` (in shared)")["retained"]),
        (1, 104)
    );
    // The table and its ten blocks: retained by neither, counted as shared.
    assert_eq!(count(&r["shared"]), (11, 15_000));
    let table = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["retained"]["bytes"] == 15_000)
        .expect("the table's site");
    assert_eq!(table["held_by"][0]["root"], Value::Null);
    // The table is the largest shared retainer, reached from `left` or `right`.
    let top = &r["shared_blocks"][0];
    assert_eq!(count(&top["retained"]), (11, 15_000));
    let nearest = top["nearest_root"]["name"].as_str().unwrap();
    assert!(nearest == "left" || nearest == "right", "{top:#}");
    let path = top["path"].as_array().unwrap();
    assert_eq!(
        path.iter()
            .map(|h| h["size"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [104, 10_000]
    );
    assert_eq!(top["held"].as_array().unwrap().len(), 3);
    assert_eq!(count(&top["held"][0]["retained"]), (1, 500));
    // The flame graph of retained bytes: the table under "[shared by several roots]".
    let folded = run_heaptape([
        "flamegraph".as_ref(),
        "--metric".as_ref(),
        "retained".as_ref(),
        "--folded".as_ref(),
        trace_of(&dir, "shared").as_os_str(),
    ]);
    assert!(folded.status.success(), "{}", folded.stderr);
    let lines = folded.stdout_str();
    let value = |prefix: &str| -> u64 {
        lines
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(value("[shared by several roots];main"), 15_000, "{lines}");
    assert_eq!(value("global `left` (in shared);main"), 104, "{lines}");
    assert_eq!(value("global `right` (in shared);main"), 104, "{lines}");
}

/// The (ts, size) of every allocation of the trace, in order.
fn allocations(trace: &std::path::Path) -> Vec<(u64, u64)> {
    let dump = run_heaptape(["dump".as_ref(), "--json".as_ref(), trace.as_os_str()]);
    assert!(dump.status.success(), "{}", dump.stderr);
    dump.stdout_str()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|r| r["record"] == "Alloc")
        .map(|r| (r["ts"].as_u64().unwrap(), r["size"].as_u64().unwrap()))
        .collect()
}

#[test]
fn snapshots_every_two_seconds_bracket_when_each_lost_block_was_dropped() {
    let dir = TestDir::new("retention_brackets");
    let exe = build(&dir, "leak_every_second");
    let trace = dir.join("leak.trace");
    let native = run_native(&dir, &exe, &[]);
    let recorded = record(&dir, &trace, &["--snapshot-every", "2s"], &exe, &[]);
    assert_same_run(&native, &recorded);
    let doc = analyze(&trace);
    let p = &doc["processes"][0];
    // Three snapshots during the 7 s run, then the one at exit.
    let snapshots = p["snapshots"].as_array().expect("snapshots");
    let triggers: Vec<&str> = snapshots
        .iter()
        .map(|s| s["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        triggers,
        ["periodic", "periodic", "periodic", "exit"],
        "{p:#}"
    );
    assert!(snapshots.iter().all(|s| s["pause_ns"].as_u64() > Some(0)));
    // Block k (the k-th 100-byte allocation) was dropped between the allocation of
    // block k+1 and the 1-byte marker after it.
    let allocs = allocations(&trace);
    let blocks: Vec<u64> = allocs.iter().filter(|a| a.1 == 100).map(|a| a.0).collect();
    let markers: Vec<u64> = allocs.iter().filter(|a| a.1 == 1).map(|a| a.0).collect();
    assert_eq!((blocks.len(), markers.len()), (7, 7));
    // The leak grows by a block a second: at each snapshot, the blocks dropped before
    // it are lost, 6 at exit.
    for s in snapshots {
        let t = s["time_ns"].as_u64().unwrap();
        let dropped = (0..6).filter(|&k| markers[k + 1] < t).count() as u64;
        assert_eq!(
            s["leaks"]["definitely_lost"]["blocks"].as_u64(),
            Some(dropped),
            "snapshot at {t}: {s:#}"
        );
    }
    let between = p["lost_between"].as_array().expect("lost_between");
    assert_eq!(between.len(), 6, "{:#}", p["lost_between"]);
    let snapshot_times: Vec<u64> = snapshots
        .iter()
        .map(|s| s["time_ns"].as_u64().unwrap())
        .collect();
    for l in between {
        let allocated = l["allocated_ns"].as_u64().unwrap();
        let k = blocks
            .iter()
            .position(|&t| t == allocated)
            .expect("a 100-byte block");
        let (drop_from, drop_to) = (blocks[k + 1], markers[k + 1]);
        let (reachable, lost) = (
            l["reachable_ns"].as_u64().unwrap(),
            l["lost_ns"].as_u64().unwrap(),
        );
        assert!(
            reachable <= drop_from && drop_to <= lost,
            "block {k}: dropped in [{drop_from}, {drop_to}], bracket [{reachable}, {lost}]"
        );
        // The bracket is two consecutive snapshots (or the block's allocation and the
        // first snapshot after it).
        assert!(snapshot_times.contains(&lost));
        let i = snapshot_times.iter().position(|&t| t == lost).unwrap();
        let before = if i == 0 { 0 } else { snapshot_times[i - 1] };
        assert_eq!(reachable, before.max(allocated), "block {k}");
    }
    // The text report says it too.
    let text = analyze_text(&trace);
    assert!(
        text.contains("snapshots (4), leak classes at each:")
            && text.contains("definitely lost blocks, by when they became unreachable:"),
        "{text}"
    );
}

#[test]
fn a_large_bss_array_mapped_anonymous_is_named_by_its_variable() {
    // 800 KB of .bss: past the executable's last file page, the kernel maps it
    // anonymous, and the snapshot records it as an anonymous region.
    let dir = TestDir::new("retention_bss");
    let exe = dir.compile_c(
        "table",
        "#include <stdio.h>\n#include <stdlib.h>\nvoid *table[100000];\n\
         int main(void) { for (int i = 0; i < 100000; i++) table[i] = malloc(32); \
         puts(\"ok\"); return 0; }\n",
    );
    let doc = record_like_native(&dir, "table", &exe, &[]);
    let r = retention(&doc);
    let table = root(r, "global `table` (in table)");
    assert_eq!(count(&table["retained"]), (100_000, 3_200_000));
    assert_eq!(table["held"][1]["path"][0]["field"], 8);
}
