//! Leak suppressions end to end, against memcheck:
//!
//! * the default list: leak-free programs (threads joined, C++ iostreams and an
//!   exception) pass `--fail-on definite,indirect,possible,invalid-free`, as they pass
//!   memcheck with its default exit-time freeres, and without the list heaptape reports
//!   what memcheck reports without its freeres;
//! * suppression files in valgrind's and LeakSanitizer's formats hide exactly the
//!   records they match (memcheck, given the same valgrind file, hides the same);
//! * `--gen-suppressions` output hides every record it was made from, in heaptape and
//!   in memcheck, and memcheck's own `--gen-suppressions` output does in heaptape.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

mod common;
use common::*;

const FAIL_ON: &str = "--fail-on=definite,indirect,possible,invalid-free";

/// memcheck with its defaults (exit-time freeres on), full leak check.
const MEMCHECK_DEFAULTS: [&str; 4] = [
    "--run-libc-freeres=yes",
    "--run-cxx-freeres=yes",
    "--leak-check=full",
    "--show-leak-kinds=all",
];

/// memcheck without freeres (the runtimes' blocks are left for the leak check).
const MEMCHECK_NO_FREERES: [&str; 2] = ["--leak-check=full", "--show-leak-kinds=all"];

/// The one process's memcheck LEAK SUMMARY of `prog` run with `opts`.
fn memcheck_summary(
    dir: &TestDir,
    opts: &[&str],
    prog: &Path,
) -> (BTreeMap<String, (u64, u64)>, String) {
    let (_, logs) = valgrind_logs(dir, opts, prog, &[]);
    assert_eq!(logs.len(), 1, "one process under memcheck");
    (memcheck_leak_summary(&logs[0].text), logs[0].text.clone())
}

/// A heaptape summary line: `(blocks, bytes)` of `class` ("definitely lost", ...).
fn figures(process: &Value, class: &str) -> (u64, u64) {
    let c = &process["leaks"][class.replace(' ', "_")];
    (
        c["blocks"]
            .as_u64()
            .unwrap_or_else(|| panic!("{class}: {c}")),
        c["bytes"].as_u64().unwrap(),
    )
}

const LOSSES: [&str; 3] = ["definitely lost", "indirectly lost", "possibly lost"];

/// Runs `heaptape analyze OPTS trace` (text), returning the run.
fn analyze_text_with(trace: &Path, opts: &[&str]) -> Run {
    run(heaptape().arg("analyze").args(opts).arg(trace))
}

/// A leak-free program: clean under memcheck with its defaults and under heaptape with
/// its default suppressions (`--fail-on` exits 0, nothing lost); without either, both
/// report the same losses (the runtime's blocks).
fn assert_clean_like_memcheck(dir: &TestDir, name: &str, prog: &Path) -> Value {
    let json = record_like_native(dir, name, prog, &[]);
    let trace = dir.join(format!("{name}.trace"));
    let p = root_process(&json).clone();
    for class in LOSSES {
        assert_eq!(figures(&p, class), (0, 0), "{class}: {:#}", p["leaks"]);
    }
    assert!(figures(&p, "suppressed").0 > 0, "{:#}", p["leaks"]);
    assert_eq!(p["loss_records"].as_array().map(Vec::len), Some(0));
    let pass = analyze_text_with(&trace, &[FAIL_ON]);
    assert!(
        pass.status.success() && !pass.stderr.contains("fail"),
        "--fail-on: {:?}\n{}",
        pass.status,
        pass.stderr
    );
    assert!(
        pass.stdout_str().contains("suppressed: "),
        "{}",
        pass.stdout_str()
    );

    let (mc, log) = memcheck_summary(dir, &MEMCHECK_DEFAULTS, prog);
    for class in LOSSES {
        assert_eq!(mc[class], (0, 0), "memcheck: {class}\n{log}");
    }
    // Without memcheck's freeres and heaptape's defaults, the same losses.
    let raw = analyze_json_with(&trace, &["--no-default-suppressions"]);
    let raw = root_process(&raw);
    let (mc, log) = memcheck_summary(dir, &MEMCHECK_NO_FREERES, prog);
    for class in LOSSES {
        assert_eq!(
            figures(raw, class),
            mc[class],
            "{class}: heaptape vs memcheck\n{log}"
        );
    }
    assert_eq!(figures(raw, "suppressed"), (0, 0));
    p
}

const THREADS_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static void *work(void *arg)
{
    for (int i = 0; i < 100; i++) {
        void *p = malloc(16 + i);
        free(p);
    }
    return arg;
}

int main(void)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, work, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    printf("4 threads joined\n");
    return 0;
}
"#;

#[test]
fn joined_threads_pass_fail_on_as_under_memcheck() {
    let dir = TestDir::new("supp_threads");
    let prog = dir.compile_c("threads", THREADS_C);
    let p = assert_clean_like_memcheck(&dir, "threads", &prog);
    // The four threads' DTVs and stdout's buffer.
    assert_eq!(figures(&p, "suppressed").0, 5, "{:#}", p["leaks"]);
    // Without the defaults: the DTVs are possibly lost, and --fail-on says so.
    let trace = dir.join("threads.trace");
    let fail = analyze_text_with(&trace, &[FAIL_ON, "--no-default-suppressions"]);
    assert_eq!(fail.status.code(), Some(1), "{}", fail.stderr);
    assert!(fail.stderr.contains("are possibly lost"), "{}", fail.stderr);
}

