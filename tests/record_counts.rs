//! Exact allocation counts of single-process fixtures against valgrind memcheck's
//! "total heap usage" (run with --run-libc-freeres=no --run-cxx-freeres=no), and of a
//! static binary against its known behaviour.

mod common;

use common::*;

#[test]
fn memalign_variants_match_valgrind() {
    let dir = TestDir::new("memalign");
    let prog = dir.compile("memalign.c", "memalign", &[]);
    let p = assert_counts_match_valgrind(&dir, "memalign", &prog, &["nopvalloc"]);
    // Known from the fixture: posix_memalign, aligned_alloc, memalign, valloc, a realloc
    // chain of 21 calls, reallocarray and stdout's buffer.
    let t = totals(&p);
    assert_eq!(t.allocations, 4 + 21 + 1 + 1);
    assert_eq!(t.frees, 4 + 20 + 1 + 1);
}

#[test]
fn pvalloc_counts_once_with_its_requested_size() {
    // valgrind 3.19 aborts on pvalloc, so compare with the run without it: pvalloc(10)
    // adds exactly one allocation of 10 requested bytes and its free.
    let dir = TestDir::new("pvalloc");
    let prog = dir.compile("memalign.c", "memalign", &[]);
    let with = record_like_native(&dir, "with", &prog, &[]);
    let without = record_like_native(&dir, "without", &prog, &["nopvalloc"]);
    let (w, wo) = (totals(root_process(&with)), totals(root_process(&without)));
    assert_eq!(w.allocations, wo.allocations + 1);
    assert_eq!(w.frees, wo.frees + 1);
    assert_eq!(w.allocated_bytes, wo.allocated_bytes + 10);
    assert_eq!(w.live_at_exit_blocks, wo.live_at_exit_blocks);
    assert_eq!(w.live_at_exit_bytes, wo.live_at_exit_bytes);
    assert_eq!(findings(root_process(&with)), vec![]);
}

#[test]
fn calloc_and_realloc_chains_match_valgrind() {
    let dir = TestDir::new("reallocs");
    let prog = dir.compile("reallocs.c", "reallocs", &[]);
    let p = assert_counts_match_valgrind(&dir, "reallocs", &prog, &[]);
    let t = totals(&p);
    // Known from the fixture: 50 callocs, a chain of 1 + 61 calls, a chain of 10,
    // malloc(0), calloc(0, 5), 2 reallocarray, the kept block and stdout's buffer.
    assert_eq!(t.allocations, 50 + 62 + 10 + 2 + 2 + 1 + 1);
    assert_eq!(t.live_at_exit_blocks, 2);
    assert_eq!(t.live_at_exit_bytes, 999 + 4096);
}

#[test]
fn cxx_new_and_delete_count_once_and_match_valgrind() {
    let dir = TestDir::new("cxx");
    let prog = dir.compile("cxx.cc", "cxx", &[]);
    let p = assert_counts_match_valgrind(&dir, "cxx", &prog, &[]);
    // new int, new Obj[3], new(nothrow) int[10], the vector and its buffer, aligned new,
    // libstdc++'s emergency pool and stdout's buffer: operator new's inner malloc must
    // not count a second time.
    let t = totals(&p);
    assert_eq!(t.allocations, 8);
    assert_eq!(t.frees, 4);
}

#[test]
fn dlopen_plugin_matches_valgrind() {
    let dir = TestDir::new("dlopen");
    dir.compile("plugin.c", "libplugin.so", &["-shared", "-fPIC"]);
    let prog = dir.compile("dlopen.c", "dlopen", &["-ldl"]);
    let lib = dir.join("libplugin.so");
    let lib = lib.to_str().expect("utf-8 path");
    let p = assert_counts_match_valgrind(&dir, "dlopen", &prog, &[lib]);
    // The plugin's 1000-byte block outlives dlclose; its module stays resolvable.
    let sites = p["sites_live_at_exit"].as_array().expect("sites");
    let plugin_site = sites
        .iter()
        .find(|s| s["live_at_exit_bytes"] == 1000)
        .unwrap_or_else(|| panic!("no live 1000-byte site: {sites:?}"));
    assert_eq!(plugin_site["stack"][0]["module"], lib);
}

