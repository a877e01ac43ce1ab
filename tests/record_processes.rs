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
