//! Replacement allocators (jemalloc, tcmalloc, mimalloc; `tests/common/allocators.rs`):
//! the calls through their own entry points (jemalloc's `*allocx`, mimalloc's `mi_*`,
//! tcmalloc's `tc_*`) are recorded and counted, and the leak classes stay exact when
//! heaptape attaches to a running program, on fixtures and on redis-server (which
//! Debian links with jemalloc). The fixture corpus under each allocator is in
//! `tests/leak_corpus.rs`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// Leak figures: `(blocks, bytes)` of definitely, indirectly, possibly lost and still
/// reachable.
type Leaks = [(u64, u64); 4];

const CLASSES: [&str; 4] = [
    "definitely_lost",
    "indirectly_lost",
    "possibly_lost",
    "still_reachable",
];

/// The leak figures of the loss records whose stack has a frame in `src` (the blocks
/// the program allocated, not the C runtime's own).
fn program_leaks(p: &Value, src: &str) -> Leaks {
    let mut out = [(0, 0); 4];
    for rec in p["loss_records"].as_array().expect("loss_records") {
        let mine = rec["stack"].as_array().is_some_and(|s| {
            s.iter().any(|f| {
                f["file"]
                    .as_str()
                    .is_some_and(|file| file.ends_with(&format!("/{src}")))
            })
        });
        if !mine {
            continue;
        }
        let i = CLASSES
            .iter()
            .position(|c| rec["kind"] == *c)
            .unwrap_or_else(|| panic!("unknown kind {}", rec["kind"]));
        out[i].0 += rec["blocks"].as_u64().unwrap();
        out[i].1 += rec["bytes"].as_u64().unwrap();
    }
    out
}

/// The whole process's leak figures (its LEAK SUMMARY).
fn summary(p: &Value) -> Leaks {
    let leaks = &p["leaks"];
    assert!(
        leaks.is_object(),
        "no leak check: {}",
        p["leaks_unavailable"]
    );
    CLASSES.map(|c| {
        (
            leaks[c]["blocks"].as_u64().unwrap(),
            leaks[c]["bytes"].as_u64().unwrap(),
        )
    })
}

/// Records `exe` (linked with `allocator`'s library), and the same allocator with a
/// program that allocates nothing itself: the report of each.
fn record_with_baseline(dir: &TestDir, name: &str, src: &str, a: &Allocator) -> (Value, Value) {
    let flags = a.link_flags();
    let flags: Vec<&str> = flags.iter().map(|f| f.as_str()).collect();
    let mut cc = vec!["gcc", "-g", "-O0", "-w"];
    cc.extend(&flags);
    let exe = dir.compile_source(&format!("{name}.c"), src, name, &cc);
    let base = dir.compile_source(
        &format!("{name}_base.c"),
        "int main(void) { return 0; }\n",
        &format!("{name}_base"),
        &cc,
    );
    let report = |exe: &Path, trace: &str| {
        let native = run_native(dir, exe, &[]);
        let trace = dir.join(trace);
        let rec = record_ok(dir, &trace, &[], exe, &[]);
        assert_same_run(&native, &rec);
        analyze_complete_with(&trace, &["--no-default-suppressions"])
    };
    let r = report(&exe, "ext.trace");
    let b = report(&base, "base.trace");
    (r, b)
}

/// Totals of `p` minus those of `base` (the C runtime's and the allocator's own calls).
fn program_totals(p: &Value, base: &Value) -> (u64, u64, u64) {
    let (t, b) = (totals(p), totals(base));
    (
        t.allocations - b.allocations,
        t.frees - b.frees,
        t.allocated_bytes - b.allocated_bytes,
    )
}