#[test]
fn threads_8x100000_match_valgrind() {
    let dir = TestDir::new("threads");
    let prog = dir.compile("threads.c", "threads", &["-pthread"]);
    let args = ["8", "100000"];
    let json = record_like_native(&dir, "threads", &prog, &args);
    let p = root_process(&json);
    let t = totals(p);
    let (_, vg) = valgrind_single(&dir, &prog, &args);
    // Known from the fixture: 8 x 100000 blocks of 16 + (i % 64) bytes.
    let per_thread: u64 = (0..100_000u64).map(|i| 16 + i % 64).sum();
    assert!(t.allocations >= 800_000 && t.allocated_bytes >= 8 * per_thread);
    assert_eq!(t.allocations, vg.allocs, "allocations vs valgrind");
    assert_eq!(t.allocated_bytes, vg.bytes, "bytes vs valgrind");
    assert_eq!(
        t.frees,
        vg.frees,
        "frees vs valgrind (findings: {:?})",
        findings(p)
    );
    assert_eq!(findings(p), vec![]);
    assert_eq!(t.live_at_exit_blocks, vg.allocs - vg.frees);
}

#[test]
fn static_binary_counts_known_allocations() {
    // memcheck cannot see static binaries: the fixture's own calls are known (107
    // allocations, 102 frees, 31,150 bytes, 5 blocks of 15,000 bytes live). Static glibc
    // adds its start-up allocations (_dl_non_dynamic_init, never freed); tell them
    // apart by their stacks, symbolized with addr2line.
    let dir = TestDir::new("static");
    let prog = dir.compile("static_alloc.c", "static_alloc", &["-static"]);
    // An empty environment: static glibc's start-up parses LD_LIBRARY_PATH (which cargo
    // sets) with allocations of its own that it frees again.
    let mut native_cmd = std::process::Command::new(&prog);
    native_cmd.env_clear().current_dir(dir.path());
    let native = run(&mut native_cmd);
    assert_eq!(native.stdout_str(), "checksum 4951\n");
    let trace = dir.join("static.trace");
    let mut rec_cmd = record_cmd(&dir, &trace, &[], &prog, &[]);
    rec_cmd.env_clear();
    let recorded = run(&mut rec_cmd);
    assert_same_run(&native, &recorded);
    let json = analyze(&trace);
    let p = root_process(&json);
    let t = totals(p);
    let base = module_base(p, &prog);
    let (mut main_blocks, mut main_bytes) = (0, 0);
    let (mut startup_blocks, mut startup_bytes) = (0, 0);
    for site in p["sites_live_at_exit"].as_array().expect("sites") {
        let funcs = symbolize(&prog, base, &frame_addresses(site));
        let blocks = site["live_at_exit_blocks"].as_u64().expect("blocks");
        let bytes = site["live_at_exit_bytes"].as_u64().expect("bytes");
        assert_eq!(site["allocations"].as_u64(), Some(blocks), "{site}");
        if funcs.first().map(String::as_str) == Some("main") {
            main_blocks += blocks;
            main_bytes += bytes;
        } else {
            assert!(
                funcs.iter().any(|f| f == "__libc_init_first"),
                "live block neither from main nor from glibc start-up: {funcs:?}"
            );
            startup_blocks += blocks;
            startup_bytes += bytes;
        }
    }
    assert_eq!((main_blocks, main_bytes), (5, 15_000));
    assert_eq!(t.allocations - startup_blocks, 107);
    assert_eq!(t.frees, 102);
    assert_eq!(t.allocated_bytes - startup_bytes, 31_150);
    assert_eq!(t.live_at_exit_blocks, 5 + startup_blocks);
    assert_eq!(findings(p), vec![]);
}

