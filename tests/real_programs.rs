//! Real programs under the recorder: same output and status as natively, and a trace
//! that reads back completely.

mod common;

use common::*;

fn check(name: &str, prog: &str, args: &[&str]) {
    let dir = TestDir::new(name);
    let json = record_like_native(&dir, name, prog, args);
    let p = root_process(&json);
    assert_eq!(p["exit"], serde_json::json!({"code": 0}));
    let t = totals(p);
    assert!(t.allocations > 0, "{t:?}");
    assert!(t.frees <= t.allocations + t.inherited_blocks, "{t:?}");
}

#[test]
fn python_json_dump() {
    check(
        "python",
        "python3",
        &["-c", "import json; print(json.dumps(list(range(50))))"],
    );
}

#[test]
fn perl_hash() {
    check(
        "perl",
        "perl",
        &[
            "-e",
            "my %h; $h{$_}=$_ for 1..1000; print scalar(keys %h), \"\\n\"",
        ],
    );
}

#[test]
fn gcc_version() {
    check("gcc", "gcc", &["--version"]);
}

#[test]
fn ls_recursive() {
    check("ls", "ls", &["-lR", "/usr/share/doc"]);
}
