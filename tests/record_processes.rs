//! Children: fork, vfork + exec, posix_spawn and system() are followed (one process per
//! child in the trace, none dies of SIGTRAP), or left alone with --no-follow.

mod common;

use common::*;
use serde_json::Value;

const CHILDREN_OUTPUT: &str =
    "from system\nfork child: 5\nvfork child: 0\nspawn child: 7\nsystem: 3\n";

fn command_of(p: &Value) -> Vec<String> {
    p["command"]
        .as_array()
        .expect("command array")
        .iter()
        .map(|a| a.as_str().expect("string").to_string())
        .collect()
}

fn process_with_command<'a>(json: &'a Value, cmd: &[&str]) -> &'a Value {
    let matching: Vec<&Value> = processes(json)
        .iter()
        .filter(|p| command_of(p) == cmd)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one process running {cmd:?} expected: {json}"
    );
    matching[0]
}

#[test]
fn children_are_followed_and_run_as_native() {
    let dir = TestDir::new("children");
    let prog = dir.compile("children.c", "children", &[]);
    let prog_s = prog.to_str().expect("utf-8 path");
    let json = record_like_native(&dir, "children", &prog, &[]);
    let native = run_native(&dir, &prog, &[]);
    // The statuses the parent prints are the children's native ones (none died of
    // SIGTRAP), in the fixture's known order.
    assert_eq!(native.stdout_str(), CHILDREN_OUTPUT);

    let root = root_process(&json);
    let root_pid = root["pid"].as_u64().expect("pid");
    assert_eq!(root["exit"], serde_json::json!({"code": 0}));
    let procs = processes(&json);
    assert_eq!(procs.len(), 5, "root + 4 children expected: {json}");
    for p in procs.iter().filter(|p| p["pid"].as_u64() != Some(root_pid)) {
        assert_eq!(p["parent_pid"].as_u64(), Some(root_pid), "{}", p["command"]);
    }

    // fork child: inherits the 11-byte block, allocates 22 (freed) and 33 (leaked), _exit(5).
    let fork_child = procs
        .iter()
        .find(|p| p["parent_pid"].as_u64() == Some(root_pid) && command_of(p) == [prog_s])
        .unwrap_or_else(|| panic!("no fork child: {json}"));
    assert_eq!(fork_child["exit"], serde_json::json!({"code": 5}));
    let t = totals(fork_child);
    assert_eq!((t.allocations, t.frees, t.allocated_bytes), (2, 1, 55));
    assert_eq!((t.inherited_blocks, t.inherited_bytes), (1, 11));
    assert_eq!((t.live_at_exit_blocks, t.live_at_exit_bytes), (2, 44));

    let vfork_child = process_with_command(&json, &["true"]);
    assert_eq!(vfork_child["exit"], serde_json::json!({"code": 0}));
    let spawn_child = process_with_command(&json, &["sh", "-c", "exit 7"]);
    assert_eq!(spawn_child["exit"], serde_json::json!({"code": 7}));
    let system_child = process_with_command(&json, &["sh", "-c", "echo from system; exit 3"]);
    assert_eq!(system_child["exit"], serde_json::json!({"code": 3}));

    // valgrind: the parent's figures are equal; the fork child's count its inherited
    // block as an allocation (memcheck copies the parent's counters at fork).
    let (vg_run, vg) = valgrind(&dir, &prog, &[]);
    assert_eq!(vg_run.stdout_str(), CHILDREN_OUTPUT);
    assert_eq!(vg.len(), 5, "valgrind processes: {vg:?}");
    let (vg_root, vg_fork) = (vg[0].1, vg[1].1);
    assert_eq!(HeapUsage::of(&totals(root)), vg_root);
    assert_eq!(
        HeapUsage {
            allocs: t.allocations + t.inherited_blocks,
            frees: t.frees,
            bytes: t.allocated_bytes + t.inherited_bytes,
        },
        vg_fork
    );
}

#[test]
fn no_follow_leaves_children_alone() {
    let dir = TestDir::new("nofollow");
    let prog = dir.compile("children.c", "children", &[]);
    let native = run_native(&dir, &prog, &[]);
    let trace = dir.join("nofollow.trace");
    let recorded = record(&dir, &trace, &["--no-follow"], &prog, &[]);
    assert_same_run(&native, &recorded);
    assert_eq!(recorded.stdout_str(), CHILDREN_OUTPUT);
    let json = analyze(&trace);
    assert_eq!(processes(&json).len(), 1, "only the root expected: {json}");
    let root = root_process(&json);
    let (_, vg) = valgrind(&dir, &prog, &[]);
    assert_eq!(HeapUsage::of(&totals(root)), vg[0].1);
}