/// With `--mode stop`, every allocator call of a C and a C++ program is handed over by
/// an entry trampoline (no register access at its stop) and costs exactly one stop:
/// operator new's inner malloc does not stop at all. Guards the fast path against
/// silently falling back to plain breakpoints. In ring mode (the default) the same
/// programs' calls do not stop at all: every one is recorded from a ring, the inner
/// mallocs still once.
#[test]
fn allocator_calls_take_one_stop_on_the_fast_path() {
    let dir = TestDir::new("fastpath");
    for (src, name) in [("reallocs.c", "reallocs"), ("cxx.cc", "cxx")] {
        let prog = dir.compile(src, name, &[]);
        let number_before = |stderr: &str, marker: &str| -> u64 {
            let at = stderr
                .find(marker)
                .unwrap_or_else(|| panic!("no {marker:?} in --stats output:\n{stderr}"));
            let head = stderr[..at].trim_end();
            head.rsplit([' ', '(']).next().unwrap().parse().unwrap()
        };
        let trace = dir.join(format!("{name}.trace"));
        let rec = record(&dir, &trace, &["--stats", "--mode", "stop"], &prog, &[]);
        assert!(rec.status.success(), "{}", rec.stderr);
        let at_breakpoints = number_before(&rec.stderr, " at allocator breakpoints");
        let recorded = number_before(&rec.stderr, " recorded, ");
        let fast = number_before(&rec.stderr, " allocator stops on the fast path");
        assert!(recorded > 0);
        assert_eq!(
            at_breakpoints, recorded,
            "{name}: stops per call\n{}",
            rec.stderr
        );
        assert_eq!(
            fast, at_breakpoints,
            "{name}: slow-path stops\n{}",
            rec.stderr
        );
        let stop_json = analyze(&trace);
        let ring_trace = dir.join(format!("{name}.ring.trace"));
        let rec = record(&dir, &ring_trace, &["--stats"], &prog, &[]);
        assert!(rec.status.success(), "{}", rec.stderr);
        let ring_recorded = number_before(&rec.stderr, " recorded, ");
        let from_rings = number_before(&rec.stderr, " calls recorded without a stop");
        assert_eq!(ring_recorded, recorded, "{name}: ring mode\n{}", rec.stderr);
        assert_eq!(from_rings, recorded, "{name}: ring mode\n{}", rec.stderr);
        assert_eq!(
            number_before(&rec.stderr, " at allocator breakpoints"),
            0,
            "{name}: ring mode stopped\n{}",
            rec.stderr
        );
        let ring_json = analyze(&ring_trace);
        assert_eq!(
            totals(root_process(&ring_json)),
            totals(root_process(&stop_json)),
            "{name}: totals differ between the modes"
        );
    }
}

/// Hooked functions receive every argument register intact through the entry
/// trampoline (posix_memalign, calloc, a six-argument mmap of a file at an offset).
#[test]
fn hooked_functions_get_all_their_arguments() {
    let dir = TestDir::new("args");
    let prog = dir.compile("args.c", "args", &[]);
    let native = run_native(&dir, &prog, &[]);
    assert_eq!(native.stdout_str(), "ok\n");
    let trace = dir.join("args.trace");
    let rec = record(&dir, &trace, &[], &prog, &[]);
    assert_same_run(&native, &rec);
}

/// Threads that realloc, malloc and free in one arena (no thread cache) hand each other
/// blocks while a realloc is in flight: the block a realloc returns may have been freed
/// by another thread after the realloc began, and the block it gave up may be handed out
/// before it returns. Both are replayed in the allocator's order (the release numbered
/// before the call, the new block after the return; in --mode stop, the releases of
/// the reallocs that returned since the last stop before any allocation): no address is
/// allocated while live, no free is taken for a double free, and the counts are
/// memcheck's.
#[test]
fn reallocs_racing_across_threads_replay_in_the_allocators_order() {
    let dir = TestDir::new("realloc_race");
    let prog = dir.compile_c(
        "race",
        r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static int iters;
static void *work(void *arg) {
    (void)arg;
    for (int i = 0; i < iters; i++) {
        char *p = malloc(32);
        char *g = malloc(32); /* p cannot grow in place: the realloc moves it */
        p = realloc(p, 4000);
        p[0] = 1;
        free(g);
        free(p);
    }
    return 0;
}
int main(int argc, char **argv) {
    iters = atoi(argv[1]);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, work, 0);
    for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
    puts("done");
    return 0;
}
"#,
    );
    let args = ["50000"];
    let (_, vg) = valgrind_single(&dir, &prog, &args);
    let tunables = "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1";
    for mode in ["ring", "stop"] {
        let trace = dir.join(format!("race.{mode}.trace"));
        let rec = run(record_cmd(&dir, &trace, &["--mode", mode], &prog, &args)
            .env("GLIBC_TUNABLES", tunables));
        assert!(rec.status.success(), "{mode}: {}", rec.stderr);
        assert_eq!(rec.stdout_str(), "done\n");
        // No warning (an allocation at a live address), no bad free.
        let json = analyze(&trace);
        let p = root_process(&json);
        assert_eq!(findings(p), vec![], "{mode}");
        let t = totals(p);
        assert!(t.allocations >= 4 * 50_000 * 3, "{mode}: {t:?}");
        assert_eq!(t.allocations, vg.allocs, "{mode}: allocations vs valgrind");
        assert_eq!(t.allocated_bytes, vg.bytes, "{mode}: bytes vs valgrind");
    }
}