/// jemalloc's non-standard API (declared here: no -dev package needed).
const JEMALLOC_EXT_C: &str = r#"
#include <stddef.h>
void *mallocx(size_t size, int flags);
void *rallocx(void *ptr, size_t size, int flags);
size_t xallocx(void *ptr, size_t size, size_t extra, int flags);
void sdallocx(void *ptr, size_t size, int flags);
void dallocx(void *ptr, int flags);
#define MALLOCX_LG_ALIGN(la) ((int)(la))
#define MALLOCX_ZERO ((int)0x40)
void *keep;
static void work(void) {
    void *a = mallocx(100, 0);
    void *b = mallocx(200, MALLOCX_LG_ALIGN(6));
    b = rallocx(b, 4000, 0);          /* a 4 KiB size class: moved */
    if (xallocx(b, 4096, 0, 0) < 4096) /* in place to the whole class */
        __builtin_abort();
    if (xallocx(b, 1 << 20, 0, 0) >= 1 << 20) /* cannot grow in place: no change */
        __builtin_abort();
    void *c = mallocx(300, MALLOCX_ZERO);
    sdallocx(a, 100, 0);
    dallocx(c, 0);
    keep = mallocx(50, 0);
    b = 0;                            /* 4096 bytes lost */
}
int main(void) { work(); return 0; }
"#;

#[test]
fn jemalloc_extended_api_is_recorded() {
    let Some(a) = allocator("jemalloc") else {
        return;
    };
    let dir = TestDir::new("alloc-je-ext");
    let (r, base) = record_with_baseline(&dir, "je_ext", JEMALLOC_EXT_C, &a);
    let p = root_process(&r);
    // mallocx 100, 200, rallocx 4000 (a move: one allocation, one free), xallocx 4096
    // (a resize in place: one allocation, one free; the failed one is nothing),
    // mallocx 300, 50; sdallocx and dallocx free.
    assert_eq!(
        program_totals(p, root_process(&base)),
        (6, 4, 100 + 200 + 4000 + 4096 + 300 + 50)
    );
    assert_eq!(
        program_leaks(p, "je_ext.c"),
        [(1, 4096), (0, 0), (0, 0), (1, 50)]
    );
    assert_eq!(findings(p), vec![], "no bad free");
    let align: Vec<u64> = run_heaptape(["dump", "--json", dir.join("ext.trace").to_str().unwrap()])
        .stdout_str()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["record"] == "Alloc" && r["size"] == 200)
        .map(|r| r["align"].as_u64().unwrap())
        .collect();
    assert_eq!(align, vec![64], "mallocx's MALLOCX_LG_ALIGN(6)");
}

/// mimalloc's own API (declared here).
const MIMALLOC_EXT_C: &str = r#"
#include <stddef.h>
void *mi_malloc(size_t); void *mi_zalloc(size_t); void *mi_mallocn(size_t, size_t);
void *mi_heap_get_default(void); void *mi_heap_malloc(void *, size_t);
char *mi_strdup(const char *); char *mi_strndup(const char *, size_t);
void *mi_malloc_aligned(size_t, size_t); void *mi_calloc_aligned(size_t, size_t, size_t);
void *mi_realloc_aligned(void *, size_t, size_t); void *mi_reallocn(void *, size_t, size_t);
void *mi_expand(void *, size_t); void mi_free(void *); void mi_free_size(void *, size_t);
void *mi_new_n(size_t, size_t); void cfree(void *);
void *keep[8];
static void work(void) {
    keep[0] = mi_zalloc(10);
    keep[1] = mi_mallocn(3, 20);                  /* 60 */
    keep[2] = mi_heap_malloc(mi_heap_get_default(), 30);
    keep[3] = mi_strdup("hello world");           /* 12 */
    keep[4] = mi_strndup("abcdefghij", 4);        /* 5 */
    keep[5] = mi_malloc_aligned(64, 256);
    keep[6] = mi_new_n(4, 6);                     /* 24 */
    void *p = mi_calloc_aligned(4, 8, 64);        /* 32 */
    p = mi_realloc_aligned(p, 100, 64);           /* moved: 100 */
    mi_free(p);
    void *q = mi_reallocn(0, 2, 50);              /* 100 */
    if (mi_expand(q, 100) != q)                   /* in place */
        __builtin_abort();
    char *lost = mi_strdup("lost string");        /* 12 */
    lost = 0;
    void *r = mi_malloc(7);
    mi_free_size(r, 7);                           /* operator delete's alias */
    cfree(mi_malloc(9));
    q = 0;                                        /* 100 lost */
}
int main(void) { work(); return 0; }
"#;