const CXX: &str = r#"
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

int main()
{
    std::string s = "a string too long for the small-string buffer";
    std::vector<int> v;
    for (int i = 0; i < 100; i++)
        v.push_back(i);
    try {
        throw std::runtime_error("thrown: " + s);
    } catch (const std::exception &e) {
        std::cout << "caught " << e.what() << "\n";
    }
    std::cout << s << " " << v.size() << std::endl;
    return 0;
}
"#;

#[test]
fn iostreams_and_an_exception_pass_fail_on_as_under_memcheck() {
    let dir = TestDir::new("supp_cxx");
    let prog = dir.compile_source("cxx.cc", CXX, "cxx", &["g++", "-g", "-O0"]);
    let p = assert_clean_like_memcheck(&dir, "cxx", &prog);
    // libstdc++'s emergency exception pool and stdout's buffer.
    assert_eq!(figures(&p, "suppressed").0, 2, "{:#}", p["leaks"]);
}

/// `leak_sites.c`: leak_one 1 x 100 bytes, leak_two 2 x 200, leak_three 1 x 300 (calloc).
struct Sites {
    dir: TestDir,
    prog: std::path::PathBuf,
    trace: std::path::PathBuf,
}

fn sites() -> Sites {
    let dir = TestDir::new("supp_sites");
    let prog = dir.compile("leaks/leak_sites.c", "leak_sites", &[]);
    record_like_native(&dir, "sites", &prog, &[]);
    let trace = dir.join("sites.trace");
    Sites { dir, prog, trace }
}

