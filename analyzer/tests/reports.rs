//! The JSON document's shape and the text report's wording.

mod common;

use std::collections::BTreeSet;

use common::{run, Trace};
use heaptape_analyzer::{analyze, AnalyzeOptions};
use heaptape_format::{ExitStatus, ProcessOrigin, Record, Segment};
use serde_json::{json, Value};

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(k: &[&'a str]) -> BTreeSet<&'a str> {
    k.iter().copied().collect()
}

/// pid 1 leaks two blocks from stack 2 and double-frees one from stack 3; then a forked
/// child killed by SIGSEGV, a detached one and one the trace never saw end.
fn scenario() -> Trace {
    let mut t = Trace::new(1);
    t.launch(1);
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 1000,
        pid: 1,
        path: "/bin/app".into(),
        build_id: vec![0xde, 0xad],
        base: 0,
        segments: vec![Segment {
            start: 0x400000,
            len: 0x10000,
            file_offset: 0,
            prot: 5,
        }],
    })));
    t.stack(1, 0, 0x401000)
        .stack(2, 1, 0x401100)
        .stack(3, 1, 0x401200)
        .malloc(1, 0x10, 64, 2)
        .malloc(1, 0x20, 32, 3)
        .malloc(1, 0x30, 1000, 2)
        .free(1, 0x20, 3)
        .free(1, 0x20, 3)
        .exit(1, ExitStatus::Code(0));
    t
}

