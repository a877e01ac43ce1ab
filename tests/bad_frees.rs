//! Bad frees as memcheck reports them: `tests/fixtures/bad_frees.cc` makes one bad free
//! per run (chosen by its argument), natively, under `heaptape record` and under
//! valgrind memcheck. For each, heaptape must name what memcheck names: the kind of
//! error, the block the address fell in (its size, and how far inside it the address
//! was; its start must be an allocation of the trace), live ("alloc'd") or freed
//! ("free'd"), and the innermost program function of each stack (the bad free's, the
//! block's earlier free, the block's allocation). The text report says it in memcheck's
//! words, right after the leak summary.
//!
//! glibc aborts on some of these frees (an interior pointer whose chunk would be
//! misaligned, a global, a local): the program then dies of SIGABRT natively and under
//! heaptape alike (the free is recorded before it runs), while memcheck, which replaces
//! free, lets it go on.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::*;
use serde_json::Value;

const SRC: &str = "bad_frees.cc";

/// The fixture, compiled once for all the tests of this file (into cargo's scratch
/// directory for integration tests, built under a name of its own and renamed, so that
/// a concurrent run never sees half a file).
fn program() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&dir).expect("fixture directory");
        let out = dir.join("bad_frees");
        let tmp = dir.join(format!("bad_frees.{}", std::process::id()));
        build(&["g++", "-O0", "-g", "-w"], &fixture_src(SRC), &tmp, &[]);
        std::fs::rename(&tmp, &out).expect("rename the fixture");
        out
    })
    .clone()
}

/// The innermost frame of a stack that is the fixture's, as a function name without
/// its parameters (`free_inside(char*)` → `free_inside`).
fn base_name(function: &str) -> String {
    function
        .split('(')
        .next()
        .unwrap_or(function)
        .trim()
        .to_string()
}

/// heaptape: the innermost fixture function of a JSON stack.
fn ht_fixture_fn(stack: &Value) -> Option<String> {
    stack.as_array()?.iter().find_map(|f| {
        let file = f["file"].as_str()?;
        file.ends_with(SRC)
            .then(|| base_name(f["function"].as_str().unwrap_or("?")))
    })
}

/// One error as memcheck printed it.
#[derive(Debug, Default)]
struct McError {
    heading: String,
    /// Innermost fixture function of the bad free's stack.
    free_fn: Option<String>,
    /// The "Address 0x… is …" sentence, from " is" on.
    address: String,
    /// Innermost fixture function of the stack after the address sentence: the block's
    /// allocation (alloc'd) or its earlier free (free'd).
    second_fn: Option<String>,
    /// After "Block was alloc'd at": the allocation's.
    alloc_fn: Option<String>,
}

/// The only error of a memcheck log.
fn memcheck_error(log: &str) -> McError {
    let bodies: Vec<&str> = log.lines().map(memcheck_body).collect();
    let is_frame = |b: &str| {
        let t = b.trim_start();
        t.starts_with("at 0x") || t.starts_with("by 0x")
    };
    let fixture_fn = |frames: &[&str]| {
        frames.iter().find_map(|f| {
            let (_, rest) = f.split_once(": ")?;
            let i = rest.find(&format!(" ({SRC}:"))?;
            Some(base_name(&rest[..i]))
        })
    };
    let starts: Vec<usize> = (0..bodies.len())
        .filter(|&i| {
            bodies[i].starts_with("Invalid free()") || bodies[i].starts_with("Mismatched free()")
        })
        .collect();
    assert_eq!(starts.len(), 1, "one error in the memcheck log:\n{log}");
    let mut i = starts[0];
    let mut e = McError {
        heading: bodies[i].trim().to_string(),
        ..McError::default()
    };
    let stack = |i: &mut usize| -> Vec<&str> {
        let from = *i;
        while *i < bodies.len() && is_frame(bodies[*i]) {
            *i += 1;
        }
        bodies[from..*i].to_vec()
    };
    i += 1;
    e.free_fn = fixture_fn(&stack(&mut i));
    let address = bodies[i].trim();
    assert!(address.starts_with("Address 0x"), "{address:?} in\n{log}");
    e.address = address[address.find(" is").expect("is")..].to_string();
    i += 1;
    e.second_fn = fixture_fn(&stack(&mut i));
    if bodies
        .get(i)
        .is_some_and(|b| b.trim() == "Block was alloc'd at")
    {
        i += 1;
        e.alloc_fn = fixture_fn(&stack(&mut i));
    }
    e
}

