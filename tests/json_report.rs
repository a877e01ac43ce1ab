//! The shape of the JSON documents, on a fixture that fills every list: each kind of
//! object (`heaptape analyze --json`, `heaptape diff --json`, the HTML page's data)
//! has exactly the keys listed here, so a change cannot drop or rename one silently,
//! and every object's keys come in byte order (as the documents always had them).
//! The values are the other tests' business.

mod common;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use common::*;
use heaptape_analyzer::html::RANKED;
use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A descriptor and a mapping left open, a forked child, 60 small leaks from 60
/// distinct stacks (more than the HTML page keeps), a 64 KiB leak every 3 ms (growth,
/// and the timeline's leak verdict naming the site), a double free glibc does not catch
/// (see `tests/fixtures/leaks/leak_double_free.c`); with an argument, then the same
/// again after exec'ing itself (a previous image).
const EVERY_C: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *last;

__attribute__((noinline)) void leak_step(int i) {
    char *p = malloc(65536);
    memset(p, i, 65536);
    last = p;
}

__attribute__((noinline)) void lose(int depth) {
    if (depth > 0) {
        lose(depth - 1);
        return;
    }
    char *volatile p = malloc(32);
    p[0] = 1;
}

__attribute__((noinline)) void double_free(void) {
    void *fill[7];
    for (int i = 0; i < 7; i++) fill[i] = malloc(24);
    void *a = malloc(24), *b = malloc(24);
    for (int i = 0; i < 7; i++) free(fill[i]);
    free(a);
    free(b);
    free(a);
}

int main(int argc, char **argv) {
    int fd = open("/dev/null", O_RDONLY);
    char *m = mmap(0, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 1, 1 << 16);
    pid_t child = fork();
    if (child == 0) _exit(0);
    waitpid(child, 0, 0);
    for (int d = 0; d < 60; d++) lose(d);
    struct timespec pause = {0, 3 * 1000 * 1000};
    for (int i = 0; i < 100; i++) {
        leak_step(i);
        free(malloc(100));
        nanosleep(&pause, 0);
    }
    double_free();
    if (argc > 1) execl(argv[0], argv[0], (char *)0);
    return fd < 0;
}
"#;