#[test]
fn mimalloc_api_is_recorded() {
    let Some(a) = allocator("mimalloc") else {
        return;
    };
    let dir = TestDir::new("alloc-mi-ext");
    let (r, base) = record_with_baseline(&dir, "mi_ext", MIMALLOC_EXT_C, &a);
    let p = root_process(&r);
    // Allocations: 10, 60, 30, 12, 5, 64, 24, 32, realloc 100 (moved), reallocn 100
    // (realloc(NULL)), expand 100 (in place), 12, 7, 9. Frees: the move, mi_free,
    // the expand, mi_free_size, cfree.
    assert_eq!(
        program_totals(p, root_process(&base)),
        (
            14,
            5,
            10 + 60 + 30 + 12 + 5 + 64 + 24 + 32 + 100 + 100 + 100 + 12 + 7 + 9
        )
    );
    assert_eq!(
        program_leaks(p, "mi_ext.c"),
        [
            (2, 100 + 12),
            (0, 0),
            (0, 0),
            (7, 10 + 60 + 30 + 12 + 5 + 64 + 24)
        ]
    );
    // mi_free_size is operator delete's and free's function too: never a mismatch.
    assert_eq!(findings(p), vec![], "no bad free");
}

/// tcmalloc's own entry points: its tc_* names are the standard functions' aliases but
/// tc_malloc_skip_new_handler.
const TCMALLOC_EXT_C: &str = r#"
#include <stddef.h>
void *tc_malloc(size_t); void *tc_malloc_skip_new_handler(size_t); void tc_free(void *);
void *tc_calloc(size_t, size_t); void *tc_realloc(void *, size_t);
void *keep;
static void work(void) {
    void *a = tc_malloc(40);
    keep = tc_malloc_skip_new_handler(64);
    void *b = tc_calloc(4, 25);                   /* 100 */
    b = tc_realloc(b, 3000);                      /* moved */
    tc_free(a);
    b = 0;                                        /* 3000 lost */
}
int main(void) { work(); return 0; }
"#;

#[test]
fn tcmalloc_api_is_recorded() {
    let Some(a) = allocator("tcmalloc") else {
        return;
    };
    let dir = TestDir::new("alloc-tc-ext");
    let (r, base) = record_with_baseline(&dir, "tc_ext", TCMALLOC_EXT_C, &a);
    let p = root_process(&r);
    assert_eq!(
        program_totals(p, root_process(&base)),
        (4, 2, 40 + 64 + 100 + 3000)
    );
    assert_eq!(
        program_leaks(p, "tc_ext.c"),
        [(1, 3000), (0, 0), (0, 0), (1, 64)]
    );
    assert_eq!(findings(p), vec![], "no bad free");
}

// ---------------------------------------------------------------------------------------
// Attaching
// ---------------------------------------------------------------------------------------