/// One case, run three ways.
struct Case {
    /// Exit status natively (the shell's way: 134 for SIGABRT).
    native: i32,
    memcheck: McError,
    /// heaptape's only bad free (JSON) and its process.
    finding: Value,
    process: Value,
    /// The text report.
    text: String,
    /// The bad free as `analyze --no-symbols --json` reports it.
    unsymbolized: Value,
    /// The trace's allocations: (address, size).
    allocations: Vec<(u64, u64)>,
}

fn run_case(arg: &str) -> Case {
    let prog = program();
    let dir = TestDir::new(&format!("bad_free_{arg}"));
    let native = run_native(&dir, &prog, &[arg]).shell_code();
    let trace = dir.join("t.trace");
    let recorded = record(&dir, &trace, &[], &prog, &[arg]);
    assert_eq!(recorded.shell_code(), native, "{}", recorded.stderr);
    let json = analyze(&trace);
    let process = root_process(&json).clone();
    let frees = process["invalid_frees"].as_array().expect("invalid_frees");
    assert_eq!(frees.len(), 1, "one bad free: {frees:#?}");
    let text = analyze_text(&trace);
    let unsymbolized = analyze_complete_with(&trace, &["--no-symbols"]);
    let unsymbolized = root_process(&unsymbolized)["invalid_frees"][0].clone();
    let dump = run_heaptape(["dump".as_ref(), "--json".as_ref(), trace.as_os_str()]);
    assert!(dump.status.success(), "{}", dump.stderr);
    let allocations = dump
        .stdout_str()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["record"] == "Alloc")
        .map(|r| (parse_hex(&r["address"]), r["size"].as_u64().expect("size")))
        .collect();
    let (mc_run, logs) = valgrind_logs(&dir, &["--num-callers=50"], &prog, &[arg]);
    assert_eq!(mc_run.shell_code(), 0, "memcheck lets the program go on");
    assert_eq!(logs.len(), 1);
    Case {
        native,
        memcheck: memcheck_error(&logs[0].text),
        finding: frees[0].clone(),
        process,
        text,
        unsymbolized,
        allocations,
    }
}

impl Case {
    /// heaptape's block: (address, size, offset).
    fn block(&self) -> (u64, u64, u64) {
        let b = &self.finding["block"];
        assert!(b.is_object(), "a block: {}", self.finding);
        (
            parse_hex(&b["address"]),
            b["size"].as_u64().expect("size"),
            b["offset"].as_u64().expect("offset"),
        )
    }

    /// The address freed.
    fn address(&self) -> u64 {
        parse_hex(&self.finding["address"])
    }

    /// Checks the block against the freed address, the trace's allocations and
    /// memcheck's sentence (`state`: "alloc'd" or "free'd").
    fn assert_block(&self, size: u64, offset: u64, state: &str) {
        let (start, got_size, got_offset) = self.block();
        assert_eq!((got_size, got_offset), (size, offset), "{}", self.finding);
        assert_eq!(start + offset, self.address(), "{}", self.finding);
        assert!(
            self.allocations.contains(&(start, size)),
            "the block at {start:#x} is an allocation of {size} bytes of the trace"
        );
        let sentence = format!(" is {offset} bytes inside a block of size {size} {state}");
        assert_eq!(self.memcheck.address, sentence, "memcheck");
        assert_eq!(
            self.finding["description"],
            format!("Address {:#x}{sentence}", self.address()),
        );
        assert_eq!(self.finding["size"], size);
    }