const REPORT: &[&str] = &[
    "frames",
    "processes",
    "schema_version",
    "stacks",
    "trace",
    "warnings",
];
const TRACE: &[&str] = &[
    "command",
    "complete",
    "duration_ns",
    "host",
    "kernel",
    "page_size",
    "pid",
    "records",
    "stack_nodes",
    "start_time_unix_ns",
    "tool_version",
    "truncation",
];
const TRUNCATION: &[&str] = &["offset", "reason"];
const IMAGE: &[&str] = &[
    "call_site_depth",
    "command",
    "end_ns",
    "ended_by",
    "fd_leaks",
    "growth",
    "growth_bucket_ns",
    "invalid_frees",
    "leaks",
    "leaks_unavailable",
    "loss_records",
    "lost_between",
    "mmap_leaks",
    "modules",
    "retention",
    "sites_at_peak",
    "sites_live_at_exit",
    "snapshots",
    "start_ns",
    "timeline",
    "timeline_verdict",
    "totals",
];
/// A process's keys besides those of the image it ended with.
const PROCESS_OWN: &[&str] = &["exit", "origin", "parent_pid", "pid", "previous_images"];
const TOTALS: &[&str] = &[
    "allocated_bytes",
    "allocation_rate_per_sec",
    "allocations",
    "allocator_internal_frees",
    "failed_allocations",
    "frees",
    "inherited_blocks",
    "inherited_bytes",
    "live_at_exit_blocks",
    "live_at_exit_bytes",
    "peak_live_blocks",
    "peak_live_bytes",
    "peak_live_ns",
    "temporary_allocations",
    "untracked_frees",
];
const LEAKS: &[&str] = &[
    "definitely_lost",
    "heuristics",
    "indirectly_lost",
    "possibly_lost",
    "reachable_via_heuristic",
    "snapshot",
    "still_reachable",
    "suppressed",
];
const COUNT: &[&str] = &["blocks", "bytes"];
const HEURISTICS: &[&str] = &["length64", "multipleinheritance", "newarray", "stdstring"];
const SNAPSHOT: &[&str] = &[
    "block_pointers",
    "blocks",
    "root_pointers",
    "stray_pointers",
    "unknown_source_pointers",
];
const LOSS_RECORD: &[&str] = &[
    "allocator",
    "blocks",
    "bytes",
    "indirect_bytes",
    "kind",
    "number",
    "of",
    "stack",
    "stack_id",
];
const INVALID_FREE: &[&str] = &[
    "address",
    "alloc_function",
    "alloc_stack",
    "alloc_stack_id",
    "block",
    "count",
    "description",
    "free_stack",
    "free_stack_id",
    "function",
    "kind",
    "size",
    "stack",
    "stack_id",
    "tid",
    "ts_ns",
];
const BAD_FREE_BLOCK: &[&str] = &["address", "offset", "size"];
const FRAME: &[&str] = &[
    "address", "file", "function", "inlined", "line", "module", "offset",
];
const MODULE: &[&str] = &["base", "build_id", "loaded_ns", "path", "unloaded_ns"];
const SITE_AT_PEAK: &[&str] = &["peak_blocks", "peak_bytes", "stack", "stack_id", "stacks"];
const GROWTH: &[&str] = &[
    "live_bytes_end",
    "live_bytes_start",
    "monotonicity",
    "peak_live_bytes",
    "r2",
    "score",
    "series",
    "slope_bytes_per_sec",
    "stack",
    "stack_id",
    "stacks",
    "suspect",
    "teardown_excluded",
    "window_buckets",
];
const SITE_LIVE_AT_EXIT: &[&str] = &[
    "allocated_bytes",
    "allocations",
    "frees",
    "inherited_blocks",
    "inherited_bytes",
    "live_at_exit_blocks",
    "live_at_exit_bytes",
    "peak_blocks",
    "peak_bytes",
    "stack",
    "stack_id",
    "stacks",
    "temporary_allocations",
];
const FD_LEAK: &[&str] = &[
    "duplicate_of",
    "fd",
    "kind",
    "opened_ns",
    "path",
    "stack",
    "stack_id",
    "tid",
];
const MMAP_LEAK: &[&str] = &[
    "address",
    "bytes",
    "fd",
    "flags",
    "mapped_ns",
    "prot",
    "stack",
    "stack_id",
];
const TIMELINE_POINT: &[&str] = &["live_heap_bytes", "mapped_bytes", "rss", "rss_anon", "t_ns"];
const VERDICT: &[&str] = &[
    "explanation",
    "heap_growth_bytes",
    "kind",
    "rss_anon_growth_bytes",
    "rss_samples",
    "sites",
];
const VERDICT_SITE: &[&str] = &["blocks", "bytes", "stack", "stack_id"];
const DIFF: &[&str] = &[
    "call_site_depth",
    "changed_sites",
    "failed_conditions",
    "new_sites",
    "sites",
    "totals",
    "unchanged_sites",
    "vanished_sites",
];
const DIFF_TOTALS: &[&str] = &["delta", "new", "old"];
const DIFF_SITE: &[&str] = &["delta", "key", "new", "old", "stack", "status"];
const FIGURES: &[&str] = &[
    "allocated_bytes",
    "allocations",
    "in_use_at_exit_bytes",
    "leaked_bytes",
    "peak_bytes",
];

/// Compiles the fixture and records it (`again`: with the argument that makes it exec
/// itself), sampling RSS every 5 ms.
fn recorded(dir: &TestDir, name: &str, again: bool) -> PathBuf {
    let exe = dir.compile_c("every", EVERY_C);
    let trace = dir.join(format!("{name}.trace"));
    let args: &[&str] = if again { &["again"] } else { &[] };
    record_ok(dir, &trace, &["--rss-interval", "5"], &exe, args);
    trace
}

/// `v`'s keys are exactly `expected`.
fn assert_keys(v: &Value, expected: &[&str], what: &str) {
    let keys: BTreeSet<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(keys, expected, "the keys of {what}");
}

/// The first element of list `key` of `v`, which must not be empty (else the fixture
/// no longer fills it and its keys go unchecked).
fn first<'a>(v: &'a Value, key: &str) -> &'a Value {
    v[key]
        .as_array()
        .and_then(|l| l.first())
        .unwrap_or_else(|| panic!("{key} is empty or missing: {v}"))
}

/// The keys of the first frame of stack `key` of `v`.
fn assert_stack(v: &Value, key: &str, what: &str) {
    assert_keys(first(v, key), FRAME, &format!("a frame of {what}.{key}"));
}