/// The parent mallocs 100 bytes, vforks a child that calls `_exit(5)` without exec,
/// waits for it and frees the block: nothing leaks anywhere.
const VFORK_EXIT_C: &str = r#"
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    char *a = malloc(100);
    a[0] = 1;
    pid_t c = vfork();
    if (c == 0) _exit(5);
    int st = 0;
    waitpid(c, &st, 0);
    free(a);
    return WEXITSTATUS(st) == 5 ? 0 : 1;
}
"#;

#[test]
fn a_vfork_child_that_exits_owns_no_blocks() {
    let dir = TestDir::new("vfork-exit");
    let prog = dir.compile_c("vfork_exit", VFORK_EXIT_C);
    let trace = dir.join("t.trace");
    record_ok(&dir, &trace, &[], &prog, &[]);
    // analyze: complete, no warning (the child's snapshot covers what the replay has).
    let json = analyze(&trace);
    let procs = processes(&json);
    assert_eq!(procs.len(), 2, "{json}");
    for p in procs {
        let lost = &p["leaks"]["definitely_lost"];
        assert_eq!(
            (lost["blocks"].as_u64(), lost["bytes"].as_u64()),
            (Some(0), Some(0)),
            "{p}"
        );
        assert_eq!(p["totals"]["live_at_exit_blocks"], 0, "{p}");
    }
    let child = procs
        .iter()
        .find(|p| p["origin"] == "vfork")
        .unwrap_or_else(|| panic!("no vfork child: {json}"));
    assert_eq!(child["exit"], serde_json::json!({"code": 5}));
    let fail = run(heaptape()
        .args(["analyze", "--fail-on", "definite,indirect,possible"])
        .arg(&trace));
    assert!(
        fail.status.success(),
        "{}\n{}",
        fail.stdout_str(),
        fail.stderr
    );
}

