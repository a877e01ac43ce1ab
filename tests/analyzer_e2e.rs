//! End-to-end checks of the analyzer's growth, peak, temporary, flamegraph and diff
//! features: a C program is compiled, recorded with the real CLI, and the reports are
//! checked against figures the program's source fixes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Iterations of the fixture's main loop.
const N: u64 = 200;

/// A growing cache (freed only at exit), steady churn over a ring of 8 blocks (never
/// freed: 4,096 bytes leaked), one temporary allocation per iteration, two plain leaks
/// of 3,000 and 1,000 bytes, and, when built with `-DV2=1`, a third leak of 2,048 bytes
/// (the call is on a line of its own in both builds so that no line moves).
const GROWTH_C: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef V2
#define V2 0
#endif

static void **cache;
static int ncache;
static void *ring[8];

__attribute__((noinline)) void cache_insert(void) {
    void *p = malloc(1000);
    memset(p, 1, 1000);
    cache[ncache++] = p;
}

__attribute__((noinline)) void churn(void) {
    char *p = malloc(4096);
    memset(p, 2, 4096);
    free(p);
}

__attribute__((noinline)) void ring_alloc(int i) {
    free(ring[i % 8]);
    ring[i % 8] = malloc(512);
    memset(ring[i % 8], 3, 512);
}

__attribute__((noinline)) void *leak_a(void) { return malloc(3000); }
__attribute__((noinline)) void *leak_b(void) { return malloc(1000); }
__attribute__((noinline)) void *leak_c(void) { return malloc(2048); }

void *volatile sink;

int main(void) {
    int n = 200;
    struct timespec ms = {0, 1000000};
    cache = malloc(n * sizeof(void *));
    sink = leak_a();
    sink = leak_b();
    if (V2) sink = leak_c();
    for (int i = 0; i < n; i++) {
        cache_insert();
        churn();
        ring_alloc(i);
        nanosleep(&ms, NULL);
    }
    for (int i = 0; i < n; i++)
        free(cache[i]);
    free(cache);
    return 0;
}
"#;

/// Compiles the fixture into `dir/<sub>/growth` (the source is `dir/<sub>/growth.c`, so
/// both builds carry the same file name).
fn build(dir: &TestDir, sub: &str, v2: bool) -> PathBuf {
    let mut cc = vec!["cc", "-O0", "-g", "-fno-omit-frame-pointer"];
    if v2 {
        cc.push("-DV2=1");
    }
    dir.compile_source(
        &format!("{sub}/growth.c"),
        GROWTH_C,
        &format!("{sub}/growth"),
        &cc,
    )
}

/// `heaptape record -o trace -- exe`, which must succeed.
fn record(dir: &TestDir, exe: &Path, trace: &Path) {
    record_ok(dir, trace, &[], exe, &[]);
}

/// The innermost function of a JSON stack.
fn innermost(stack: &Value) -> String {
    stack
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f["function"].as_str())
        .unwrap_or("?")
        .to_string()
}

fn recorded(name: &str) -> (TestDir, PathBuf, PathBuf) {
    let dir = TestDir::new(name);
    let exe = build(&dir, "v1", false);
    let trace = dir.join("v1.trace");
    record(&dir, &exe, &trace);
    (dir, exe, trace)
}