/// Every kind of object of an image (the keys of the image itself are the caller's).
fn assert_image_parts(img: &Value, what: &str) {
    assert_keys(&img["totals"], TOTALS, &format!("{what}.totals"));
    assert_keys(
        first(img, "modules"),
        MODULE,
        &format!("a module of {what}"),
    );
    let s = first(img, "sites_at_peak");
    assert_keys(s, SITE_AT_PEAK, "a site at the peak");
    assert_stack(s, "stack", "a site at the peak");
    let s = first(img, "growth");
    assert_keys(s, GROWTH, "a growth site");
    assert_stack(s, "stack", "a growth site");
    let s = first(img, "sites_live_at_exit");
    assert_keys(s, SITE_LIVE_AT_EXIT, "a site live at exit");
    assert_stack(s, "stack", "a site live at exit");
    let f = first(img, "invalid_frees");
    assert_keys(f, INVALID_FREE, "an invalid free");
    assert_keys(&f["block"], BAD_FREE_BLOCK, "an invalid free's block");
    for stack in ["stack", "alloc_stack", "free_stack"] {
        assert_stack(f, stack, "an invalid free");
    }
    let f = first(img, "fd_leaks");
    assert_keys(f, FD_LEAK, "a descriptor left open");
    assert_stack(f, "stack", "a descriptor left open");
    let m = first(img, "mmap_leaks");
    assert_keys(m, MMAP_LEAK, "a mapping left");
    assert_stack(m, "stack", "a mapping left");
    assert_keys(first(img, "timeline"), TIMELINE_POINT, "a timeline point");
    let v = &img["timeline_verdict"];
    assert_keys(v, VERDICT, "the timeline verdict");
    let s = first(v, "sites");
    assert_keys(s, VERDICT_SITE, "a verdict site");
    assert_stack(s, "stack", "a verdict site");
}

/// The keys of a process that ended with an image holding everything.
fn process_keys(modules: bool) -> Vec<&'static str> {
    IMAGE
        .iter()
        .chain(PROCESS_OWN)
        .copied()
        .filter(|&k| modules || k != "modules")
        .collect()
}

/// Parses `text` as JSON, failing with the path to the first object whose keys are not
/// in strictly increasing byte order.
fn assert_keys_in_order(text: &[u8], what: &str) {
    let mut de = serde_json::Deserializer::from_slice(text);
    if let Err(e) = InOrder::deserialize(&mut de) {
        panic!("{what}: {e}");
    }
}

/// A JSON value whose objects' keys were in order (see [`assert_keys_in_order`]).
struct InOrder;

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InOrder, D::Error> {
        d.deserialize_any(InOrder)
    }
}

impl<'de> Visitor<'de> for InOrder {
    type Value = InOrder;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: Error>(self, _: bool) -> Result<InOrder, E> {
        Ok(InOrder)
    }

    fn visit_i64<E: Error>(self, _: i64) -> Result<InOrder, E> {
        Ok(InOrder)
    }

    fn visit_u64<E: Error>(self, _: u64) -> Result<InOrder, E> {
        Ok(InOrder)
    }

    fn visit_f64<E: Error>(self, _: f64) -> Result<InOrder, E> {
        Ok(InOrder)
    }

    fn visit_str<E: Error>(self, _: &str) -> Result<InOrder, E> {
        Ok(InOrder)
    }