/// The innermost function of each loss record, sorted.
fn record_functions(process: &Value) -> Vec<String> {
    let mut v: Vec<String> = process["loss_records"]
        .as_array()
        .expect("loss_records")
        .iter()
        .map(|r| {
            r["stack"][0]["function"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    v.sort();
    v
}

impl Sites {
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write suppression file");
        path.to_str().expect("utf-8 path").to_string()
    }

    /// The one process of `heaptape analyze --json --suppressions FILE`.
    fn analyze(&self, file: &str) -> Value {
        let json = analyze_json_with(&self.trace, &["--suppressions", file]);
        root_process(&json).clone()
    }

    fn memcheck(&self, file: &str) -> BTreeMap<String, (u64, u64)> {
        let supp = format!("--suppressions={file}");
        let mut opts = MEMCHECK_DEFAULTS.to_vec();
        opts.push(&supp);
        memcheck_summary(&self.dir, &opts, &self.prog).0
    }
}

const LEAK_TWO_VALGRIND: &str = "\
# leak_two's blocks, by function name
{
   leak-two
   Memcheck:Leak
   match-leak-kinds: definite
   fun:malloc
   fun:leak_two
}
";

#[test]
fn a_valgrind_suppression_hides_its_records_as_in_memcheck() {
    let s = sites();
    let all = root_process(&analyze_json(&s.trace)).clone();
    assert_eq!(
        record_functions(&all),
        ["leak_one", "leak_three", "leak_two", "leak_two"]
    );
    assert_eq!(figures(&all, "definitely lost"), (4, 800));
    assert_eq!(figures(&all, "suppressed"), (0, 0));

    let file = s.write("two.supp", LEAK_TWO_VALGRIND);
    let p = s.analyze(&file);
    assert_eq!(record_functions(&p), ["leak_one", "leak_three"]);
    assert_eq!(figures(&p, "definitely lost"), (2, 400));
    assert_eq!(figures(&p, "suppressed"), (2, 400));
    // Records keep memcheck's numbers among all four.
    for r in p["loss_records"].as_array().unwrap() {
        assert_eq!(r["of"], 4);
    }
    let mc = s.memcheck(&file);
    assert_eq!(mc["definitely lost"], (2, 400), "memcheck");
    assert_eq!(mc["suppressed"], (2, 400), "memcheck");

    // The text report's leak section: no leak_two record, the suppressed line.
    let text = analyze_text_with(&s.trace, &["--suppressions", &file]).stdout_str();
    let leaks = text
        .split("LEAK SUMMARY")
        .nth(1)
        .and_then(|t| t.split("total heap usage").next())
        .unwrap_or_else(|| panic!("no leak summary: {text}"));
    assert!(!leaks.contains("leak_two"), "{leaks}");
    assert!(leaks.contains("leak_three"), "{leaks}");
    assert!(
        leaks.contains("suppressed: 400 bytes in 2 blocks"),
        "{leaks}"
    );

    // diff's leaked_bytes leaves them out too (NEW's total: 800, or 400 suppressed).
    let diff = |extra: &[&str]| {
        run(heaptape()
            .arg("diff")
            .arg(&s.trace)
            .arg(&s.trace)
            .args(["--fail-if", "leaked_bytes>500"])
            .args(extra))
    };
    assert_eq!(diff(&[]).status.code(), Some(1));
    let r = diff(&["--suppressions", &file]);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);

    // Another class (match-leak-kinds: reachable) hides nothing.
    let reachable = LEAK_TWO_VALGRIND.replace("definite", "reachable");
    let p = s.analyze(&s.write("reachable.supp", &reachable));
    assert_eq!(figures(&p, "suppressed"), (0, 0));
}

#[test]
fn an_lsan_suppression_hides_its_records() {
    let s = sites();
    let file = s.write("lsan.supp", "# LeakSanitizer\nleak:leak_two\n");
    let p = s.analyze(&file);
    assert_eq!(record_functions(&p), ["leak_one", "leak_three"]);
    assert_eq!(figures(&p, "definitely lost"), (2, 400));
    assert_eq!(figures(&p, "suppressed"), (2, 400));
    // The leaked flamegraph leaves them out too.
    let folded = run(heaptape()
        .args(["flamegraph", "--folded", "--suppressions", &file])
        .arg(&s.trace));
    assert!(folded.status.success(), "{}", folded.stderr);
    let lines = folded.stdout_str();
    assert!(lines.contains(";leak_one 100\n"), "{lines}");
    assert!(!lines.contains("leak_two"), "{lines}");
    // By module: every record is in the program.
    let module = s.write("module.supp", "leak:leak_sites$\n");
    assert_eq!(figures(&s.analyze(&module), "suppressed"), (4, 800));
    // Both files at once; a record is counted once.
    let json = analyze_json_with(
        &s.trace,
        &[
            "--suppressions",
            &file,
            "--suppressions",
            &s.write("one.supp", "leak:^leak_one$\n"),
        ],
    );
    let p = root_process(&json);
    assert_eq!(record_functions(p), ["leak_three"]);
    assert_eq!(figures(p, "suppressed"), (3, 500));
}

#[test]
fn generated_suppressions_hide_every_record() {
    let s = sites();
    let gen = run(heaptape()
        .args(["analyze", "--gen-suppressions"])
        .arg(&s.trace));
    assert!(gen.status.success(), "{}", gen.stderr);
    let text = gen.stdout_str();
    // leak_two's two records make one suppression.
    assert_eq!(text.matches("Memcheck:Leak").count(), 3, "{text}");
    assert!(
        text.contains("   fun:calloc\n   fun:leak_three\n   fun:main\n}"),
        "{text}"
    );
    let file = s.write("gen.supp", &text);
    let p = s.analyze(&file);
    assert_eq!(p["loss_records"], serde_json::json!([]));
    assert_eq!(figures(&p, "suppressed"), (4, 800));
    let pass = analyze_text_with(&s.trace, &["--suppressions", &file, FAIL_ON]);
    assert!(pass.status.success(), "{}", pass.stderr);
    // memcheck reads them too, and hides the same.
    let mc = s.memcheck(&file);
    assert_eq!(mc["definitely lost"], (0, 0), "memcheck");
    assert_eq!(mc["suppressed"], (4, 800), "memcheck");

    // `heaptape run` shares the options.
    let run_ = run(heaptape()
        .args(["run", "--suppressions", &file, FAIL_ON, "-o"])
        .arg(s.dir.join("run.trace"))
        .arg("--")
        .arg(&s.prog)
        .current_dir(s.dir.path()));
    assert_eq!(run_.status.code(), Some(0), "{}", run_.stderr);
    assert!(
        run_.stderr.contains("suppressed: 800 bytes in 4 blocks"),
        "{}",
        run_.stderr
    );
}

#[test]
fn memchecks_generated_suppressions_hide_every_record() {
    let s = sites();
    let (_, logs) = valgrind_logs(
        &s.dir,
        &["--leak-check=full", "--gen-suppressions=all"],
        &s.prog,
        &[],
    );
    // The blocks memcheck printed between its log lines.
    let mut text = String::new();
    let mut inside = false;
    for line in logs[0].text.lines() {
        inside |= line == "{";
        if inside {
            text.push_str(line);
            text.push('\n');
        }
        inside &= line != "}";
    }
    assert_eq!(text.matches("Memcheck:Leak").count(), 4, "{}", logs[0].text);
    let p = s.analyze(&s.write("memcheck.supp", &text));
    assert_eq!(p["loss_records"], serde_json::json!([]));
    assert_eq!(figures(&p, "suppressed"), (4, 800));
}

#[test]
fn bad_suppression_files_are_usage_errors() {
    let s = sites();
    let bad = s.write(
        "bad.supp",
        "{\n   x\n   Memcheck:Leak\n   fun:malloc\n   nonsense\n}\n",
    );
    let r = analyze_text_with(&s.trace, &["--suppressions", &bad]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("{bad}:5: expected")),
        "{}",
        r.stderr
    );
    let missing = s.dir.join("missing.supp");
    let r = analyze_text_with(&s.trace, &["--suppressions", missing.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("cannot read"), "{}", r.stderr);
    // The suppressions replace the report; JSON has no place for them.
    let r = analyze_text_with(&s.trace, &["--gen-suppressions", "--json"]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
}