#[test]
fn growth_peak_and_temporary_allocations() {
    let (_dir, _exe, trace) = recorded("growth");
    let v = analyze_json_with(&trace, &["--top", "50"]);
    let p = &v["processes"][0];
    let t = &p["totals"];
    // main's table, the cache, the churn, the ring and two leaks.
    assert_eq!(t["allocations"], 1 + 3 * N + 2);
    assert_eq!(t["temporary_allocations"], N);
    assert_eq!(t["live_at_exit_bytes"], 8 * 512 + 3000 + 1000);
    // The peak: the last churn block, with the cache full.
    let peak = N * 1000 + N * 8 + 8 * 512 + 4096 + 4000;
    assert_eq!(t["peak_live_bytes"], peak);
    assert_eq!(t["peak_live_blocks"], N + 1 + 8 + 1 + 2);
    let (start, end) = (
        p["start_ns"].as_u64().unwrap(),
        p["end_ns"].as_u64().unwrap(),
    );
    let at = t["peak_live_ns"].as_u64().unwrap();
    assert!(
        at >= start + (end - start) * 9 / 10,
        "peak at {at}, lifetime {start}..{end}"
    );
    let rate = t["allocation_rate_per_sec"].as_f64().unwrap();
    let expected = (1 + 3 * N + 2) as f64 * 1e9 / (end - start) as f64;
    assert!(
        (rate - expected).abs() < 1e-6 * expected,
        "{rate} vs {expected}"
    );
    let at_peak = &p["sites_at_peak"][0];
    assert_eq!(innermost(&at_peak["stack"]), "cache_insert");
    assert_eq!(at_peak["peak_bytes"], N * 1000);
    assert_eq!(at_peak["peak_blocks"], N);

    // Growth: the cache is the top suspect (freed only at the end), the ring is not.
    let growth = p["growth"].as_array().unwrap();
    let top = &growth[0];
    assert_eq!(innermost(&top["stack"]), "cache_insert");
    assert_eq!(top["suspect"], true);
    assert_eq!(top["teardown_excluded"], true);
    assert_eq!(top["live_bytes_end"], 0);
    assert_eq!(top["peak_live_bytes"], N * 1000);
    assert!(top["r2"].as_f64().unwrap() > 0.95, "{top}");
    assert!(top["monotonicity"].as_f64().unwrap() > 0.95, "{top}");
    let slope = top["slope_bytes_per_sec"].as_f64().unwrap();
    // 1,000 bytes per iteration of at least 1 ms: at most 1 MB/s.
    assert!(slope > 1e4 && slope < 1.05e6, "slope {slope}");
    let series = top["series"].as_array().unwrap();
    assert!(
        series.len() >= 64 && series.len() <= 128,
        "{}",
        series.len()
    );
    for name in ["ring_alloc", "churn", "leak_a", "leak_b", "main"] {
        let g = growth
            .iter()
            .find(|g| innermost(&g["stack"]) == name)
            .unwrap_or_else(|| panic!("{name} in growth"));
        assert_eq!(g["suspect"], false, "{name}: {g}");
        assert!(
            g["score"].as_f64().unwrap() < top["score"].as_f64().unwrap() / 10.0,
            "{name}: {g}"
        );
    }
    let ring = growth
        .iter()
        .find(|g| innermost(&g["stack"]) == "ring_alloc")
        .unwrap();
    assert_eq!(ring["peak_live_bytes"], 8 * 512);
    assert_eq!(ring["live_bytes_end"], 8 * 512);

    // The text report shows the suspect with a sparkline.
    let out = run_heaptape(["analyze", trace.to_str().unwrap()]);
    let text = out.stdout_str();
    assert!(text.contains("growing call sites (leak suspects"), "{text}");
    assert!(text.contains("cache_insert"), "{text}");
    assert!(text.contains('█'), "{text}");
}