    fn visit_unit<E: Error>(self) -> Result<InOrder, E> {
        Ok(InOrder)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InOrder, A::Error> {
        while seq.next_element::<InOrder>()?.is_some() {}
        Ok(InOrder)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InOrder, A::Error> {
        let mut previous: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            if let Some(p) = &previous {
                if *p >= key {
                    return Err(A::Error::custom(format!("key {key:?} after {p:?}")));
                }
            }
            map.next_value::<InOrder>()
                .map_err(|e| A::Error::custom(format!("in {key:?}: {e}")))?;
            previous = Some(key);
        }
        Ok(InOrder)
    }
}

/// `heaptape analyze --json`, parsed after its key order was checked.
fn analyze_checked(trace: &Path) -> Value {
    let (run, json) = analyze_raw(trace);
    assert!(run.status.success(), "{}", run.stderr);
    assert_keys_in_order(&run.stdout, "analyze --json");
    json
}

#[test]
fn analyze_json_has_every_key_in_order() {
    let dir = TestDir::new("json-keys");
    let trace = recorded(&dir, "every", true);
    let v = analyze_checked(&trace);
    assert_keys(&v, REPORT, "the report");
    assert_keys(&v["trace"], TRACE, "trace");
    assert!(v["trace"]["truncation"].is_null());
    let p = traced_process(&v);
    assert_keys(p, &process_keys(true), "the traced process");
    assert_keys(&p["exit"], &["code"], "exit");
    assert_image_parts(p, "the traced process");
    let leaks = &p["leaks"];
    assert_keys(leaks, LEAKS, "leaks");
    for class in [
        "definitely_lost",
        "indirectly_lost",
        "possibly_lost",
        "still_reachable",
        "suppressed",
    ] {
        assert_keys(&leaks[class], COUNT, class);
    }
    assert_keys(&leaks["snapshot"], SNAPSHOT, "leaks.snapshot");
    let by_heuristic = &leaks["reachable_via_heuristic"];
    assert_keys(by_heuristic, HEURISTICS, "reachable_via_heuristic");
    assert_keys(&by_heuristic["stdstring"], COUNT, "a heuristic's count");
    let lr = first(p, "loss_records");
    assert_keys(lr, LOSS_RECORD, "a loss record");
    assert_stack(lr, "stack", "a loss record");
    // The image it exec'd away from: the same keys as the last one, but the process's.
    let prev = first(p, "previous_images");
    assert_keys(prev, IMAGE, "a previous image");
    assert_image_parts(prev, "a previous image");
    // The forked children: the same keys, empty lists and all.
    let children: Vec<&Value> = processes(&v)
        .iter()
        .filter(|c| !c["parent_pid"].is_null())
        .collect();
    assert!(!children.is_empty(), "no child in {v}");
    for c in children {
        assert_keys(c, &process_keys(true), "a child process");
    }

    // A truncated trace says where it ends.
    let bytes = std::fs::read(&trace).expect("the trace");
    let cut = dir.join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write the cut trace");
    let v = analyze_checked(&cut);
    assert_keys(&v, REPORT, "the report of a cut trace");
    assert_keys(&v["trace"]["truncation"], TRUNCATION, "trace.truncation");
}

#[test]
fn diff_json_has_every_key_in_order() {
    let dir = TestDir::new("json-diff-keys");
    let once = recorded(&dir, "once", false);
    let again = recorded(&dir, "again", true);
    let run = run_heaptape([
        "diff".as_ref(),
        "--json".as_ref(),
        once.as_os_str(),
        again.as_os_str(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_keys_in_order(&run.stdout, "diff --json");
    let v: Value = serde_json::from_slice(&run.stdout).expect("JSON");
    assert_keys(&v, DIFF, "the diff");
    let t = &v["totals"];
    assert_keys(t, DIFF_TOTALS, "the diff's totals");
    for side in ["delta", "new", "old"] {
        assert_keys(&t[side], FIGURES, side);
    }
    // The exec'd image doubles the leaks of every site (new and old both present).
    let s = v["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| s["status"] == "changed")
        .unwrap_or_else(|| panic!("no changed site: {v}"));
    assert_keys(s, DIFF_SITE, "a diff site");
    for side in ["delta", "new", "old"] {
        assert_keys(&s[side], FIGURES, side);
    }
    assert_stack(s, "stack", "a diff site");
}

/// The data of an HTML page: the JSON between its data element's tags.
fn page_data(page: &Path) -> Vec<u8> {
    let html = std::fs::read_to_string(page).expect("the page");
    let open = r#"<script type="application/json" id="data">"#;
    let start = html.find(open).expect("the data element") + open.len();
    let len = html[start..].find("</script>").expect("its end");
    html.as_bytes()[start..start + len].to_vec()
}

#[test]
fn html_page_data_is_the_report_cut_to_what_it_shows() {
    let dir = TestDir::new("json-page");
    let trace = recorded(&dir, "every", true);
    let report = analyze_checked(&trace);
    let page = dir.join("page.html");
    let run = run_heaptape([
        "report".as_ref(),
        "-o".as_ref(),
        page.as_os_str(),
        trace.as_os_str(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    let data = page_data(&page);
    assert_keys_in_order(&data, "the page's data");
    let mut v: Value = serde_json::from_slice(&data).expect("JSON");
    assert_keys(&v, REPORT, "the page's data");
    heaptape_analyzer::schema::inline_stacks(&mut v);
    assert_eq!(v["trace"], report["trace"]);
    let (p, full) = (traced_process(&v), traced_process(&report));
    // The processes' modules are left out; their previous images are whole.
    assert_keys(p, &process_keys(false), "a process on the page");
    assert_eq!(p["previous_images"], full["previous_images"]);
    // Loss records worst first (definitely, indirectly, possibly lost, then still
    // reachable; larger first), at most RANKED, still numbered "of" all of them.
    let all = full["loss_records"].as_array().expect("loss records");
    assert!(all.len() > RANKED, "{} loss records", all.len());
    let severity = |r: &Value| {
        ["definitely_lost", "indirectly_lost", "possibly_lost"]
            .iter()
            .position(|k| r["kind"] == *k)
            .unwrap_or(3)
    };
    let mut worst: Vec<Value> = all.clone();
    worst.sort_by_key(|r| (severity(r), std::cmp::Reverse(r["bytes"].as_u64())));
    worst.truncate(RANKED);
    assert_eq!(p["loss_records"], Value::Array(worst));
    // The other lists hold fewer than RANKED here: the page shows them whole.
    for list in [
        "sites_live_at_exit",
        "sites_at_peak",
        "growth",
        "invalid_frees",
        "fd_leaks",
        "mmap_leaks",
        "timeline",
    ] {
        assert_eq!(p[list], full[list], "{list}");
    }
}

/// Every value of `old` is in `new` at the same place (`new` may hold more keys);
/// `path` names the place in failures.
fn assert_holds(new: &Value, old: &Value, path: &str) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, v) in o {
                let there = n
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} is gone (it was {v})"));
                assert_holds(there, v, &format!("{path}.{k}"));
            }
        }
        (Value::Array(o), Value::Array(n)) => {
            assert_eq!(n.len(), o.len(), "the length of {path}");
            for (i, (n, o)) in n.iter().zip(o).enumerate() {
                assert_holds(n, o, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(new, old, "{path}"),
    }
}

/// A schema 1 document's sites live at exit in schema 2's words: `frames` became
/// `stack`, and the trie id `stack` became `stack_id`.
fn schema1_to_2(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::Array(sites)) = obj.get_mut("sites_live_at_exit") {
                for s in sites.iter_mut().filter_map(Value::as_object_mut) {
                    let id = s.remove("stack");
                    let frames = s.remove("frames");
                    s.extend(id.map(|id| ("stack_id".to_string(), id)));
                    s.extend(frames.map(|f| ("stack".to_string(), f)));
                }
            }
            obj.values_mut().for_each(schema1_to_2);
        }
        Value::Array(items) => items.iter_mut().for_each(schema1_to_2),
        _ => {}
    }
}

/// The compact document with shared stacks holds every figure of the document as
/// heaptape wrote it before (schema 1, every stack inline), on a trace of the
/// every-list fixture kept in tests/data with its schema 1 report (`--no-symbols`, so
/// the frames are the trace's own): put back inline, the new document has each of the
/// old one's values at the same place.
#[test]
fn shared_stacks_keep_every_figure_of_the_inline_document() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let old = zstd::decode_all(
        std::fs::read(data.join("every.schema1.json.zst"))
            .expect("the schema 1 report")
            .as_slice(),
    )
    .expect("zstd");
    let mut old: Value = serde_json::from_slice(&old).expect("JSON");
    schema1_to_2(&mut old);
    let run = run_heaptape([
        "analyze".as_ref(),
        "--json".as_ref(),
        "--no-symbols".as_ref(),
        data.join("every.trace").as_os_str(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    // Compact: one line.
    assert_eq!(run.stdout.iter().filter(|&&b| b == b'\n').count(), 1);
    let mut new: Value = serde_json::from_slice(&run.stdout).expect("JSON");
    assert_eq!(new["schema_version"], 2);
    let shared = new["stacks"].as_array().expect("stacks").len();
    assert!(shared > 60, "{shared} shared stacks");
    heaptape_analyzer::schema::inline_stacks(&mut new);
    assert_holds(&new, &old, "report");

    // --top cuts every ranked list.
    let (run, top) = analyze_raw_with(&data.join("every.trace"), &["--no-symbols", "--top", "3"]);
    assert!(run.status.success(), "{}", run.stderr);
    let p = traced_process(&top);
    for list in [
        "loss_records",
        "sites_at_peak",
        "sites_live_at_exit",
        "growth",
    ] {
        assert_eq!(p[list].as_array().map(Vec::len), Some(3), "{list}");
    }
}