    /// The innermost fixture function of heaptape's stack `key`.
    fn ht_fn(&self, key: &str) -> Option<String> {
        ht_fixture_fn(&self.finding[key])
    }

    /// The text report's lines from the bad frees' section to "total heap usage",
    /// which must follow the leak summary (and its loss records) directly.
    fn text_section(&self) -> Vec<String> {
        let lines: Vec<&str> = self.text.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim_start().starts_with("bad frees:"))
            .unwrap_or_else(|| panic!("no bad frees in\n{}", self.text));
        let end = lines
            .iter()
            .position(|l| l.trim_start().starts_with("total heap usage:"))
            .expect("total heap usage");
        assert!(start < end, "bad frees before the totals:\n{}", self.text);
        let summary = lines
            .iter()
            .position(|l| l.trim() == "LEAK SUMMARY:")
            .expect("a leak summary");
        assert!(summary < start, "after the leak summary:\n{}", self.text);
        // Between them only the summary's figures and its loss records.
        assert!(
            lines[summary..start]
                .iter()
                .all(|l| !l.contains("total heap usage") && !l.contains("temporary allocations")),
            "{}",
            self.text
        );
        lines[start..end].iter().map(|l| l.to_string()).collect()
    }

    /// Asserts that the text section holds `wanted` lines in this order (each the
    /// whole line, trimmed), the frames between them aside.
    fn assert_text(&self, wanted: &[String]) {
        let section = self.text_section();
        let mut at = 0;
        for w in wanted {
            match section[at..].iter().position(|l| l.trim() == w) {
                Some(k) => at += k + 1,
                None => panic!("{w:?} missing (in order) from:\n{}", section.join("\n")),
            }
        }
    }

    /// The innermost fixture function of each stack the text section prints, in order.
    fn text_fns(&self) -> Vec<String> {
        let section = self.text_section();
        let mut out = Vec::new();
        let mut in_stack = false;
        for l in &section {
            let t = l.trim_start();
            let frame = t.starts_with("at 0x") || t.starts_with("by 0x");
            if t.starts_with("at 0x") {
                in_stack = false;
            }
            if frame && !in_stack {
                if let Some(i) = t.find(&format!(" ({SRC}:")) {
                    let (_, name) = t[..i].split_once(": ").expect("frame");
                    out.push(base_name(name));
                    in_stack = true;
                }
            }
        }
        out
    }
}

#[test]
fn interior_pointer_into_a_live_block() {
    let c = run_case("interior");
    assert_eq!(c.native, 134, "glibc aborts: the chunk would be misaligned");
    assert_eq!(c.process["exit"]["signal"], 6);
    assert_eq!(c.finding["kind"], "invalid_free");
    assert_eq!(
        c.memcheck.heading,
        "Invalid free() / delete / delete[] / realloc()"
    );
    c.assert_block(64, 8, "alloc'd");
    assert_eq!(c.ht_fn("stack").as_deref(), Some("free_inside"));
    assert_eq!(c.ht_fn("alloc_stack").as_deref(), Some("alloc_block"));
    assert_eq!(c.finding["free_stack"], Value::Null);
    assert_eq!(c.finding["alloc_function"], "malloc");
    assert_eq!(c.memcheck.free_fn.as_deref(), Some("free_inside"));
    assert_eq!(c.memcheck.second_fn.as_deref(), Some("alloc_block"));
    c.assert_text(&[
        "bad frees: 0 double, 1 invalid, 0 mismatched".into(),
        format!(
            "Invalid free() / delete / delete[] / realloc() (invalid free by free, 1 time, stack {})",
            c.finding["stack_id"]
        ),
        format!(
            "Address {:#x} is 8 bytes inside a block of size 64 alloc'd",
            c.address()
        ),
    ]);
    assert_eq!(c.text_fns(), ["free_inside", "alloc_block"]);
}