/// Waits for `go` on stdin, then keeps 10 blocks in a global, loses 10, keeps a list
/// of 5, loses a tree of 7 (one definitely lost root), frees 20 temporaries and
/// replaces a kept block; prints `done` and waits for stdin to close. Prints `ready`
/// first. The stack is scrubbed before `done` (no stale copies of lost pointers).
const WINDOW_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
struct node { struct node *left, *right; long v[2]; };
static void *kept[10];
static struct node *list;
static struct node *tree(int depth) {
    struct node *n = malloc(sizeof *n);
    n->left = depth > 0 ? tree(depth - 1) : 0;
    n->right = depth > 0 ? tree(depth - 1) : 0;
    return n;
}
__attribute__((noinline)) static void pattern(void) {
    for (int i = 0; i < 10; i++) kept[i] = malloc(100 + 10 * i);
    for (int i = 0; i < 10; i++) { void *p = malloc(200 + 30 * i); memset(p, 1, 8); }
    for (int i = 0; i < 5; i++) { struct node *n = malloc(sizeof *n); n->left = list; list = n; }
    struct node *t = tree(2);
    t = 0;
    for (int i = 0; i < 20; i++) free(malloc(64 + i));
    char *s = malloc(1000); free(kept[9]); kept[9] = s;
}
__attribute__((noinline)) static void scrub(void) {
    volatile char b[8192];
    memset((char *)b, 0, sizeof b);
}
int main(void) {
    char buf[16];
    printf("ready\n");
    fflush(stdout);
    if (read(0, buf, 3) != 3) return 1;
    pattern();
    scrub();
    if (write(1, "done\n", 5) != 5) return 1;
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}
"#;

/// What [`WINDOW_C`] does between `go` and `done`, as memcheck classes it: 11
/// definitely lost, 6 indirectly lost, 15 still reachable.
const WINDOW_LEAKS: Leaks = [
    // 10 blocks of 200 + 30i bytes, and the tree's root (32 bytes).
    (11, 3350 + 32),
    // The tree's other 6 nodes.
    (6, 6 * 32),
    (0, 0),
    // kept: 100 + 10i for i < 9, and the 1,000-byte block; the list's 5 nodes.
    (15, 1260 + 1000 + 5 * 32),
];