#[test]
fn json_shape_and_values() {
    let mut t = scenario();
    t.start(2, Some(1), ProcessOrigin::Fork, "./app")
        .exit(2, ExitStatus::Signal(11))
        .start(3, None, ProcessOrigin::Launched, "./d")
        .exit(3, ExitStatus::Detached)
        .start(4, None, ProcessOrigin::Launched, "./e");
    let (_d, path) = t.finish();
    let a = run(&path);
    let v = a.to_json();
    // The typed document writes every object's keys in the order of the value's maps
    // (sorted), which the CLI's output has always had.
    assert_eq!(
        serde_json::to_string(&a.json_report()).unwrap(),
        serde_json::to_string(&v).unwrap()
    );
    assert_eq!(
        keys(&v),
        set(&[
            "frames",
            "processes",
            "schema_version",
            "stacks",
            "trace",
            "warnings"
        ])
    );
    assert_eq!(
        keys(&v["trace"]),
        set(&[
            "tool_version",
            "command",
            "pid",
            "host",
            "kernel",
            "start_time_unix_ns",
            "page_size",
            "complete",
            "truncation",
            "records",
            "stack_nodes",
            "duration_ns",
        ])
    );
    assert_eq!(v["trace"]["complete"], true);
    assert_eq!(v["trace"]["truncation"], Value::Null);
    assert_eq!(v["trace"]["stack_nodes"], 3);
    assert_eq!(v["warnings"], json!([]));

    let procs = v["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 4);
    let p = &procs[0];
    assert_eq!(
        keys(p),
        set(&[
            "pid",
            "parent_pid",
            "origin",
            "command",
            "exit",
            "start_ns",
            "end_ns",
            "ended_by",
            "totals",
            "sites_live_at_exit",
            "leaks",
            "leaks_unavailable",
            "loss_records",
            "lost_between",
            "retention",
            "snapshots",
            "invalid_frees",
            "modules",
            "previous_images",
            "fd_leaks",
            "mmap_leaks",
            "timeline",
            "timeline_verdict",
            "call_site_depth",
            "sites_at_peak",
            "growth_bucket_ns",
            "growth",
        ])
    );
    assert_eq!(p["pid"], 1);
    assert_eq!(p["parent_pid"], Value::Null);
    assert_eq!(p["origin"], "launched");
    assert_eq!(p["command"], json!(["./app"]));
    assert_eq!(p["exit"], json!({ "code": 0 }));
    assert_eq!(p["ended_by"], "exit");
    assert_eq!(
        p["totals"],
        json!({
            "allocations": 3,
            "frees": 2,
            "allocated_bytes": 1096,
            "live_at_exit_blocks": 2,
            "live_at_exit_bytes": 1064,
            "peak_live_bytes": 1096,
            "peak_live_blocks": 3,
            "peak_live_ns": 4000,
            "temporary_allocations": 0,
            "failed_allocations": 0,
            "inherited_blocks": 0,
            "inherited_bytes": 0,
            "untracked_frees": 0,
            "allocator_internal_frees": 0,
            "allocation_rate_per_sec": 500000.0,
        })
    );
    assert_eq!(
        p["sites_live_at_exit"],
        json!([{
            "stack_id": 2,
            "stacks": 1,
            "live_at_exit_bytes": 1064,
            "live_at_exit_blocks": 2,
            "allocations": 2,
            "allocated_bytes": 1064,
            "frees": 0,
            "temporary_allocations": 0,
            "inherited_blocks": 0,
            "inherited_bytes": 0,
            "peak_bytes": 1064,
            "peak_blocks": 2,
            "stack": [
                {"address": "0x401100", "module": "/bin/app", "offset": "0x401100",
                 "function": null, "file": null, "line": null, "inlined": false,
                 "no_symbols": "no symbols: file not found"},
                {"address": "0x401000", "module": "/bin/app", "offset": "0x401000",
                 "function": null, "file": null, "line": null, "inlined": false,
                 "no_symbols": "no symbols: file not found"},
            ],
        }])
    );
    assert_eq!(p["leaks"], Value::Null);
    assert_eq!(p["leaks_unavailable"], heaptape_analyzer::NO_SNAPSHOT);
    assert_eq!(p["loss_records"], json!([]));
    let free_frames = json!([
        {"address": "0x401200", "module": "/bin/app", "offset": "0x401200",
         "function": null, "file": null, "line": null, "inlined": false,
                 "no_symbols": "no symbols: file not found"},
        {"address": "0x401000", "module": "/bin/app", "offset": "0x401000",
         "function": null, "file": null, "line": null, "inlined": false,
                 "no_symbols": "no symbols: file not found"},
    ]);
    assert_eq!(
        p["invalid_frees"],
        json!([{
            "kind": "double_free",
            "count": 1,
            "address": "0x20",
            "size": 32,
            "tid": 1,
            "ts_ns": 6000,
            "function": "free",
            "alloc_function": "malloc",
            "stack": free_frames,
            "alloc_stack": free_frames,
            "free_stack": free_frames,
            "block": {"address": "0x20", "offset": 0, "size": 32},
            "description": "Address 0x20 is 0 bytes inside a block of size 32 free'd",
            "stack_id": 3,
            "alloc_stack_id": 3,
            "free_stack_id": 3,
        }])
    );
    assert_eq!(
        p["modules"],
        json!([{
            "path": "/bin/app",
            "build_id": "dead",
            "base": "0x0",
            "loaded_ns": 1000,
            "unloaded_ns": null,
        }])
    );
    assert_eq!(p["previous_images"], json!([]));

    // The fork child of an exited parent: nothing to inherit (the parent was gone).
    assert_eq!(procs[1]["parent_pid"], 1);
    assert_eq!(procs[1]["origin"], "fork");
    assert_eq!(procs[1]["exit"], json!({ "signal": 11 }));
    assert_eq!(procs[2]["exit"], json!({ "detached": true }));
    assert_eq!(procs[3]["exit"], Value::Null);
    assert_eq!(procs[3]["ended_by"], "trace_end");
    assert_eq!(procs[3]["command"], json!(["./e"]));
}

#[test]
fn json_ranking_depth_follows_the_options() {
    let (_d, path) = scenario().finish();
    let a = analyze(
        &path,
        &AnalyzeOptions {
            top: 0,
            ..AnalyzeOptions::default()
        },
    )
    .unwrap();
    assert_eq!(a.to_json()["processes"][0]["sites_live_at_exit"], json!([]));
}

#[test]
fn json_previous_images_carry_their_totals() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x10, 5, 1)
        .exec(1, "/bin/true")
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let v = run(&path).to_json();
    let p = &v["processes"][0];
    assert_eq!(p["command"], json!(["/bin/true"]));
    assert_eq!(p["totals"]["allocations"], 0);
    let prev = &p["previous_images"][0];
    assert_eq!(prev["command"], json!(["./app"]));
    assert_eq!(prev["ended_by"], "exec");
    assert_eq!(prev["totals"]["allocations"], 1);
    assert_eq!(prev["totals"]["live_at_exit_bytes"], 5);
    assert_eq!(prev["start_ns"], 1000);
    assert_eq!(prev["end_ns"], 3000);
}

