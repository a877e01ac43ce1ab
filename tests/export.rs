//! `heaptape export`: a pprof heap profile Go's tools read, with heaptape's figures
//! (decoded here field by field, and read back by `go tool pprof`, Debian's golang-go,
//! which .ci/run installs, when it is installed); a speedscope file that follows its
//! schema, with the same figures.

mod common;

use std::process::Command;

use common::*;
use heaptape_analyzer::pprof::{read_pprof, Profile};
use serde_json::Value;

const SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) void *leaky_function(int n) { return malloc(n); }
__attribute__((noinline)) void churn(void) { for (int i = 0; i < 1000; i++) free(malloc(64)); }
int main(void) {
    for (int i = 0; i < 10; i++) { void *volatile p = leaky_function(1000); p = 0; }
    churn();
    puts("ok");
    return 0;
}
"#;

/// The values of the samples whose leaf location's innermost function is `name`, summed
/// per sample type.
fn values_of(p: &Profile, name: &str) -> Vec<i64> {
    let s = |i: i64| p.string_table[i as usize].as_str();
    let mut sum = vec![0; p.sample_type.len()];
    for sample in &p.sample {
        let leaf = p
            .location
            .iter()
            .find(|l| Some(&l.id) == sample.location_id.first())
            .expect("leaf location");
        let f = p
            .function
            .iter()
            .find(|f| Some(f.id) == leaf.line.first().map(|l| l.function_id))
            .expect("leaf function");
        if s(f.name) == name {
            for (t, v) in sum.iter_mut().zip(&sample.value) {
                *t += v;
            }
        }
    }
    sum
}

#[test]
fn pprof_export_holds_the_traces_figures() {
    let dir = TestDir::new("pprof");
    let prog = dir.compile_c("pp", SOURCE);
    let trace = dir.join("pp.trace");
    record_ok(&dir, &trace, &[], &prog, &[]);
    let out = dir.join("heap.pb.gz");
    let r = run_heaptape([
        "export".as_ref(),
        "--format".as_ref(),
        "pprof".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        trace.as_os_str(),
    ]);
    assert!(r.status.success(), "{}", r.stderr);
    let p = read_pprof(std::fs::File::open(&out).expect("the profile")).expect("a profile");
    let s = |i: i64| p.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes")
        ]
    );
    assert_eq!(s(p.default_sample_type), "inuse_space");
    assert_eq!(values_of(&p, "leaky_function"), [10, 10_000, 10, 10_000]);
    assert_eq!(values_of(&p, "churn"), [1000, 64_000, 0, 0]);
    // The program's mapping, with its build-id.
    let prog_s = prog.to_str().expect("utf-8");
    let m = p
        .mapping
        .iter()
        .find(|m| s(m.filename) == prog_s)
        .expect("the program's mapping");
    assert_eq!(s(m.build_id).len(), 40, "a GNU build-id in hex");
    // --at peak: at the peak the ten blocks and one 64-byte block of churn's are live
    // (or the ten alone, if the peak came before churn).
    let peak = dir.join("peak.pb.gz");
    let r = run_heaptape([
        "export".as_ref(),
        "--at".as_ref(),
        "peak".as_ref(),
        "-o".as_ref(),
        peak.as_os_str(),
        trace.as_os_str(),
    ]);
    assert!(r.status.success(), "{}", r.stderr);
    let pk = read_pprof(std::fs::File::open(&peak).expect("the profile")).expect("a profile");
    assert_eq!(values_of(&pk, "leaky_function")[2..], [10, 10_000]);

    // go tool pprof names the leaking function first by in-use space.
    if Command::new("go").arg("version").output().is_err() {
        eprintln!(
            "SKIPPED the go tool pprof part: go is not installed (apt-get install golang-go)"
        );
        return;
    }
    let top = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space"])
        .arg(&out)
        .output()
        .expect("go tool pprof runs");
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let first = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or("");
    assert!(first.trim_end().ends_with("leaky_function"), "{text}");
    assert!(first.contains("9.77kB"), "{text}");
    let traces = Command::new("go")
        .args(["tool", "pprof", "-traces"])
        .arg(&out)
        .output()
        .expect("go tool pprof runs");
    let text = String::from_utf8_lossy(&traces.stdout);
    assert!(
        text.contains("leaky_function\n             main\n"),
        "leaky_function's stack: {text}"
    );
}

