//! Descriptors and mappings left open (`fd_leaks`, `mmap_leaks`), checked against the
//! fixtures' known leaks and against memcheck's `--track-fds=yes` report; and the RSS
//! timeline's verdict on a fragmenting and on a leaking program.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Opens descriptors in every way the recorder knows, leaking some; prints
/// `NAME FD` for each descriptor it leaks.
const FDS_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "r");                 /* leaked (fopen, no fclose) */
    int a = open(argv[2], O_RDONLY);               /* open + close: not leaked */
    close(a);
    FILE *g = fopen(argv[2], "r");                 /* fopen + fclose: not leaked */
    fclose(g);
    int s = socket(AF_INET, SOCK_STREAM, 0);       /* leaked */
    int p[2];
    if (pipe(p) != 0) return 1;
    close(p[1]);                                   /* the read end is leaked */
    int o = open(argv[3], O_RDONLY);
    int d = dup(o);                                /* leaked, the original closed */
    close(o);
    int e = dup(s);                                /* dup + close: not leaked */
    close(e);
    close(1000);                                   /* EBADF: not an error here */
    printf("file %d\nsocket %d\npipe %d\ndup %d\n", fileno(f), s, p[0], d);
    return 0;
}
"#;

/// `(fd, path)` of every `Open ... N: path` entry memcheck lists that the program opened
/// itself (not inherited, not 0/1/2).
fn memcheck_fds(stderr: &str) -> BTreeSet<(i64, String)> {
    let lines: Vec<&str> = stderr.lines().map(memcheck_body).collect();
    let mut out = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("Open ") else {
            continue;
        };
        let Some(colon) = rest.find(':') else {
            continue;
        };
        let Some(fd) = rest[..colon]
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let inherited = lines
            .get(i + 1)
            .is_some_and(|l| l.contains("<inherited from parent>"));
        if fd > 2 && !inherited {
            out.insert((fd, rest[colon + 1..].trim().to_string()));
        }
    }
    out
}