#[test]
fn double_free() {
    let c = run_case("double");
    assert_eq!(
        c.native, 0,
        "glibc's fastbin check only compares with the top"
    );
    assert_eq!(c.finding["kind"], "double_free");
    assert_eq!(
        c.memcheck.heading,
        "Invalid free() / delete / delete[] / realloc()"
    );
    c.assert_block(64, 0, "free'd");
    assert_eq!(c.ht_fn("stack").as_deref(), Some("second_free"));
    assert_eq!(c.ht_fn("free_stack").as_deref(), Some("first_free"));
    assert_eq!(c.ht_fn("alloc_stack").as_deref(), Some("alloc_block"));
    assert_eq!(c.memcheck.free_fn.as_deref(), Some("second_free"));
    assert_eq!(c.memcheck.second_fn.as_deref(), Some("first_free"));
    assert_eq!(c.memcheck.alloc_fn.as_deref(), Some("alloc_block"));
    c.assert_text(&[
        "bad frees: 1 double, 0 invalid, 0 mismatched".into(),
        format!(
            "Invalid free() / delete / delete[] / realloc() (double free by free, 1 time, stack {})",
            c.finding["stack_id"]
        ),
        format!(
            "Address {:#x} is 0 bytes inside a block of size 64 free'd",
            c.address()
        ),
        "Block was alloc'd at".into(),
    ]);
    assert_eq!(c.text_fns(), ["second_free", "first_free", "alloc_block"]);
}

#[test]
fn stale_pointer_into_a_freed_block() {
    let c = run_case("stale");
    assert_eq!(
        c.native, 0,
        "glibc takes the chunk header the program wrote"
    );
    assert_eq!(c.finding["kind"], "invalid_free");
    c.assert_block(64, 32, "free'd");
    assert_eq!(c.ht_fn("stack").as_deref(), Some("free_stale"));
    assert_eq!(c.ht_fn("free_stack").as_deref(), Some("first_free"));
    assert_eq!(c.ht_fn("alloc_stack").as_deref(), Some("alloc_block"));
    assert_eq!(c.memcheck.free_fn.as_deref(), Some("free_stale"));
    assert_eq!(c.memcheck.second_fn.as_deref(), Some("first_free"));
    assert_eq!(c.memcheck.alloc_fn.as_deref(), Some("alloc_block"));
    assert_eq!(c.text_fns(), ["free_stale", "first_free", "alloc_block"]);
}

#[test]
fn free_of_a_global() {
    let c = run_case("global");
    assert_eq!(c.native, 134);
    assert_eq!(c.finding["kind"], "invalid_free");
    assert_eq!(c.finding["block"], Value::Null);
    assert_eq!(c.finding["alloc_stack"], Value::Null);
    assert_eq!(c.finding["free_stack"], Value::Null);
    assert_eq!(c.ht_fn("stack").as_deref(), Some("free_global"));
    assert_eq!(c.memcheck.free_fn.as_deref(), Some("free_global"));
    // Both say it in the same words (the addresses differ: memcheck loads the program
    // elsewhere).
    let sentence = " is 16 bytes inside data symbol \"global_array\"";
    assert_eq!(c.memcheck.address, sentence);
    let line = format!("Address {:#x}{sentence}", c.address());
    assert_eq!(c.finding["description"], line.as_str());
    c.assert_text(&[line]);
    // Without symbols, the module's segment (memcheck's words for a mapping).
    let prog = program().canonicalize().expect("the fixture's path");
    assert_eq!(
        c.unsymbolized["description"],
        format!(
            "Address {:#x} is in a rw- mapped file {} segment",
            c.address(),
            prog.display()
        )
        .as_str()
    );
}

#[test]
fn free_of_a_local() {
    let c = run_case("stack");
    assert_eq!(c.native, 134);
    assert_eq!(c.finding["kind"], "invalid_free");
    assert_eq!(c.finding["block"], Value::Null);
    assert_eq!(c.finding["alloc_stack"], Value::Null);
    assert_eq!(c.ht_fn("stack").as_deref(), Some("free_stack"));
    assert_eq!(c.memcheck.free_fn.as_deref(), Some("free_stack"));
    assert_eq!(c.memcheck.address, " is on thread 1's stack");
    // The trace does not show the threads' stacks: heaptape says what it knows.
    let line = format!(
        "Address {:#x} is not malloc'd or (recently) free'd",
        c.address()
    );
    assert_eq!(c.finding["description"], line.as_str());
    c.assert_text(&[line]);
    assert_eq!(c.text_fns(), ["free_stack"]);
}