#[test]
fn speedscope_export_follows_its_schema_with_the_traces_figures() {
    let dir = TestDir::new("speedscope");
    let prog = dir.compile_c("pp", SOURCE);
    let trace = dir.join("pp.trace");
    record_ok(&dir, &trace, &[], &prog, &[]);
    let out = dir.join("heap.speedscope.json");
    let r = run_heaptape([
        "export".as_ref(),
        "--format".as_ref(),
        "speedscope".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        trace.as_os_str(),
    ]);
    assert!(r.status.success(), "{}", r.stderr);
    let j: Value = serde_json::from_slice(&std::fs::read(&out).expect("the file")).expect("JSON");
    // The schema's required fields and types (speedscope's file-format-schema.json).
    assert_eq!(
        j["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    assert!(j["exporter"]
        .as_str()
        .is_some_and(|e| e.starts_with("heaptape")));
    let frames = j["shared"]["frames"].as_array().expect("shared.frames");
    for f in frames {
        assert!(f["name"].is_string(), "{f}");
        assert!(f.get("line").is_none_or(|l| l.is_u64()), "{f}");
    }
    let profiles = j["profiles"].as_array().expect("profiles");
    assert_eq!(j["activeProfileIndex"], 0);
    let mut by_name = std::collections::HashMap::new();
    for p in profiles {
        assert_eq!(p["type"], "sampled");
        assert!(
            ["none", "bytes"].contains(&p["unit"].as_str().unwrap_or("")),
            "{}",
            p["unit"]
        );
        assert_eq!(p["startValue"], 0);
        let samples = p["samples"].as_array().expect("samples");
        let weights = p["weights"].as_array().expect("weights");
        assert_eq!(samples.len(), weights.len());
        let total: u64 = weights.iter().map(|w| w.as_u64().expect("a weight")).sum();
        assert_eq!(p["endValue"].as_u64(), Some(total));
        // Each sample: frame indexes, outermost first.
        let mut leaf_weights = std::collections::HashMap::new();
        for (s, w) in samples.iter().zip(weights) {
            let s = s.as_array().expect("a stack");
            for i in s {
                assert!((i.as_u64().expect("an index") as usize) < frames.len());
            }
            let first = &frames[s[0].as_u64().unwrap() as usize]["name"];
            assert_eq!(first, "_start", "outermost first");
            let leaf = frames[s.last().unwrap().as_u64().unwrap() as usize]["name"]
                .as_str()
                .unwrap()
                .to_string();
            *leaf_weights.entry(leaf).or_insert(0) += w.as_u64().unwrap();
        }
        by_name.insert(p["name"].as_str().unwrap().to_string(), leaf_weights);
    }
    assert_eq!(by_name["Bytes in use at exit"]["leaky_function"], 10_000);
    assert!(!by_name["Bytes in use at exit"].contains_key("churn"));
    assert_eq!(by_name["Bytes allocated"]["churn"], 64_000);
    assert_eq!(by_name["Allocation calls"]["churn"], 1000);
    assert_eq!(by_name["Allocation calls"]["leaky_function"], 10);
}

#[test]
fn html_report_is_self_contained_and_shows_the_traces_figures() {
    let dir = TestDir::new("html");
    let prog = dir.compile_c("pp", SOURCE);
    let trace = dir.join("pp.trace");
    record_ok(&dir, &trace, &[], &prog, &[]);
    let page = dir.join("report.html");
    let r = run_heaptape([
        "report".as_ref(),
        "-o".as_ref(),
        page.as_os_str(),
        trace.as_os_str(),
    ]);
    assert!(r.status.success(), "{}", r.stderr);
    let html = std::fs::read_to_string(&page).expect("the page");
    // Self-contained: no external script, style, image or font.
    for needle in ["src=\"http", "href=\"http", "<link", "@import", "url("] {
        assert!(
            !html.contains(needle),
            "the page loads something from outside: {needle}"
        );
    }
    assert!(html.len() < 200_000, "{} bytes", html.len());
    assert!(
        html.contains("\"leaky_function\""),
        "the data holds the stacks"
    );

    let Some(browser) = chromium() else {
        eprintln!("SKIPPED the browser part: chromium is not installed (apt-get install chromium)");
        return;
    };
    let (dom, log) = headless(browser, &page, &["--dump-dom"]);
    // No script error on the console.
    for line in log.lines() {
        assert!(
            !(line.contains("CONSOLE") && (line.contains("Error") || line.contains("Uncaught"))),
            "console error: {line}"
        );
    }
    // The rendered page shows the figures.
    assert!(dom.contains("heaptape report"), "{dom}");
    assert!(dom.contains("definitely lost"), "{dom}");
    assert!(
        dom.contains("10,000 bytes in 10 blocks are definitely lost"),
        "{dom}"
    );
    assert!(dom.contains("leaky_function"), "{dom}");
    assert!(
        dom.contains("total heap usage: 1,011 allocs, 1,000 frees"),
        "{dom}"
    );
    assert!(!dom.contains("Loading…"), "the script did not run: {dom}");
}