/// The `NAME FD` lines a fixture printed.
fn printed(stdout: &str) -> Vec<(String, i64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (name, n) = l.split_once(' ')?;
            Some((name.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

fn fd_of(printed: &[(String, i64)], name: &str) -> i64 {
    printed
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fixture did not print {name}"))
        .1
}

#[test]
fn fd_leaks_match_the_fixture_and_memcheck() {
    let dir = TestDir::new("fds");
    let exe = dir.compile_c("fds", FDS_C);
    let files: Vec<String> = ["leaked.txt", "closed.txt", "duped.txt"]
        .iter()
        .map(|n| {
            let p = dir.join(n);
            std::fs::write(&p, "data\n").unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();
    let trace = dir.join("fds.trace");
    let mut args = vec![exe.to_str().unwrap()];
    args.extend(files.iter().map(String::as_str));
    let rec = record_ok(&dir, &trace, &[], &exe, &args[1..]);
    let fds = printed(&rec.stdout_str());
    let report = analyze_json(&trace);
    let p = traced_process(&report);
    let got: BTreeSet<(i64, String, String)> = p["fd_leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["fd"].as_i64().unwrap(),
                f["kind"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(i64, String, String)> = [
        (fd_of(&fds, "file"), "file", files[0].as_str()),
        (
            fd_of(&fds, "socket"),
            "socket",
            "socket(AF_INET, SOCK_STREAM)",
        ),
        (fd_of(&fds, "pipe"), "pipe", "pipe (read end)"),
        (fd_of(&fds, "dup"), "dup", files[2].as_str()),
    ]
    .into_iter()
    .map(|(fd, k, path)| (fd, k.to_string(), path.to_string()))
    .collect();
    assert_eq!(got, expected);
    for leak in p["fd_leaks"].as_array().unwrap() {
        assert!(
            stack_has(&leak["stack"], "main"),
            "no main in the stack of {leak}"
        );
    }
    assert_eq!(p["mmap_leaks"], Value::Array(vec![]));

    let text = analyze_text(&trace);
    assert!(
        text.contains("FILE DESCRIPTORS: 4 open at exit (opened by the program)"),
        "{text}"
    );
    let line = format!("Open file descriptor {}: {}", fd_of(&fds, "file"), files[0]);
    assert!(text.contains(&line), "no `{line}` in:\n{text}");

    // memcheck agrees on which descriptors the program leaked, and on the files' paths.
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("valgrind is not installed; memcheck comparison skipped");
        return;
    }
    let vg = run(Command::new("valgrind").arg("--track-fds=yes").args(&args));
    assert!(vg.status.success(), "valgrind failed: {}", vg.stderr);
    let vg_printed = printed(&vg.stdout_str());
    let mc = memcheck_fds(&vg.stderr);
    let mc_fds: BTreeSet<i64> = mc.iter().map(|(fd, _)| *fd).collect();
    let vg_expected: BTreeSet<i64> = ["file", "socket", "pipe", "dup"]
        .iter()
        .map(|n| fd_of(&vg_printed, n))
        .collect();
    assert_eq!(mc_fds, vg_expected, "memcheck report:\n{}", vg.stderr);
    let ours: BTreeSet<i64> = got.iter().map(|(fd, _, _)| *fd).collect();
    assert_eq!(ours, mc_fds, "memcheck report:\n{}", vg.stderr);
    for (fd, kind, path) in &got {
        if kind == "file" || kind == "dup" {
            assert!(
                mc.contains(&(*fd, path.clone())),
                "memcheck does not list fd {fd} as {path}:\n{}",
                vg.stderr
            );
        }
    }
}

/// Maps memory in every way the recorder knows; prints the regions it leaks.
const MMAP_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
static void *worker(void *arg) { return arg; }
static void *map(size_t len) {
    return mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}
int main(void) {
    pthread_t t;                                   /* its stack is the C library's */
    pthread_create(&t, 0, worker, 0);
    pthread_join(t, 0);
    char *leaked = map(8192);                      /* leaked */
    leaked[0] = 1;
    char *freed = map(4096);                       /* mmap + munmap: not leaked */
    munmap(freed, 4096);
    char *split = map(4 * 4096);                   /* second page unmapped */
    munmap(split + 4096, 4096);
    char *moved = map(4096);                       /* grown by mremap, leaked */
    char *grown = mremap(moved, 4096, 3 * 4096, MREMAP_MAYMOVE);
    char *gone = map(2 * 4096);                    /* unmapped in two halves */
    munmap(gone, 4096);
    munmap(gone + 4096, 4096);
    printf("region %lu %d\n", (unsigned long)leaked, 8192);
    printf("region %lu %d\n", (unsigned long)split, 4096);
    printf("region %lu %d\n", (unsigned long)(split + 2 * 4096), 2 * 4096);
    printf("region %lu %d\n", (unsigned long)grown, 3 * 4096);
    return 0;
}
"#;

#[test]
fn mmap_leaks_follow_unmaps_splits_and_remaps() {
    let dir = TestDir::new("mmap");
    let exe = dir.compile_c("mmap", MMAP_C);
    let trace = dir.join("mmap.trace");
    let rec = record_ok(&dir, &trace, &[], &exe, &[]);
    let stdout = rec.stdout_str();
    let expected: BTreeSet<(String, u64)> = stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            let a: u64 = w.next()?.parse().ok()?;
            let n: u64 = w.next()?.parse().ok()?;
            Some((format!("{a:#x}"), n))
        })
        .collect();
    assert_eq!(expected.len(), 4, "fixture output: {stdout}");
    let report = analyze_json(&trace);
    let p = traced_process(&report);
    let got: BTreeSet<(String, u64)> = p["mmap_leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["address"].as_str().unwrap().to_string(),
                m["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected, "mmap_leaks: {}", p["mmap_leaks"]);
    for m in p["mmap_leaks"].as_array().unwrap() {
        assert!(stack_has(&m["stack"], "main"), "no main in {m}");
    }
    assert_eq!(p["fd_leaks"], Value::Array(vec![]));
    let text = analyze_text(&trace);
    assert!(
        text.contains(
            "MAPPINGS: 32,768 bytes in 4 regions still mapped at exit (mapped by the program)"
        ),
        "{text}"
    );
}

/// Each round runs in a new thread, so in a fresh malloc arena: it allocates 1024 blocks
/// of 2 KiB (touching them), frees 15 of every 16 (the live heap drops, the pages stay
/// resident), then frees the survivors but the last one, which pins the arena's memory
/// below it. The thread then waits (keeping its arena) until the end. Rounds do not
/// overlap (the next starts 150 ms after the previous finished), so the live heap stays
/// at a few KiB, with one round's 2 MiB at most in flight, while RSS grows by about
/// 2 MiB per round.
const FRAGMENT_C: &str = r#"
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define ROUNDS 16
#define BLOCKS 1024
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int done, finished;
static void *last[ROUNDS];
static void *round_fn(void *arg) {
    long r = (long)arg;
    static __thread char *blocks[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(2048);
        memset(blocks[i], i, 2048);
    }
    for (int i = 0; i < BLOCKS; i++)
        if (i % 16 != 15) free(blocks[i]);
    for (int i = 15; i < BLOCKS - 1; i += 16) free(blocks[i]);
    last[r] = blocks[BLOCKS - 1];
    pthread_mutex_lock(&lock);
    finished++;
    pthread_cond_broadcast(&done_cv);
    while (!done) pthread_cond_wait(&done_cv, &lock);
    pthread_mutex_unlock(&lock);
    return 0;
}
int main(void) {
    mallopt(M_ARENA_MAX, 64);
    pthread_t t[ROUNDS];
    struct timespec ts = {0, 150 * 1000 * 1000};
    for (long r = 0; r < ROUNDS; r++) {
        pthread_create(&t[r], 0, round_fn, (void *)r);
        pthread_mutex_lock(&lock);
        while (finished <= r) pthread_cond_wait(&done_cv, &lock);
        pthread_mutex_unlock(&lock);
        nanosleep(&ts, 0);
    }
    nanosleep(&ts, 0);
    pthread_mutex_lock(&lock);
    done = 1;
    pthread_cond_broadcast(&done_cv);
    pthread_mutex_unlock(&lock);
    long n = 0;
    for (int r = 0; r < ROUNDS; r++) {
        pthread_join(t[r], 0);
        n += last[r] != 0;
        free(last[r]);
    }
    printf("%ld\n", n);
    return 0;
}
"#;

/// Leaks a touched 16 KiB block every 5 ms for about 2.5 s.
const GROW_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static void *last;
__attribute__((noinline)) void leak_step(int i) {
    char *p = malloc(16384);
    memset(p, i, 16384);
    last = p; /* the previous block is lost */
}
int main(void) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    for (int i = 0; i < 500; i++) {
        leak_step(i);
        void *t = malloc(100);
        free(t);
        nanosleep(&ts, 0);
    }
    printf("%d\n", last != 0);
    return 0;
}
"#;

fn verdict_of(name: &str, source: &str) -> (Value, String) {
    let dir = TestDir::new(name);
    let exe = dir.compile_c(name, source);
    let trace = dir.join(format!("{name}.trace"));
    record_ok(&dir, &trace, &["--rss-interval", "100"], &exe, &[]);
    let report = analyze_json(&trace);
    let p = traced_process(&report).clone();
    let timeline = p["timeline"].as_array().unwrap();
    assert!(
        !timeline.is_empty() && timeline.len() <= 100,
        "timeline of {} points",
        timeline.len()
    );
    for point in timeline {
        for key in ["t_ns", "live_heap_bytes", "rss", "rss_anon", "mapped_bytes"] {
            assert!(point[key].is_u64(), "{key} missing in {point}");
        }
    }
    (p, analyze_text(&trace))
}

/// A program with its own pool: it maps 2 MiB regions itself (one mmap call, reached
/// from two callers) and fills them, its malloc heap flat (cc1plus's garbage-collected
/// heap, CPython's arenas); like CPython, it unmaps them all in its teardown.
const OWN_POOL_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
__attribute__((noinline)) static char *pool_map(void) {
    return mmap(0, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}
__attribute__((noinline)) static char *for_trees(void) { return pool_map(); }
__attribute__((noinline)) static char *for_strings(void) { return pool_map(); }
int main(void) {
    struct timespec pause = {0, 40 * 1000 * 1000};
    char *regions[40];
    for (int i = 0; i < 40; i++) {
        char *region = i % 2 ? for_trees() : for_strings();
        if (region == MAP_FAILED) return 1;
        memset(region, i + 1, 2 << 20);
        regions[i] = region;
        nanosleep(&pause, 0);
    }
    printf("%d\n", regions[39][0]);
    for (int i = 0; i < 40; i++)
        munmap(regions[i], 2 << 20);
    return 0;
}
"#;

#[test]
fn a_programs_own_mappings_are_neither_fragmentation_nor_a_leak() {
    let (p, text) = verdict_of("ownpool", OWN_POOL_C);
    let v = &p["timeline_verdict"];
    assert_eq!(v["kind"], "mappings", "verdict: {v}\n{text}");
    assert!(v["explanation"]
        .as_str()
        .unwrap()
        .contains("the program's own mappings"));
    // The timeline shows them: from a few MiB to most of the 80 MiB mapped (then down
    // again as the program unmaps them in its teardown).
    let t = p["timeline"].as_array().unwrap();
    let most = t
        .iter()
        .map(|point| point["mapped_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(most >= 60 << 20, "at most {most} bytes mapped");
    assert!(text.contains("timeline verdict: mappings:"), "{text}");
    // The site: the pool's mmap call, with the 2 MiB regions it made after start-up for
    // both callers, though they were unmapped in the teardown.
    let site = &v["sites"][0];
    assert!(site["bytes"].as_u64().unwrap() >= 50 << 20, "{site}");
    assert_eq!(site["bytes"].as_u64().unwrap() % (2 << 20), 0, "{site}");
    assert!(site["blocks"].as_u64().unwrap() >= 25, "{site}");
    assert!(text.contains("mapping site #1: "), "{text}");
    assert!(
        v["explanation"]
            .as_str()
            .unwrap()
            .contains("the top site mapped"),
        "{v}"
    );
}

/// CPython's dict cache grows in pymalloc's arenas, which it maps itself and unmaps at
/// its exit: a mappings verdict that names the remedy; with `PYTHONMALLOC=malloc` the
/// same script's objects are malloc blocks, and the verdict is a leak.
#[test]
fn a_python_cache_in_pymalloc_arenas_gets_its_remedy() {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        eprintln!("SKIPPED: no /usr/bin/python3");
        return;
    }
    let script = "import time\ncache = {}\nfor step in range(20):\n    for i in range(40000):\n        k = step * 40000 + i\n        cache[k] = ('value %d' % k) * 3\n    time.sleep(0.05)\n";
    let verdict = |env: &[&str]| {
        let dir = TestDir::new("pycache");
        let trace = dir.join("py.trace");
        let mut args: Vec<&str> = env.to_vec();
        args.extend(["/usr/bin/python3", "-c", script]);
        record_ok(
            &dir,
            &trace,
            &["--rss-interval", "50"],
            "/usr/bin/env",
            &args,
        );
        let report = analyze_json(&trace);
        traced_process(&report)["timeline_verdict"].clone()
    };
    let v = verdict(&[]);
    assert_eq!(v["kind"], "mappings", "{v}");
    let explanation = v["explanation"].as_str().unwrap();
    assert!(explanation.contains("PYTHONMALLOC=malloc"), "{v}");
    assert!(v["sites"][0]["bytes"].as_u64().unwrap() >= 20 << 20, "{v}");
    let v = verdict(&["PYTHONMALLOC=malloc"]);
    assert_eq!(v["kind"], "leak", "{v}");
}

#[test]
fn fragmentation_is_not_a_leak() {
    let (p, text) = verdict_of("fragment", FRAGMENT_C);
    let v = &p["timeline_verdict"];
    assert_eq!(v["kind"], "fragmentation", "verdict: {v}\n{text}");
    assert!(v["explanation"]
        .as_str()
        .unwrap()
        .contains("fragmentation or allocator retention, not a leak"));
    assert_eq!(v["sites"], Value::Array(vec![]));
    assert!(text.contains("timeline verdict: fragmentation:"), "{text}");
    assert!(text.contains("live heap "), "{text}");
}

#[test]
fn a_steady_leak_gets_the_leak_verdict() {
    let (p, text) = verdict_of("grow", GROW_C);
    let v = &p["timeline_verdict"];
    assert_eq!(v["kind"], "leak", "verdict: {v}\n{text}");
    assert!(v["explanation"]
        .as_str()
        .unwrap()
        .contains("leak or unbounded cache"));
    let top = &v["sites"][0];
    assert!(stack_has(&top["stack"], "leak_step"), "top site: {top}");
    // Every block the top site holds is one of the 16 KiB leaks.
    assert_eq!(
        top["bytes"].as_u64().unwrap(),
        top["blocks"].as_u64().unwrap() * 16384
    );
    assert!(text.contains("timeline verdict: leak:"), "{text}");
    assert!(text.contains("growing site #1:"), "{text}");
}