/// A mismatched release: the kind, both functions, the block (its start, so offset 0)
/// and both stacks, as memcheck.
fn mismatch(arg: &str, free: &str, alloc: &str, size: u64, free_fn: &str, alloc_fn: &str) {
    let c = run_case(arg);
    assert_eq!(c.native, 0);
    assert_eq!(c.finding["kind"], "mismatched_free");
    assert_eq!(c.memcheck.heading, "Mismatched free() / delete / delete []");
    assert_eq!(c.finding["function"], free);
    assert_eq!(c.finding["alloc_function"], alloc);
    c.assert_block(size, 0, "alloc'd");
    assert_eq!(c.ht_fn("stack").as_deref(), Some(free_fn));
    assert_eq!(c.ht_fn("alloc_stack").as_deref(), Some(alloc_fn));
    assert_eq!(c.finding["free_stack"], Value::Null);
    assert_eq!(c.memcheck.free_fn.as_deref(), Some(free_fn));
    assert_eq!(c.memcheck.second_fn.as_deref(), Some(alloc_fn));
    c.assert_text(&[
        "bad frees: 0 double, 0 invalid, 1 mismatched".into(),
        format!(
            "Mismatched free() / delete / delete [] ({free} of a block allocated by {alloc}, 1 time, stack {})",
            c.finding["stack_id"]
        ),
        format!(
            "Address {:#x} is 0 bytes inside a block of size {size} alloc'd",
            c.address()
        ),
    ]);
    assert_eq!(c.text_fns(), [free_fn, alloc_fn]);
}

#[test]
fn new_then_free() {
    mismatch("new-free", "free", "operator new", 4, "free_int", "new_int");
}

#[test]
fn new_array_then_delete() {
    mismatch(
        "newarr-delete",
        "operator delete",
        "operator new[]",
        64,
        "delete_ints",
        "new_ints",
    );
}

#[test]
fn malloc_then_delete() {
    mismatch(
        "malloc-delete",
        "operator delete",
        "malloc",
        64,
        "delete_malloced",
        "malloc_ints",
    );
}

/// The HTML page shows what the text report says: memcheck's heading, where the
/// address was, the earlier free and the allocation, each with its stack.
#[test]
fn html_page_shows_the_block_and_both_stacks() {
    let prog = program();
    let dir = TestDir::new("bad_free_html");
    let trace = dir.join("t.trace");
    record_ok(&dir, &trace, &[], &prog, &["double"]);
    let page = dir.join("report.html");
    let r = run_heaptape([
        "report".as_ref(),
        "-o".as_ref(),
        page.as_os_str(),
        trace.as_os_str(),
    ]);
    assert!(r.status.success(), "{}", r.stderr);
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(html.contains("is 0 bytes inside a block of size 64 free'd"));
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED the browser part: chromium is not installed (apt-get install chromium)");
        return;
    };
    let (dom, log) = headless(browser, &page, &["--dump-dom"]);
    for line in log.lines() {
        assert!(
            !(line.contains("CONSOLE") && (line.contains("Error") || line.contains("Uncaught"))),
            "console error: {line}"
        );
    }
    let at = |needle: &str| {
        dom.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the page:\n{dom}"))
    };
    let order = [
        at("Invalid free() / delete / delete[] / realloc() (double free by free, 1 time)"),
        at("second_free"),
        at("is 0 bytes inside a block of size 64 free'd"),
        at("first_free"),
        at("Block was alloc'd at"),
        at("alloc_block"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}:\n{dom}");
    assert!(!dom.contains("Loading…"), "the script did not run: {dom}");
}