/// Attaches to `exe` (with `preload`), lets it run [`WINDOW_C`]'s pattern, detaches;
/// the process's report.
fn attach_window(dir: &TestDir, exe: &Path, preload: Option<&Path>, label: &str) -> Value {
    let mut cmd = Command::new(exe);
    cmd.stdin(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    let (mut child, mut out) = spawn_until_line(&mut cmd, "ready\n");
    let pid = child.id();
    let trace = dir.join(format!("{label}.trace"));
    let rec = heaptape()
        .args([
            "record",
            "--pid",
            &pid.to_string(),
            "--duration",
            "2s",
            "-o",
        ])
        .arg(&trace)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heaptape record --pid");
    // The probe is mapped when the hooks go in; the threads run again after that.
    wait_for(
        || {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.contains("heaptape-probe"))
        },
        "the probe mapping",
    );
    std::thread::sleep(Duration::from_millis(300));
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin.write_all(b"go\n").expect("write go");
    stdin.flush().expect("flush");
    let mut line = String::new();
    out.read_line(&mut line).expect("read done");
    assert_eq!(line, "done\n");
    let rec = wait_output(rec, "heaptape record --pid");
    assert!(
        rec.status.success(),
        "{label}: record --pid: {}",
        rec.stderr
    );
    drop(child.stdin.take());
    let status = wait(child, "window fixture");
    assert_eq!(status.code(), Some(0), "{label}");
    let report = analyze_complete_with(&trace, &["--no-default-suppressions"]);
    let p = process(&report, pid).clone();
    assert_eq!(p["origin"], "attached", "{label}");
    p
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// After an attach, blocks allocated before it are unknown: only the known blocks and
/// those freed since are left out of the roots, and the allocator's memory mapped
/// since is not scanned. Under glibc, tcmalloc and mimalloc, linked or preloaded, the
/// blocks of the window get memcheck's classes exactly. Under jemalloc, whose thread
/// cache (allocated before the attach) keeps a pointer to every region it hands out,
/// the lost blocks of the window look still reachable: never a false "lost".
#[test]
fn attaching_classes_the_window_exactly() {
    let dir = TestDir::new("alloc-attach");
    let glibc = dir.compile_c("window", WINDOW_C);
    let p = attach_window(&dir, &glibc, None, "glibc");
    assert_eq!(program_leaks(&p, "window.c"), WINDOW_LEAKS, "glibc");
    assert_eq!(summary(&p), WINDOW_LEAKS, "glibc: the whole process");
    for a in allocators() {
        for how in AllocatorUse::ALL {
            let label = a.label(how);
            let (exe, preload) = match how {
                AllocatorUse::Linked => {
                    let mut cc = vec!["gcc", "-g", "-O0", "-pthread", "-w"];
                    let flags = a.link_flags();
                    cc.extend(flags.iter().map(|f| f.as_str()));
                    let exe = dir.compile_source("window.c", WINDOW_C, &label, &cc);
                    (exe, None)
                }
                AllocatorUse::Preloaded => (glibc.clone(), Some(a.lib.as_path())),
            };
            let p = attach_window(&dir, &exe, preload, &label);
            let window = program_leaks(&p, "window.c");
            eprintln!("{label}: {window:?}");
            if a.name == "jemalloc" {
                // Every block of the window still reachable (the thread cache's
                // stale pointers), none lost.
                assert_eq!(
                    window,
                    [(0, 0), (0, 0), (0, 0), (32, 3382 + 192 + 1260 + 1000 + 160)],
                    "{label}"
                );
            } else {
                assert_eq!(window, WINDOW_LEAKS, "{label}");
                assert_eq!(summary(&p), WINDOW_LEAKS, "{label}: the whole process");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------

/// A redis-server of this test's own (no persistence), on a Unix socket; killed when
/// dropped.
struct Redis {
    child: Child,
    socket: PathBuf,
}

impl Redis {
    /// Starts redis-server in `dir`, or `None` (said on stderr) when it is not installed.
    fn start(dir: &TestDir) -> Option<Redis> {
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        };
        let r = Redis { child, socket };
        wait_for(|| UnixStream::connect(&r.socket).is_ok(), "redis-server");
        Some(r)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `commands` (pipelined) and reads one reply per command.
    fn send(&self, commands: &[Vec<&[u8]>]) -> Vec<Reply> {
        let s = UnixStream::connect(&self.socket).expect("connect to redis");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut out = Vec::new();
        for c in commands {
            out.extend(format!("*{}\r\n", c.len()).as_bytes());
            for arg in c {
                out.extend(format!("${}\r\n", arg.len()).as_bytes());
                out.extend(*arg);
                out.extend(b"\r\n");
            }
        }
        let writer = {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || s.write_all(&out).expect("write to redis"))
        };
        let mut r = BufReader::new(s);
        let replies = (0..commands.len()).map(|_| read_reply(&mut r)).collect();
        writer.join().unwrap();
        replies
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP reply: a status or integer line, or a bulk string (`None`: nil).
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Line(String),
    Bulk(Option<Vec<u8>>),
}

fn read_reply(r: &mut impl BufRead) -> Reply {
    let mut line = String::new();
    r.read_line(&mut line).expect("read a redis reply");
    let line = line.trim_end_matches("\r\n");
    match line.as_bytes().first() {
        Some(b'$') => {
            let n: i64 = line[1..].parse().expect("bulk length");
            if n < 0 {
                return Reply::Bulk(None);
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).expect("bulk string");
            buf.truncate(n as usize);
            Reply::Bulk(Some(buf))
        }
        Some(b'-') => panic!("redis error: {line}"),
        _ => Reply::Line(line.to_string()),
    }
}

fn key(prefix: &str, i: usize) -> Vec<u8> {
    format!("{prefix}:{i}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 40)).into_bytes()
}

/// issue 16: attached to redis-server (jemalloc) while keys were set, heaptape called
/// 28-66 dict entries whose keys were all still there definitely lost (3,512 blocks
/// and 3,219 indirectly lost in a larger run): blocks allocated before the attach
/// shared pages with the window's, and the pages that ever held a block were left out of
/// the roots. Now: 2,000 keys set before the attach, 3,000 during it (the dict grows and
/// rehashes meanwhile), every key read back after the detach, and not one block lost.
/// The keys' strings are possibly lost, as memcheck says of them (a dict entry points
/// past their sds header).
#[test]
fn redis_attach_loses_nothing_it_keeps() {
    let dir = TestDir::new("alloc-redis");
    let Some(redis) = Redis::start(&dir) else {
        return;
    };
    let before: Vec<(Vec<u8>, Vec<u8>)> = (0..2000).map(|i| (key("pre", i), value(i))).collect();
    let during: Vec<(Vec<u8>, Vec<u8>)> = (0..3000).map(|i| (key("key", i), value(i))).collect();
    let set = |kv: &[(Vec<u8>, Vec<u8>)]| {
        let cmds: Vec<Vec<&[u8]>> = kv
            .iter()
            .map(|(k, v)| vec![&b"SET"[..], k.as_slice(), v.as_slice()])
            .collect();
        for r in redis.send(&cmds) {
            assert_eq!(r, Reply::Line("+OK".into()));
        }
    };
    set(&before);
    let pid = redis.pid();
    let trace = dir.join("redis.trace");
    let rec = heaptape()
        .args([
            "record",
            "--pid",
            &pid.to_string(),
            "--duration",
            "3s",
            "-o",
        ])
        .arg(&trace)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heaptape record --pid");
    wait_for(
        || {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.contains("heaptape-probe"))
        },
        "the probe mapping",
    );
    std::thread::sleep(Duration::from_millis(300));
    set(&during);
    let rec = wait_output(rec, "heaptape record --pid");
    assert!(rec.status.success(), "record --pid: {}", rec.stderr);
    // Every key is there after the detach.
    assert_eq!(
        redis.send(&[vec![&b"DBSIZE"[..]]]),
        vec![Reply::Line(":5000".into())]
    );
    let gets: Vec<Vec<&[u8]>> = before
        .iter()
        .chain(&during)
        .map(|(k, _)| vec![&b"GET"[..], k.as_slice()])
        .collect();
    for ((k, v), r) in before.iter().chain(&during).zip(redis.send(&gets)) {
        assert_eq!(
            r,
            Reply::Bulk(Some(v.clone())),
            "{}",
            String::from_utf8_lossy(k)
        );
    }
    let report = analyze_complete_with(&trace, &["--no-default-suppressions"]);
    let p = process(&report, pid);
    assert_eq!(p["origin"], "attached");
    let s = summary(p);
    eprintln!("redis: {s:?}, allocations {}", p["totals"]["allocations"]);
    assert_eq!(
        (s[0], s[1]),
        ((0, 0), (0, 0)),
        "nothing lost: {:#}",
        p["leaks"]
    );
    // The 3,000 dict entries of the window (issue 16's "definitely lost" ones).
    let entries: Vec<(&str, u64)> = p["loss_records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            stack_has(&r["stack"], "dictAddRaw") && r["bytes"] == r["blocks"].as_u64().unwrap() * 24
        })
        .map(|r| (r["kind"].as_str().unwrap(), r["blocks"].as_u64().unwrap()))
        .collect();
    assert_eq!(entries, vec![("still_reachable", 3000)], "dict entries");
    // Debian's redis-server 7.0.15 and libjemalloc2 5.3.0, this workload: 9,425 blocks
    // of 316,840 bytes live at the detach, none lost. The keys' strings (sds: a dict
    // entry points past their header) are possibly lost, as memcheck says of them, but
    // those whose start address jemalloc's thread cache (from before the attach) still
    // holds are still reachable: how many varies from run to run (2 in 3,300).
    assert_eq!(
        (s[2].0 + s[3].0, s[2].1 + s[3].1),
        (9425, 316_840),
        "{:#}",
        p["leaks"]
    );
    let keys: u64 = p["loss_records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| stack_has(&r["stack"], "dbAdd") && stack_has(&r["stack"], "_sdsnewlen"))
        .map(|r| r["blocks"].as_u64().unwrap())
        .sum();
    assert_eq!(keys, 3000, "the window's keys");
}
