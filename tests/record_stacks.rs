//! Call stacks: the leaked block of a known call chain symbolizes (addr2line on the
//! fixture, addresses minus the module's load bias) to that chain, innermost first.

mod common;

use common::*;

#[test]
fn leaked_block_has_the_known_call_chain() {
    let dir = TestDir::new("stack");
    let prog = dir.compile("stack.c", "stack", &[]);
    let json = record_like_native(&dir, "stack", &prog, &[]);
    let native = run_native(&dir, &prog, &[]);
    assert_eq!(native.stdout_str(), "stack done\n");
    let p = root_process(&json);
    let sites = p["sites_live_at_exit"].as_array().expect("sites");
    let site = sites
        .iter()
        .find(|s| s["live_at_exit_bytes"] == 4321)
        .unwrap_or_else(|| panic!("no live 4321-byte block: {sites:?}"));
    assert_eq!(site["live_at_exit_blocks"], 1);
    let base = module_base(p, &prog);
    let addresses = frame_addresses(site);
    let funcs = symbolize(&prog, base, &addresses);
    assert!(funcs.len() >= 6, "{funcs:?}");
    assert_eq!(
        funcs[..6],
        ["e", "d", "c", "b", "a", "main"],
        "stack: {funcs:?}"
    );
    // The report's own module+offset agrees with base arithmetic.
    let prog_s = prog.to_str().expect("utf-8");
    for (frame, addr) in site["stack"]
        .as_array()
        .expect("frames")
        .iter()
        .zip(&addresses)
        .take(6)
    {
        assert_eq!(frame["module"], prog_s);
        assert_eq!(parse_hex(&frame["offset"]), addr - base);
    }
}

/// The ring trampolines copy the frames of a stack, not what lies above them: the main
/// thread's copy stops at the initial stack pointer (argv, a 64 KiB environment and the
/// kernel's random gap above it are never copied), a thread's below its thread pointer
/// (TLS and `struct pthread`). Each thread's leaked block still unwinds to its outermost
/// frame.
#[test]
fn ring_copies_hold_frames_not_the_environment() {
    let dir = TestDir::new("copy_len");
    let prog = dir.compile_c(
        "shallow",
        r#"
#include <pthread.h>
#include <stdlib.h>
static void *churn(void *arg) {
    for (int i = 0; i < 2000; i++) free(malloc(32 + i % 64));
    return malloc((size_t)arg);
}
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, churn, (void *)777);
    void *from_thread;
    pthread_join(t, &from_thread);
    void *volatile leak = churn((void *)555);
    leak = 0;
    from_thread = 0;
    return 0;
}
"#,
    );
    let trace = dir.join("shallow.trace");
    let big = "x".repeat(64 * 1024);
    let rec =
        run(record_cmd(&dir, &trace, &["--stats"], &prog, &[]).env("HEAPTAPE_TEST_BIG", &big));
    assert!(rec.status.success(), "{}", rec.stderr);
    let marker = " bytes of stack copied per call";
    let at = rec
        .stderr
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in --stats output:\n{}", rec.stderr));
    let per_call: u64 = rec.stderr[..at]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number before the marker");
    assert!(
        (1..1024).contains(&per_call),
        "{per_call} bytes copied per call:\n{}",
        rec.stderr
    );
    let json = analyze(&trace);
    let p = root_process(&json);
    let base = module_base(p, &prog);
    for (bytes, outermost) in [(555, "main"), (777, "churn")] {
        let sites = p["sites_live_at_exit"].as_array().expect("sites");
        let site = sites
            .iter()
            .find(|s| s["live_at_exit_bytes"] == bytes)
            .unwrap_or_else(|| panic!("no live {bytes}-byte block: {sites:?}"));
        let funcs = symbolize(&prog, base, &frame_addresses(site));
        assert_eq!(
            funcs.first().map(String::as_str),
            Some("churn"),
            "{funcs:?}"
        );
        assert!(funcs.iter().any(|f| f == outermost), "{bytes}: {funcs:?}");
        let frames = site["stack"].as_array().expect("frames");
        let last = frames.last().expect("a frame");
        assert!(
            ["_start", "clone3", "__clone3", "clone"]
                .iter()
                .any(|f| last["function"].as_str().unwrap_or("").contains(f)),
            "{bytes}: the unwind stops short of the outermost frame: {frames:?}"
        );
    }
}