/// Threads, a fork child that allocates and leaks, a fork child that execs /bin/true
/// with the parent's 10 MiB block in its copy of the heap, a vfork child that execs,
/// and posix_spawn.
const TREE_C: &str = r#"
#include <pthread.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
static void *work(void *arg) {
    for (int i = 0; i < 100; i++) free(malloc(64 + i));
    return malloc(1000 + (long)arg); /* leaked by the thread */
}
int main(void) {
    char *big = malloc(10 << 20);
    memset(big, 1, 4096);
    pthread_t t[3];
    for (long i = 0; i < 3; i++) pthread_create(&t[i], 0, work, (void *)i);
    for (int i = 0; i < 3; i++) pthread_join(t[i], 0);
    pid_t c = fork();
    if (c == 0) { malloc(777); _exit(0); }
    waitpid(c, 0, 0);
    c = fork();
    if (c == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
    waitpid(c, 0, 0);
    c = vfork();
    if (c == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
    waitpid(c, 0, 0);
    char *argv[] = {"true", 0};
    if (posix_spawn(&c, "/bin/true", 0, 0, argv, environ) == 0) waitpid(c, 0, 0);
    return 0;
}
"#;

/// The sum of a folded flame graph's values.
fn folded_sum(trace: &std::path::Path, metric: &str) -> u64 {
    let r = run(heaptape()
        .args(["flamegraph", "--folded", "--metric", metric, "-o", "-"])
        .arg(trace));
    assert!(r.status.success(), "{}", r.stderr);
    r.stdout_str()
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn analyze_diff_and_flamegraph_count_a_process_tree_alike() {
    let dir = TestDir::new("tree-totals");
    let prog = dir.compile_source("tree.c", TREE_C, "tree", &["gcc", "-pthread"]);
    let trace = dir.join("t.trace");
    record_ok(&dir, &trace, &[], &prog, &[]);
    let json = analyze(&trace);
    // analyze: every image's allocations; what the processes held when they exited
    // (an image replaced by exec discarded its heap: not leaked, no peak of its own).
    let mut allocations = 0;
    let mut allocated = 0;
    let mut leaked = 0;
    let mut peak = 0;
    for p in processes(&json) {
        let t = &p["totals"];
        allocations += t["allocations"].as_u64().unwrap();
        allocated += t["allocated_bytes"].as_u64().unwrap();
        leaked += t["live_at_exit_bytes"].as_u64().unwrap();
        peak += t["peak_live_bytes"].as_u64().unwrap();
        for img in p["previous_images"].as_array().into_iter().flatten() {
            allocations += img["totals"]["allocations"].as_u64().unwrap();
            allocated += img["totals"]["allocated_bytes"].as_u64().unwrap();
        }
    }
    // The fork child that execs held the parent's 10 MiB block until its exec, which
    // discarded it: counted nowhere as leaked (the double count this test guards).
    let exec_child = processes(&json)
        .iter()
        .find(|p| {
            p["origin"] == "fork"
                && p["previous_images"]
                    .as_array()
                    .is_some_and(|v| !v.is_empty())
        })
        .unwrap_or_else(|| panic!("no fork+exec child: {json}"));
    let discarded = exec_child["previous_images"][0]["totals"]["live_at_exit_bytes"]
        .as_u64()
        .unwrap();
    assert!(discarded >= 10 << 20, "{exec_child}");
    let parent = root_process(&json)["totals"]["live_at_exit_bytes"]
        .as_u64()
        .unwrap();
    assert!(parent >= (10 << 20) + 3003, "{parent}");
    // Held at exit: the parent's blocks, and the fork child's copy of them plus its 777.
    assert_eq!(leaked, 2 * parent + 777, "{json}");

    let d = run(heaptape().args(["diff", "--json"]).arg(&trace).arg(&trace));
    assert!(d.status.success(), "{}", d.stderr);
    let d: Value = serde_json::from_slice(&d.stdout).unwrap();
    let old = &d["totals"]["old"];
    assert_eq!(old["allocations"], allocations);
    assert_eq!(old["allocated_bytes"], allocated);
    assert_eq!(old["in_use_at_exit_bytes"], leaked);
    assert_eq!(old["peak_bytes"], peak);

    assert_eq!(folded_sum(&trace, "allocations"), allocations);
    assert_eq!(folded_sum(&trace, "allocated-bytes"), allocated);
    assert_eq!(folded_sum(&trace, "in-use-at-exit"), leaked);
}

/// A vfork child allocates (glibc tolerates it) before `_exit`; the parent allocates
/// after.
const VFORK_ALLOC_C: &str = r#"
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    void *volatile before = malloc(11);
    pid_t c = vfork();
    if (c == 0) {
        void *volatile p = malloc(77);
        free(p);
        _exit(0);
    }
    waitpid(c, 0, 0);
    void *volatile after = malloc(55);
    free(after);
    free(before);
    return 0;
}
"#;

#[test]
fn a_vfork_childs_calls_are_the_childs() {
    let dir = TestDir::new("vfork-alloc");
    let prog = dir.compile_c("vfork_alloc", VFORK_ALLOC_C);
    for mode in ["ring", "stop"] {
        let trace = dir.join(format!("{mode}.trace"));
        record_ok(&dir, &trace, &["--mode", mode], &prog, &[]);
        let json = analyze(&trace);
        let child = processes(&json)
            .iter()
            .find(|p| p["origin"] == "vfork")
            .unwrap_or_else(|| panic!("{mode}: no vfork child: {json}"));
        let t = totals(child);
        assert_eq!(
            (t.allocations, t.allocated_bytes, t.frees),
            (1, 77, 1),
            "{mode}: {child}"
        );
        let parent = root_process(&json);
        let sizes = totals(parent);
        // The parent's own: 11 and 55 (and nothing of the child's).
        assert_eq!(sizes.allocated_bytes, 66, "{mode}: {parent}");
    }
}

/// Parent and fork child both allocate in a loop after the fork.
const FORK_LOOP_C: &str = r#"
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    void *volatile keep = malloc(10);
    pid_t c = fork();
    for (int i = 0; i < 5000; i++) {
        void *volatile p = malloc(16 + i % 100);
        free(p);
    }
    if (c == 0) {
        void *volatile q = malloc(33);
        (void)q;
        _exit(0);
    }
    waitpid(c, 0, 0);
    free(keep);
    return 0;
}
"#;

#[test]
fn a_fork_child_records_through_rings_of_its_own() {
    let dir = TestDir::new("fork-rings");
    let prog = dir.compile_c("fork_loop", FORK_LOOP_C);
    let mut counts = Vec::new();
    for mode in ["ring", "stop"] {
        let trace = dir.join(format!("{mode}.trace"));
        let rec = record_ok(&dir, &trace, &["--stats", "--mode", mode], &prog, &[]);
        if mode == "ring" {
            // No allocator call stopped, the child's neither: two threads took rings.
            assert!(
                rec.stderr.contains("(0 at allocator breakpoints"),
                "{}",
                rec.stderr
            );
            assert!(
                rec.stderr.contains("without a stop from 2 threads"),
                "{}",
                rec.stderr
            );
        }
        let json = analyze(&trace);
        let child = processes(&json)
            .iter()
            .find(|p| p["origin"] == "fork")
            .unwrap_or_else(|| panic!("no fork child: {json}"))
            .clone();
        let t = totals(&child);
        assert_eq!((t.allocations, t.frees), (5001, 5000), "{mode}: {child}");
        assert_eq!((t.inherited_blocks, t.inherited_bytes), (1, 10), "{mode}");
        counts.push((totals(root_process(&json)), t));
    }
    assert_eq!(counts[0], counts[1], "ring and stop modes count alike");
}