#[test]
fn text_report() {
    let (_d, path) = scenario().finish();
    let a = run(&path);
    let mut out = Vec::new();
    a.render_text(&mut out, &AnalyzeOptions::default()).unwrap();
    let text = String::from_utf8(out).unwrap();
    let expected = "\
heaptape trace of `./app` (pid 1), recorded by heaptape 0.1.0 on testhost (kernel 6.1.0)

== process 1: ./app (launched, exited with code 0, after 0.000 s)
   leak summary: unavailable: no reachability snapshot was recorded for this process (recorded with --no-snapshot, or the recorder could not take one)
   bad frees: 1 double, 0 invalid, 0 mismatched
   Invalid free() / delete / delete[] / realloc() (double free by free, 1 time, stack 3)
        at 0x401200: app+0x401200 (no symbols: file not found)  [S1]
        by 0x401000: app+0x401000
     Address 0x20 is 0 bytes inside a block of size 32 free'd
        stack S1, printed above: app+0x401200 ...
     Block was alloc'd at
        stack S1, printed above: app+0x401200 ...
   total heap usage: 3 allocs, 2 frees, 1,096 bytes allocated
   in use at exit: 1,064 bytes in 2 blocks
   peak heap usage: 1,096 bytes in 3 blocks, at 0.000 s
   temporary allocations: 0 (0.0% of allocations)
   allocation rate: 500,000 allocs/s
   top call sites at the heap peak:
   #1: 1,064 bytes in 2 blocks at the peak, stack 2
        at 0x401100: app+0x401100 (no symbols: file not found)  [S2]
        by 0x401000: app+0x401000
   #2: 32 bytes in 1 block at the peak, stack 3
        stack S1, printed above: app+0x401200 ...
   top call sites by bytes in use at exit:
   #1: 1,064 bytes in 2 blocks from 2 allocs (1,064 bytes allocated), stack 2
        stack S2, printed above: app+0x401100 ...
";
    assert_eq!(text, expected);
}

#[test]
fn text_report_of_fork_and_exec() {
    let mut t = Trace::new(1);
    t.launch(1)
        .malloc(1, 0x10, 1500, 1)
        .start(2, Some(1), ProcessOrigin::Fork, "./app")
        .exec(2, "/bin/echo hi there")
        .malloc(2, 0x10, 7, 2)
        .malloc(2, 0, 7, 2)
        .exit(2, ExitStatus::Signal(6))
        .free(1, 0x10, 3)
        .free(1, 0x10, 3)
        .exit(1, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let mut out = Vec::new();
    a.render_text(
        &mut out,
        &AnalyzeOptions {
            top: 1,
            ..AnalyzeOptions::default()
        },
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let expected = "\
heaptape trace of `./app` (pid 1), recorded by heaptape 0.1.0 on testhost (kernel 6.1.0)

== process 1: ./app (launched, exited with code 0, after 0.000 s)
   leak summary: unavailable: no reachability snapshot was recorded for this process (recorded with --no-snapshot, or the recorder could not take one)
   bad frees: 1 double, 0 invalid, 0 mismatched
   Invalid free() / delete / delete[] / realloc() (double free by free, 1 time, stack 3)
     Address 0x10 is 0 bytes inside a block of size 1,500 free'd
   total heap usage: 1 allocs, 2 frees, 1,500 bytes allocated
   in use at exit: 0 bytes in 0 blocks
   peak heap usage: 1,500 bytes in 1 block, at 0.000 s
   temporary allocations: 1 (100.0% of allocations)
   allocation rate: 111,111 allocs/s
   top call sites at the heap peak:
   #1: 1,500 bytes in 1 block at the peak, stack 1

== process 2: /bin/echo hi there (fork of 1, killed by signal 6 (SIGABRT), after 0.000 s)
   earlier image `./app`, replaced by exec at 0.000 s: 0 allocs, 0 frees, 0 bytes allocated; 1,500 bytes in 1 block discarded
   leak summary: unavailable: no reachability snapshot was recorded for this process (recorded with --no-snapshot, or the recorder could not take one)
   total heap usage: 1 allocs, 0 frees, 7 bytes allocated
   in use at exit: 7 bytes in 1 block
   peak heap usage: 7 bytes in 1 block, at 0.000 s
   temporary allocations: 0 (0.0% of allocations)
   failed allocations: 1
   allocation rate: 333,333 allocs/s
   top call sites at the heap peak:
   #1: 7 bytes in 1 block at the peak, stack 2
   top call sites by bytes in use at exit:
   #1: 7 bytes in 1 block from 1 allocs (7 bytes allocated), stack 2
";
    assert_eq!(text, expected);
}