#[test]
fn call_site_depth_groups_stacks() {
    let (_dir, _exe, trace) = recorded("depth");
    // With one frame, ring_alloc's malloc is one site whatever called it.
    let out = run_heaptape([
        "analyze",
        "--json",
        "--top",
        "50",
        "--call-site-depth",
        "1",
        trace.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    heaptape_analyzer::schema::inline_stacks(&mut v);
    let p = &v["processes"][0];
    assert_eq!(p["call_site_depth"], 1);
    for s in p["sites_live_at_exit"].as_array().unwrap() {
        assert_eq!(s["stack"].as_array().unwrap().len(), 1, "{s}");
    }
}

/// Parses an SVG with python3's XML parser; returns, per frame name, the summed
/// `fg:w` widths of its rectangles' groups and the title texts.
fn svg_frames(svg: &Path) -> Value {
    let script = r#"
import sys, json, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = {'svg': 'http://www.w3.org/2000/svg'}
out = {}
for g in root.iter('{http://www.w3.org/2000/svg}g'):
    t = g.find('svg:title', ns)
    r = g.find('svg:rect', ns)
    if t is None or r is None:
        continue
    w = r.get('{http://github.com/jonhoo/inferno}w')
    name = t.text.split(' (')[0]
    out[name] = out.get(name, 0) + int(w)
print(json.dumps(out))
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(svg));
    assert!(out.status.success(), "SVG does not parse: {}", out.stderr);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn flamegraphs_of_leaked_and_allocated_bytes() {
    let (dir, _exe, trace) = recorded("flame");
    let svg = dir.join("leaked.svg");
    let out = run_heaptape([
        "flamegraph",
        trace.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let text = std::fs::read_to_string(&svg).unwrap();
    // Leaked as LSan means it: leak_a's block (its pointer overwritten) is lost; leak_b's
    // (still in `sink`) and the ring's are in use at exit, not leaked.
    assert!(text.contains("Bytes leaked (definitely and indirectly lost at exit)"));
    let w = svg_frames(&svg);
    assert_eq!(w["leak_a"], 3000, "{w}");
    assert_eq!(w["main"], 3000, "{w}");
    for reachable in ["leak_b", "ring_alloc", "cache_insert"] {
        assert!(w.get(reachable).is_none(), "{reachable}: {w}");
    }
    // Everything in use at exit.
    let in_use = dir.join("in-use.svg");
    let out = run_heaptape([
        "flamegraph",
        "--metric",
        "in-use-at-exit",
        trace.to_str().unwrap(),
        "-o",
        in_use.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let in_use_text = std::fs::read_to_string(&in_use).unwrap();
    assert!(in_use_text.contains("Bytes still allocated at exit (in use), by call stack"));
    let w = svg_frames(&in_use);
    assert_eq!(w["leak_a"], 3000, "{w}");
    assert_eq!(w["leak_b"], 1000, "{w}");
    assert_eq!(w["ring_alloc"], 8 * 512, "{w}");
    assert_eq!(w["main"], 3000 + 1000 + 8 * 512, "{w}");
    assert!(w.get("cache_insert").is_none(), "{w}");

    // `-o -`: the same SVG on standard output, and no file named `-`.
    let out = run(heaptape()
        .args(["flamegraph", trace.to_str().unwrap(), "-o", "-"])
        .current_dir(dir.path()));
    assert!(out.status.success());
    assert_eq!(out.stdout_str(), text);
    assert!(!dir.join("-").exists());

    // Folded stacks, outermost first.
    let out = run_heaptape([
        "flamegraph",
        "--folded",
        "--metric",
        "allocated-bytes",
        trace.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let folded = out.stdout_str();
    let line = folded
        .lines()
        .find(|l| l.contains("cache_insert"))
        .unwrap_or_else(|| panic!("{folded}"));
    assert!(
        line.ends_with(&format!(";main;cache_insert {}", N * 1000)),
        "{line}"
    );
    let temp = run_heaptape([
        "flamegraph",
        "--folded",
        "--metric",
        "temporary",
        trace.to_str().unwrap(),
    ]);
    let temp = temp.stdout_str();
    assert_eq!(temp.lines().count(), 1, "{temp}");
    assert!(
        temp.trim_end().ends_with(&format!(";main;churn {N}")),
        "{temp}"
    );

    // An unreadable trace: a clear message, a non-zero exit, no output file.
    let bad = dir.join("bad.trace");
    std::fs::write(&bad, b"not a trace").unwrap();
    let svg2 = dir.join("bad.svg");
    let out = run_heaptape([
        "flamegraph",
        bad.to_str().unwrap(),
        "-o",
        svg2.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("bad.trace"));
    assert!(!svg2.exists());
}

#[test]
fn diff_reports_the_new_leak_and_fails_on_it() {
    let dir = TestDir::new("diff");
    let v1 = build(&dir, "v1", false);
    let v2 = build(&dir, "v2", true);
    let (t1, t1b, t2) = (
        dir.join("a.trace"),
        dir.join("b.trace"),
        dir.join("c.trace"),
    );
    record(&dir, &v1, &t1);
    record(&dir, &v1, &t1b);
    record(&dir, &v2, &t2);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let svg = dir.join("diff.svg");
    let out = run_heaptape([
        "diff",
        "--json",
        &s(&t1),
        &s(&t2),
        "--flamegraph",
        &s(&svg),
        "--fail-if",
        "leaked_bytes>+512",
        "--fail-if",
        "leaked_bytes>+1KiB",
        "--fail-if",
        "allocations>+5",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = &out.stderr;
    assert!(stderr.contains("leaked_bytes>+512"), "{stderr}");
    assert!(!stderr.contains("leaked_bytes>+1KiB"), "{stderr}");
    assert!(!stderr.contains("allocations>+5"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // v2 keeps leak_c's block in `sink` (in use at exit) and so loses leak_b's (leaked).
    assert_eq!(v["totals"]["delta"]["in_use_at_exit_bytes"], 2048);
    assert_eq!(v["totals"]["delta"]["leaked_bytes"], 1000);
    assert_eq!(v["totals"]["old"]["leaked_bytes"], 3000, "{v}");
    assert_eq!(v["totals"]["delta"]["allocations"], 1);
    assert_eq!(v["totals"]["delta"]["allocated_bytes"], 2048);
    assert_eq!(v["new_sites"], 1);
    assert_eq!(v["vanished_sites"], 0);
    assert_eq!(v["changed_sites"], 1, "{v}");
    let sites = v["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 2, "{v}");
    let site = |f: &str| {
        sites
            .iter()
            .find(|s| innermost(&s["stack"]) == f)
            .unwrap_or_else(|| panic!("no site {f}: {v}"))
    };
    assert_eq!(site("leak_c")["status"], "new");
    assert_eq!(site("leak_c")["delta"]["in_use_at_exit_bytes"], 2048);
    assert_eq!(site("leak_c")["delta"]["leaked_bytes"], 0);
    assert_eq!(site("leak_b")["status"], "changed");
    assert_eq!(site("leak_b")["delta"]["leaked_bytes"], 1000);
    assert_eq!(site("leak_b")["delta"]["in_use_at_exit_bytes"], 0);
    svg_frames(&svg);

    // `--flamegraph -` would share standard output with the report: refused in one
    // line, before any trace is read, and no file named `-`.
    let out = run(heaptape()
        .args(["diff", &s(&t1), &s(&t2), "--flamegraph", "-"])
        .current_dir(dir.path()));
    assert_eq!(out.status.code(), Some(2));
    let stderr = &out.stderr;
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("give a file name"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(!dir.join("-").exists());

    // Two runs of one build: nothing changed, conditions hold.
    let out = run_heaptape([
        "diff",
        &s(&t1),
        &s(&t1b),
        "--fail-if",
        "leaked_bytes>+0",
        "--fail-if",
        "peak_bytes>+0",
    ]);
    let text = out.stdout_str();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("call sites: 0 new, 0 vanished, 0 changed"),
        "{text}"
    );
}

/// Reports and listings go to standard output through a buffer; writing them to a full
/// disk must still fail with one clear line and a non-zero exit, never a silent
/// success with a cut-off report (`dump` used to stop quietly with status 0).
#[test]
fn reports_to_a_full_disk_fail_with_one_line() {
    let (dir, _exe, trace) = recorded("fulldisk");
    let t = trace.to_str().unwrap();
    let other = dir.join("again.trace");
    std::fs::copy(&trace, &other).unwrap();
    let o = other.to_str().unwrap();
    let cases: [&[&str]; 7] = [
        &["analyze", t],
        &["analyze", "--json", t],
        &["dump", t],
        &["dump", "--json", t],
        &["flamegraph", "--folded", t],
        &["diff", t, o],
        &["diff", "--json", t, o],
    ];
    for args in cases {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full opens");
        let out = run_with_stdout(heaptape().args(args), Stdio::from(full));
        let stderr = &out.stderr;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with("heaptape: cannot write")
                && lines[0].contains("No space left on device"),
            "{args:?}: {stderr}"
        );
    }
    // The same listings into a pipe are whole: the buffer is flushed at the end.
    let out = run_heaptape(["dump", t]);
    assert!(out.status.success());
    let text = out.stdout_str();
    assert!(text.starts_with("Header {"), "{text}");
    assert!(text.trim_end().ends_with('}'), "{text}");
    assert!(text.lines().last().unwrap().starts_with("End {"), "{text}");
}

/// `dump --json`: one object per record, in the order of the debug listing, its kind
/// under `"record"`, addresses and build-ids as hex strings.
#[test]
fn dump_json_lines_name_each_record_with_hex_addresses() {
    let (_dir, _exe, trace) = recorded("dumpjson");
    let t = trace.to_str().unwrap();
    let debug = run_heaptape(["dump", t]);
    let json = run_heaptape(["dump", "--json", t]);
    assert!(json.status.success(), "{}", json.stderr);
    let debug_kinds: Vec<String> = debug
        .stdout_str()
        .lines()
        .map(|l| {
            l.split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let records: Vec<Value> = json
        .stdout_str()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<String> = records
        .iter()
        .map(|r| r["record"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, debug_kinds);
    assert_eq!(kinds.first().map(String::as_str), Some("Header"));
    assert_eq!(kinds.last().map(String::as_str), Some("End"));
    let allocs: Vec<&Value> = records.iter().filter(|r| r["record"] == "Alloc").collect();
    assert!(allocs.len() > 400, "{} allocations", allocs.len());
    for a in allocs {
        let address = a["address"].as_str().unwrap_or_else(|| panic!("{a}"));
        assert!(address.starts_with("0x"), "{a}");
        assert!(u64::from_str_radix(&address[2..], 16).unwrap() > 0, "{a}");
        assert!(a["size"].is_u64() && a["stack"].is_u64(), "{a}");
    }
    let module = records
        .iter()
        .find(|r| r["record"] == "ModuleLoad")
        .unwrap();
    assert!(
        module["base"].as_str().unwrap().starts_with("0x"),
        "{module}"
    );
    let build_id = module["build_id"].as_str().unwrap();
    assert!(
        build_id.len() >= 16 && build_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{module}"
    );
}

/// Three threads churning through a shared pool of blocks under a lock: each frees
/// blocks the others allocated, reallocs some, makes temporaries, and leaks a few;
/// about 60,000 allocator calls, so the replay runs them in several runs.
const THREADS_C: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define POOL 4096
static void *pool[POOL];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
void *volatile sink;

__attribute__((noinline)) static void *grab(unsigned size) { return malloc(size); }
__attribute__((noinline)) static void *grow(void *p, unsigned size) { return realloc(p, size); }
__attribute__((noinline)) static void drop(void *p) { free(p); }

static void *worker(void *arg) {
    unsigned x = (unsigned)(unsigned long)arg * 2654435761u + 1;
    for (int i = 0; i < 5000; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        unsigned slot = x % POOL;
        pthread_mutex_lock(&lock);
        drop(pool[slot]);
        pool[slot] = grab(16 + x % 700);
        if (x % 5 == 0) pool[slot] = grow(pool[slot], 32 + x % 3000);
        pthread_mutex_unlock(&lock);
        char *t = grab(64);
        memset(t, 1, 64);
        drop(t);
        if (x % 997 == 0) sink = grab(100);
    }
    return 0;
}

int main(void) {
    pthread_t t[3];
    for (long i = 0; i < 3; i++) pthread_create(&t[i], 0, worker, (void *)(i + 1));
    for (int i = 0; i < 3; i++) pthread_join(t[i], 0);
    for (int i = 0; i < POOL; i += 2) drop(pool[i]);
    return 0;
}
"#;

/// The report is the same whatever the number of threads analyzing: one (the
/// replaying thread accounts for every run), two and four (runs summarized on the pool
/// and merged, one and three address shards).
#[test]
fn reports_do_not_depend_on_the_threads_analyzing() {
    let dir = TestDir::new("threads");
    let exe = dir.compile_source(
        "threads.c",
        THREADS_C,
        "threads",
        &["cc", "-O1", "-g", "-pthread"],
    );
    let trace = dir.join("threads.trace");
    record(&dir, &exe, &trace);
    let report = |threads: &str, json: bool| {
        let mut args = vec!["analyze", "--top", "100"];
        if json {
            args.push("--json");
        }
        args.push(trace.to_str().unwrap());
        let out = run(heaptape().args(&args).env("RAYON_NUM_THREADS", threads));
        assert!(out.status.success(), "{}", out.stderr);
        out.stdout
    };
    let one = report("1", true);
    let v: Value = serde_json::from_slice(&one).unwrap();
    let totals = &v["processes"][0]["totals"];
    // 3 threads x 5,000 iterations: a malloc and a free of the pool slot (the first
    // frees of empty slots are free(NULL)), a temporary malloc and free, a realloc
    // every fifth iteration or so.
    let allocations = totals["allocations"].as_u64().unwrap();
    assert!(allocations > 30_000, "{totals}");
    assert!(
        totals["temporary_allocations"].as_u64().unwrap() >= 15_000,
        "{totals}"
    );
    for threads in ["2", "4"] {
        assert!(
            one == report(threads, true),
            "JSON with {threads} threads differs"
        );
    }
    let text = report("1", false);
    for threads in ["2", "4"] {
        assert!(
            text == report(threads, false),
            "text with {threads} threads differs"
        );
    }
}

#[test]
fn a_text_report_prints_each_stack_once_and_refers_to_it_by_id() {
    let (_dir, _exe, trace) = recorded("stack-ids");
    let text = analyze_text(&trace);
    let is_frame = |t: &str| t.starts_with("at 0x") || t.starts_with("by 0x");
    // The stacks printed with an id, by id, and the references to them.
    let mut full: Vec<Vec<String>> = Vec::new();
    let mut in_full = false;
    let mut references = Vec::new();
    for l in text.lines() {
        let t = l.trim_start();
        if let Some(i) = t.rfind("  [S") {
            assert!(t.starts_with("at 0x"), "an id on a stack's first line: {l}");
            let id: usize = t[i + 4..t.len() - 1].parse().expect("[S<number>]");
            assert_eq!(id, full.len() + 1, "ids in order of first print: {l}");
            full.push(vec![t[..i].to_string()]);
            in_full = true;
        } else if in_full && t.starts_with("by 0x") {
            full.last_mut().unwrap().push(t.to_string());
        } else {
            in_full = false;
        }
        if let Some(rest) = t.strip_prefix("stack S") {
            let (id, frame) = rest.split_once(", printed above: ").expect(l);
            let id: usize = id.parse().unwrap();
            assert!(id <= full.len(), "S{id} referred to before it was printed");
            references.push((id, frame.trim_end_matches(" ...").to_string()));
        }
    }
    // `leak_a`'s block is definitely lost, at the peak and in use at exit: its stack
    // is printed in full under the leak, and by id in the two call-site lists.
    let full_leak_a = text
        .lines()
        .map(str::trim_start)
        .filter(|t| is_frame(t) && t.contains(": leak_a (growth.c:"))
        .count();
    assert_eq!(
        full_leak_a, 1,
        "leak_a's stack printed in full once:\n{text}"
    );
    let leak_a_refs = references
        .iter()
        .filter(|(_, f)| f.starts_with("leak_a (growth.c:"))
        .count();
    assert_eq!(leak_a_refs, 2, "{references:?}\n{text}");
    // Each reference names a frame of the stack it refers to; the growing cache's
    // stack is printed at the peak and referred to under growth.
    for (id, frame) in &references {
        assert!(
            full[id - 1]
                .iter()
                .any(|l| l.ends_with(&format!(": {frame}"))),
            "S{id} is {:?}, not {frame}",
            full[id - 1]
        );
    }
    assert!(
        references
            .iter()
            .any(|(_, f)| f.starts_with("cache_insert (growth.c:")),
        "{text}"
    );
    // `--show-below-main` shows the frames under main; repeated stacks stay one line.
    let below = run_heaptape(["analyze", "--show-below-main", trace.to_str().unwrap()]);
    let below = below.stdout_str();
    assert!(below.contains("__libc_start"), "{below}");
    assert_eq!(
        below.lines().filter(|l| l.contains("stack S")).count(),
        references.len()
    );
}
