//! Self-contained traces (issue 18): `heaptape record` embeds the symbols of every
//! stack address in the trace, so that a trace reads the same after its program was
//! rebuilt in place or deleted; `diff` matches call sites by function (lines moved by
//! an edit leave every site matched), counting frames from the first one outside the
//! allocator and the C++ standard library. Real programs, compiled here, recorded with
//! the real CLI.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Two leaking functions. `v2` rebuilds it the way an edit would: three lines inserted
/// at the top (every line below moves) and a third leaking function.
fn leaks_c(v2: bool) -> String {
    let mut s = String::new();
    if v2 {
        s.push_str("/* Inserted line one.\n * Inserted line two.\n * Inserted line three. */\n");
    }
    s.push_str(
        r#"#include <stdlib.h>
void *volatile sink;
__attribute__((noinline)) void leak_one(void) { sink = malloc(100); }
__attribute__((noinline)) void leak_two(void) { sink = malloc(200); }
"#,
    );
    if v2 {
        s.push_str("__attribute__((noinline)) void leak_three(void) { sink = malloc(300); }\n");
    }
    s.push_str("int main(void) {\n    leak_one();\n    leak_two();\n");
    if v2 {
        s.push_str("    leak_three();\n");
    }
    s.push_str("    sink = 0;\n    return 0;\n}\n");
    s
}

/// Builds `leaks.c` (version `v2` or not) into `dir/app`, in place.
fn build_leaks(dir: &TestDir, v2: bool) -> std::path::PathBuf {
    dir.compile_source(
        "leaks.c",
        &leaks_c(v2),
        "app",
        &["cc", "-O0", "-g", "-fno-omit-frame-pointer"],
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `heaptape diff --json ARGS`, which must succeed.
fn diff_json(args: &[&str]) -> Value {
    let out = run_heaptape(["diff", "--json"].iter().chain(args));
    assert!(out.status.success(), "diff {args:?}: {}", out.stderr);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("diff JSON: {e}"))
}

/// The functions of a JSON stack, innermost first.
fn functions(stack: &Value) -> Vec<String> {
    stack
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The records of kind `kind` in `heaptape dump --json trace`.
fn dumped(trace: &Path, kind: &str) -> Vec<Value> {
    let out = run_heaptape(["dump", "--json", s(trace)]);
    assert!(out.status.success(), "dump: {}", out.stderr);
    out.stdout_str()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|v| v["record"] == kind)
        .collect()
}

#[test]
fn a_program_rebuilt_in_place_diffs_to_its_one_new_site() {
    let dir = TestDir::new("rebuilt");
    let app = build_leaks(&dir, false);
    let old = dir.join("old.trace");
    let old_bare = dir.join("old-bare.trace");
    let r = record_ok(&dir, &old, &[], &app, &[]);
    assert!(r.stderr.contains("embedded the symbols of"), "{}", r.stderr);
    record_ok(&dir, &old_bare, &["--no-symbolize"], &app, &[]);
    // Rebuilt in place: same path, new build-id, every line moved.
    build_leaks(&dir, true);
    let new = dir.join("new.trace");
    record_ok(&dir, &new, &[], &app, &[]);

    let v = diff_json(&[s(&old), s(&new)]);
    assert_eq!(v["new_sites"], 1, "{v:#}");
    assert_eq!(v["vanished_sites"], 0, "{v:#}");
    assert_eq!(v["changed_sites"], 0, "{v:#}");
    let sites = v["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1, "{v:#}");
    assert_eq!(sites[0]["status"], "new");
    assert_eq!(functions(&sites[0]["stack"])[..2], ["leak_three", "main"]);
    assert_eq!(sites[0]["delta"]["leaked_bytes"], 300);
    assert_eq!(v["totals"]["delta"]["leaked_bytes"], 300);

    // Both sides name their functions: the old trace's frames come from its own
    // symbols, its binary is gone.
    let text = run_heaptape(["diff", s(&old), s(&new)]);
    let text = text.stdout_str();
    assert!(
        text.contains("call sites: 1 new, 0 vanished, 0 changed"),
        "{text}"
    );
    let old_report = analyze_text(&old);
    for f in ["leak_one", "leak_two", "main"] {
        assert!(
            old_report.contains(&format!(": {f} (leaks.c:")),
            "{f}: {old_report}"
        );
    }
    assert!(!old_report.contains("app+0x"), "{old_report}");

    // The trace recorded with --no-symbolize is what every trace used to be: its frames
    // in the rebuilt binary are `app+0x...`, and none of its sites match.
    let bare = analyze_raw(&old_bare).0;
    assert!(
        bare.stderr
            .contains("build-id differs from the recorded one"),
        "{}",
        bare.stderr
    );
    let v = diff_json(&[s(&old_bare), s(&new)]);
    assert_eq!(v["new_sites"], 3, "{v:#}");
    assert_eq!(v["vanished_sites"], 2, "{v:#}");
}

#[test]
fn a_trace_reads_the_same_after_its_binary_is_deleted() {
    let dir = TestDir::new("deleted");
    let app = build_leaks(&dir, false);
    let trace = dir.join("app.trace");
    record_ok(&dir, &trace, &[], &app, &[]);
    let text = analyze_text(&trace);
    let json = analyze_json(&trace);
    let suppressions = run_heaptape(["analyze", "--gen-suppressions", s(&trace)]).stdout_str();
    assert!(text.contains("leak_two (leaks.c:"), "{text}");

    std::fs::remove_file(&app).unwrap();
    std::fs::remove_file(dir.join("leaks.c")).unwrap();
    let after = run_heaptape(["analyze", s(&trace)]);
    assert!(after.status.success(), "{}", after.stderr);
    assert_eq!(after.stderr, "", "no warning about the missing file");
    assert_eq!(after.stdout_str(), text);
    assert_eq!(analyze(&trace), json);
    let after = run_heaptape(["analyze", "--gen-suppressions", s(&trace)]).stdout_str();
    assert_eq!(after, suppressions);
    assert!(after.contains("fun:leak_two"), "{after}");

    // --debug-dir and --sysroot look at files first, and fall back on the trace's
    // symbols when the files are gone: still the same report.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let with_dirs = run_heaptape(["analyze", "--sysroot", s(&empty), s(&trace)]);
    assert_eq!(with_dirs.stdout_str(), text, "{}", with_dirs.stderr);
    // flamegraph and diff take them too.
    let dirs = ["--sysroot", s(&empty), "--debug-dir", s(&empty)];
    let folded = |extra: &[&str]| {
        let r = run_heaptape(
            ["flamegraph", "--folded", "--metric", "allocated-bytes"]
                .iter()
                .chain(extra)
                .chain([&s(&trace)]),
        );
        assert!(r.status.success(), "{}", r.stderr);
        r.stdout_str()
    };
    let plain = folded(&[]);
    assert!(plain.contains("main;leak_two"), "{plain}");
    assert_eq!(folded(&dirs), plain);
    let d = run_heaptape(["diff"].iter().chain(&dirs).chain([&s(&trace), &s(&trace)]));
    assert!(d.status.success(), "{}", d.stderr);
    assert!(
        d.stdout_str()
            .contains("call sites: 0 new, 0 vanished, 0 changed"),
        "{}",
        d.stdout_str()
    );
}

#[test]
fn no_symbolize_records_the_old_way() {
    let dir = TestDir::new("no-symbolize");
    let app = build_leaks(&dir, false);
    let (with, without) = (dir.join("with.trace"), dir.join("without.trace"));
    record_ok(&dir, &with, &[], &app, &[]);
    let r = record_ok(&dir, &without, &["--no-symbolize"], &app, &[]);
    assert!(!r.stderr.contains("embedded"), "{}", r.stderr);

    assert!(dumped(&without, "Symbols").is_empty());
    let symbols = dumped(&with, "Symbols");
    let app_symbols = symbols
        .iter()
        .find(|v| v["path"] == s(&app))
        .unwrap_or_else(|| panic!("no symbols of {}: {symbols:?}", app.display()));
    let strings: Vec<&str> = app_symbols["strings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in ["leak_one", "leak_two", "main"] {
        assert!(strings.contains(&f), "{f} not in {strings:?}");
    }
    // Every stack node address of the program is listed in its module's symbols.
    let nodes = dumped(&with, "StackNode").len();
    let listed: usize = symbols
        .iter()
        .map(|v| v["addresses"].as_array().unwrap().len())
        .sum();
    assert!(listed >= 5 && listed <= nodes, "{listed} of {nodes} nodes");

    // Both name their frames while the binary is there; without it only `with` does.
    assert!(analyze_text(&without).contains("leak_two (leaks.c:"));
    std::fs::remove_file(&app).unwrap();
    let bare = analyze_text(&without);
    assert!(
        bare.contains("app+0x") && !bare.contains("leak_two"),
        "{bare}"
    );
    let said: Vec<&str> = bare
        .lines()
        .filter(|l| l.contains("(no symbols: file not found)"))
        .collect();
    assert!(!said.is_empty(), "an unnamed frame says why:\n{bare}");
    assert!(said.iter().all(|l| l.contains("app+0x")), "{said:?}");
    assert!(analyze_text(&with).contains("leak_two (leaks.c:"));
}

#[test]
fn frames_without_symbols_say_why() {
    let dir = TestDir::new("no-symbols-why");
    let app = build_leaks(&dir, false);
    // Stripped, and no debug file anywhere: the dynamic symbols name no function of
    // the program.
    let stripped = dir.join("stripped");
    std::fs::copy(&app, &stripped).unwrap();
    let strip = std::process::Command::new("strip")
        .arg(&stripped)
        .status()
        .expect("strip (binutils)");
    assert!(strip.success());
    let trace = dir.join("stripped.trace");
    record_ok(&dir, &trace, &["--no-symbolize"], &stripped, &[]);
    let text = analyze_text(&trace);
    let why = "(no symbols: stripped, no debug file found)";
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(why)).collect();
    assert!(!lines.is_empty(), "{text}");
    assert!(lines.iter().all(|l| l.contains("stripped+0x")), "{lines:?}");
    // Said once per stack: the leak's stack has two frames in the program.
    let leak: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("definitely lost in loss record"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("by ") || l.trim_start().starts_with("at "))
        .collect();
    assert!(leak.len() >= 2, "{text}");
    assert_eq!(
        leak.iter().filter(|l| l.contains(why)).count(),
        1,
        "{leak:?}"
    );
    // Frames below main stay hidden when main has no name: the stack ends at the
    // program's frames, above the C library's start-up.
    assert!(!text.contains("__libc_start"), "{text}");
    // The JSON frame says it too.
    let json = analyze_json(&trace);
    assert!(
        json.to_string()
            .contains("\"no_symbols\":\"no symbols: stripped, no debug file found\""),
        "no `no_symbols` in the JSON"
    );

    // Recorded with its symbols embedded: the recorder found none; the file, still
    // there, says why; once it is gone the trace only says that none were found.
    let trace = dir.join("embedded.trace");
    record_ok(&dir, &trace, &[], &stripped, &[]);
    let text = analyze_text(&trace);
    assert!(
        text.lines()
            .any(|l| l.contains("stripped+0x") && l.contains(why)),
        "{text}"
    );
    std::fs::remove_file(&stripped).unwrap();
    let text = analyze_text(&trace);
    assert!(
        text.lines()
            .any(|l| l.contains("stripped+0x") && l.contains("(no symbols when recorded)")),
        "{text}"
    );

    // Rebuilt in place after a recording without embedded symbols: the file there is
    // another build.
    let trace = dir.join("old.trace");
    record_ok(&dir, &trace, &["--no-symbolize"], &app, &[]);
    build_leaks(&dir, true);
    let text = analyze_text(&trace);
    assert!(
        text.contains("(no symbols: the file was rebuilt since (build-id differs))"),
        "{text}"
    );
}

/// A C++ program whose allocations go through std::vector, std::map and std::string;
/// `v2` adds a function that fills one more vector (and keeps it).
fn cpp_source(v2: bool) -> String {
    format!(
        r#"#include <map>
#include <string>
#include <vector>
std::vector<int> *numbers;
std::vector<int> *more;
std::map<std::string, int> *names;
__attribute__((noinline)) void fill_numbers() {{
    numbers = new std::vector<int>;
    for (int i = 0; i < 100; i++) numbers->push_back(i);
}}
__attribute__((noinline)) void build_index() {{
    names = new std::map<std::string, int>;
    for (int i = 0; i < 20; i++) (*names)[std::string(40, 'a' + i)] = i;
}}
__attribute__((noinline)) void fill_more() {{
    more = new std::vector<int>;
    for (int i = 0; i < 50; i++) more->push_back(i);
}}
int main() {{
    fill_numbers();
    build_index();
    if ({}) fill_more();
    return 0;
}}
"#,
        u8::from(v2)
    )
}

#[test]
fn call_site_depth_counts_from_the_programs_own_frames() {
    let dir = TestDir::new("cpp-depth");
    let cc = ["g++", "-O0", "-g", "-fno-omit-frame-pointer"];
    let v1 = dir.compile_source("v1/app.cc", &cpp_source(false), "v1/app", &cc);
    let v2 = dir.compile_source("v2/app.cc", &cpp_source(true), "v2/app", &cc);
    let (t1, t2) = (dir.join("v1.trace"), dir.join("v2.trace"));
    record_ok(&dir, &t1, &[], &v1, &[]);
    record_ok(&dir, &t2, &[], &v2, &[]);

    // One frame per key: the program's function, not `std::__new_allocator<int>::
    // allocate`, which fill_numbers and fill_more share (their sites would merge).
    let v = diff_json(&["--call-site-depth", "1", s(&t1), s(&t2)]);
    assert_eq!(v["new_sites"], 1, "{v:#}");
    assert_eq!(v["vanished_sites"], 0, "{v:#}");
    let sites = v["sites"].as_array().unwrap();
    let new: Vec<&Value> = sites.iter().filter(|x| x["status"] == "new").collect();
    assert_eq!(new[0]["key"], "fill_more()", "{v:#}");
    assert_eq!(functions(&new[0]["stack"]), ["fill_more()"]);
    // Depth 4 reaches main and below.
    let v = diff_json(&["--call-site-depth", "4", s(&t1), s(&t2)]);
    let new: Vec<&Value> = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["status"] == "new")
        .collect();
    assert_eq!(new.len(), 1, "{v:#}");
    assert_eq!(functions(&new[0]["stack"])[..2], ["fill_more()", "main"]);

    // analyze --call-site-depth 1 groups by the first frame outside the runtime too: a
    // site's stack shows the standard library frames it passes through, then ends
    // with the program's function.
    let json = analyze_json_with(&t1, &["--call-site-depth", "1", "--top", "50"]);
    let sites = json["processes"][0]["sites_live_at_exit"]
        .as_array()
        .unwrap();
    let last: Vec<String> = sites
        .iter()
        .filter_map(|x| functions(&x["stack"]).last().cloned())
        .collect();
    for f in ["fill_numbers()", "build_index()"] {
        assert!(last.iter().any(|l| l == f), "{f} not among {last:?}");
    }
    let vector = sites
        .iter()
        .find(|x| {
            functions(&x["stack"]).last().map(String::as_str) == Some("fill_numbers()")
                && functions(&x["stack"]).len() > 1
        })
        .unwrap_or_else(|| panic!("no std::vector site: {last:?}"));
    let frames = functions(&vector["stack"]);
    assert!(
        frames[..frames.len() - 1]
            .iter()
            .all(|f| f.contains("std::")),
        "{frames:?}"
    );
}
