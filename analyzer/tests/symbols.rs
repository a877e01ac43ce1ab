//! Symbolization against real binaries compiled at test time (gcc, g++), described to the
//! analyzer by hand-written traces, and glibc's allocator-internal frees.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, Trace};
use heaptape_analyzer::{analyze, Analysis, AnalyzeOptions, FindingKind, Frame, NoSymbols};
use heaptape_format::{ExitStatus, Record, Segment};
use object::{Object, ObjectSegment, ObjectSymbol};

/// Load bias of the fixtures in the traces.
const BASE: u64 = 0x5555_5555_4000;

const CHAIN_C: &str = r#"#include <stdlib.h>
__attribute__((noinline)) void *e(int n) {
    return malloc(n);
}
__attribute__((noinline)) void *d(int n) {
    return e(n + 1);
}
__attribute__((noinline)) void *c(int n) {
    return d(n + 1);
}
__attribute__((noinline)) void *b(int n) {
    return c(n + 1);
}
__attribute__((noinline)) void *a(int n) {
    return b(n + 1);
}
int main(int argc, char **argv) {
    (void)argv;
    void *p = a(argc);
    return p == 0;
}
"#;

/// Lines (first, last) of each function of `CHAIN_C`.
const CHAIN_LINES: [(&str, u32, u32); 6] = [
    ("e", 2, 4),
    ("d", 5, 7),
    ("c", 8, 10),
    ("b", 11, 13),
    ("a", 14, 16),
    ("main", 17, 21),
];

const INLINE_C: &str = r#"#include <stdlib.h>
volatile int counter;
static inline __attribute__((always_inline)) int helper(int x) {
    counter += x;
    return x * 3;
}
__attribute__((noinline)) void *outer(int n) {
    int k = helper(n);
    return malloc(k);
}
int main(int argc, char **argv) {
    (void)argv;
    return outer(argc) == 0;
}
"#;

const CXX: &str = r#"#include <new>
namespace shapes {
struct Box { int w; };
__attribute__((noinline)) Box *make_box(int w) {
    return new Box{w};
}
}
int main(int argc, char **) {
    shapes::Box *b = shapes::make_box(argc);
    int w = b->w;
    delete b;
    return w == 0;
}
"#;

struct Bin {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn compile(compiler: &str, ext: &str, source: &str, flags: &[&str]) -> Bin {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join(format!("fixture.{ext}"));
    std::fs::write(&src, source).unwrap();
    let path = dir.path().join("fixture");
    let out = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&path)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{compiler} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Bin { _dir: dir, path }
}

/// What a recorder would say about `path` loaded at `BASE`: (build-id, segments).
fn describe(path: &Path) -> (Vec<u8>, Vec<Segment>) {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let build_id = obj.build_id().unwrap().unwrap().to_vec();
    let segments = obj
        .segments()
        .map(|s| Segment {
            start: BASE + s.address(),
            len: s.size(),
            file_offset: s.file_range().0,
            prot: 5,
        })
        .collect();
    (build_id, segments)
}

/// Link-time (start, size) of each function symbol of `path`.
fn symbols(path: &Path) -> std::collections::HashMap<String, (u64, u64)> {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    obj.symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .map(|s| (s.name().unwrap().to_owned(), (s.address(), s.size())))
        .collect()
}

/// A trace of pid 10 with `path` (recorded as `recorded_path`, build-id `build_id`)
/// loaded at `BASE`, and one leaked malloc whose stack is `frames` (link-time
/// addresses, innermost first).
fn trace_with_stack(
    recorded_path: &str,
    build_id: Vec<u8>,
    segments: Vec<Segment>,
    frames: &[u64],
) -> (tempfile::TempDir, PathBuf) {
    let mut t = Trace::new(10);
    t.launch(10);
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 1500,
        pid: 10,
        path: recorded_path.into(),
        build_id,
        base: BASE,
        segments,
    })));
    // Outermost first: node i+1's parent is node i.
    let n = frames.len() as u32;
    for (i, &addr) in frames.iter().rev().enumerate() {
        t.stack(i as u32 + 1, i as u32, BASE + addr);
    }
    t.malloc(10, 0x9000, 64, n).exit(10, ExitStatus::Code(0));
    t.finish()
}

fn leak_frames(a: &Analysis) -> Vec<Frame> {
    let img = a.processes[0].image();
    let (stack, _) = img.sites.top_by_live(1)[0];
    heaptape_analyzer::symbolize_stack(&a.stacks, &img.modules, stack, a.symbolizer())
}

/// A return address inside each function of the chain (its middle, so the probe at
/// address - 1 is inside too), innermost first.
fn chain_addresses(path: &Path) -> Vec<u64> {
    let syms = symbols(path);
    CHAIN_LINES
        .iter()
        .map(|(f, _, _)| {
            let (start, size) = syms[*f];
            start + size / 2
        })
        .collect()
}

/// The trace of a leak whose stack is the chain of `bin`, recorded under its own path:
/// (its directory, the trace, the chain's addresses, the module path).
fn chain_trace(bin: &Bin) -> (tempfile::TempDir, PathBuf, Vec<u64>, String) {
    let (id, segs) = describe(&bin.path);
    let addrs = chain_addresses(&bin.path);
    let module = bin.path.display().to_string();
    let (dir, trace) = trace_with_stack(&module, id, segs, &addrs);
    (dir, trace, addrs, module)
}

fn assert_chain(frames: &[Frame], addresses: &[u64], module: &str) {
    assert_eq!(frames.len(), CHAIN_LINES.len());
    for ((f, (name, first, last)), addr) in frames.iter().zip(CHAIN_LINES).zip(addresses) {
        assert_eq!(f.address, BASE + addr);
        assert_eq!(f.module.as_deref(), Some(module));
        assert_eq!(f.module_offset, Some(*addr));
        assert_eq!(f.function.as_deref(), Some(name));
        assert!(
            f.file.as_deref().is_some_and(|p| p.ends_with("fixture.c")),
            "{f:?}"
        );
        let line = f.line.unwrap();
        assert!((first..=last).contains(&line), "{name}: line {line}");
        assert!(!f.inlined);
    }
}

#[test]
fn call_chain_gets_functions_files_and_lines() {
    let bin = compile("gcc", "c", CHAIN_C, &["-O0", "-g"]);
    let (_d, trace, addrs, module) = chain_trace(&bin);
    let a = run(&trace);
    assert_eq!(a.warnings(), Vec::<String>::new());
    let frames = leak_frames(&a);
    assert_chain(&frames, &addrs, &module);

    // The JSON frame shape.
    let json = a.to_json();
    let f = &json["processes"][0]["sites_live_at_exit"][0]["stack"][0];
    assert_eq!(f["address"], format!("{:#x}", BASE + addrs[0]));
    assert_eq!(f["module"], module.as_str());
    assert_eq!(f["function"], "e");
    assert_eq!(f["line"], frames[0].line.unwrap());
    assert_eq!(f["inlined"], false);
    assert!(f["file"].as_str().unwrap().ends_with("/fixture.c"));

    // The text report, memcheck's wording.
    let mut out = Vec::new();
    a.render_text(&mut out, &a.options).unwrap();
    let text = String::from_utf8(out).unwrap();
    let at = format!(
        "        at {:#x}: e (fixture.c:{})  [S1]\n        by {:#x}: d (fixture.c:{})\n",
        BASE + addrs[0],
        frames[0].line.unwrap(),
        BASE + addrs[1],
        frames[1].line.unwrap()
    );
    assert!(text.contains(&at), "{text}");

    // Without symbolization: raw frames.
    let raw = analyze(
        &trace,
        &AnalyzeOptions {
            symbolize: false,
            ..AnalyzeOptions::default()
        },
    )
    .unwrap();
    assert!(raw.symbolizer.is_none());
    assert!(leak_frames(&raw).iter().all(|f| f.function.is_none()));
}

#[test]
fn compressed_debug_sections_give_the_same_frames() {
    // gcc -gz: zlib-compressed DWARF sections (SHF_COMPRESSED), as in distributions'
    // debug files; the frames must be exactly those of the uncompressed build.
    let plain = compile("gcc", "c", CHAIN_C, &["-O0", "-g"]);
    let packed = compile("gcc", "c", CHAIN_C, &["-O0", "-g", "-gz=zlib"]);
    let sections = Command::new("readelf")
        .arg("-SW")
        .arg(&packed.path)
        .output()
        .expect("readelf");
    let sections = String::from_utf8_lossy(&sections.stdout);
    let info = sections
        .lines()
        .find(|l| l.contains(".debug_info"))
        .expect("a .debug_info section");
    // The flags column holds C (compressed).
    assert!(
        info.split_whitespace().any(|w| w.contains('C')),
        "not compressed: {info}"
    );
    let frames_of = |bin: &Bin| {
        let (_d, trace, addrs, module) = chain_trace(bin);
        let a = run(&trace);
        assert_eq!(a.warnings(), Vec::<String>::new());
        let frames = leak_frames(&a);
        assert_chain(&frames, &addrs, &module);
        frames
            .iter()
            .map(|f| (f.function.clone(), f.line, f.inlined))
            .collect::<Vec<_>>()
    };
    assert_eq!(frames_of(&packed), frames_of(&plain));
}

#[test]
fn return_addresses_are_looked_up_one_byte_before() {
    // A return address just past a function's last byte (a call to a noreturn
    // function ending it) belongs to that function, not to the next one.
    let bin = compile("gcc", "c", CHAIN_C, &["-O0", "-g"]);
    let (id, segs) = describe(&bin.path);
    let (start, size) = symbols(&bin.path)["e"];
    let module = bin.path.display().to_string();
    let (_d, trace) = trace_with_stack(&module, id, segs, &[start + size]);
    let frames = leak_frames(&run(&trace));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].function.as_deref(), Some("e"));
    assert_eq!(frames[0].address, BASE + start + size);
}

#[test]
fn inlined_calls_are_frames_of_their_own() {
    let bin = compile("gcc", "c", INLINE_C, &["-O2", "-g"]);
    let (id, segs) = describe(&bin.path);
    let (start, size) = symbols(&bin.path)["outer"];
    let module = bin.path.display().to_string();
    // Every address of `outer`, each as the only frame of a stack: one must resolve
    // to helper (inlined) in outer.
    let mut t = Trace::new(10);
    t.launch(10);
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 1500,
        pid: 10,
        path: module.clone(),
        build_id: id,
        base: BASE,
        segments: segs,
    })));
    for (i, off) in (1..=size).enumerate() {
        t.stack(i as u32 + 1, 0, BASE + start + off);
        t.malloc(10, 0x10000 + 0x100 * i as u64, 8, i as u32 + 1);
    }
    t.exit(10, ExitStatus::Code(0));
    let (_d, trace) = t.finish();
    let a = run(&trace);
    let img = a.processes[0].image();
    let sym = a.symbolizer();
    let mut found = false;
    for (stack, _) in img.sites.top_by_live(usize::MAX) {
        let frames = heaptape_analyzer::symbolize_stack(&a.stacks, &img.modules, stack, sym);
        let outermost = frames.last().unwrap();
        assert_eq!(outermost.function.as_deref(), Some("outer"));
        assert!(!outermost.inlined);
        if frames.len() == 2 {
            assert_eq!(frames[0].function.as_deref(), Some("helper"));
            assert!(frames[0].inlined);
            assert!((3..=6).contains(&frames[0].line.unwrap()), "{frames:?}");
            // The call site of the inlined helper, in outer.
            assert_eq!(frames[1].line, Some(8));
            assert_eq!(frames[0].address, frames[1].address);
            found = true;
        }
    }
    assert!(found, "no address of outer resolved to the inlined helper");
}

#[test]
fn rebuilt_binary_is_not_trusted() {
    let bin = compile("gcc", "c", CHAIN_C, &["-O0", "-g"]);
    let (_id, segs) = describe(&bin.path);
    let addrs = chain_addresses(&bin.path);
    let module = bin.path.display().to_string();
    let recorded = vec![0xde, 0xad, 0xbe, 0xef];
    let (_d, trace) = trace_with_stack(&module, recorded, segs, &addrs);
    let a = run(&trace);
    let frames = leak_frames(&a);
    assert_eq!(frames.len(), addrs.len());
    for (f, addr) in frames.iter().zip(&addrs) {
        assert_eq!(
            (f.function.as_deref(), f.line, f.module_offset),
            (None, None, Some(*addr))
        );
        assert_eq!(
            f.to_string(),
            format!("{:#x}: fixture+{addr:#x}", BASE + addr)
        );
    }
    let (real, _) = describe(&bin.path);
    let hex: String = real.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        a.warnings(),
        vec![format!(
            "{module}: build-id differs from the recorded one (the binary was rebuilt or \
             replaced; recorded deadbeef, found {hex}); its frames are shown as module+offset"
        )]
    );
    assert_eq!(a.to_json()["warnings"][0], a.warnings()[0].as_str());
}

#[test]
fn missing_module_shows_module_and_offset() {
    let bin = compile("gcc", "c", CHAIN_C, &["-O0", "-g"]);
    let (id, segs) = describe(&bin.path);
    let addr = chain_addresses(&bin.path)[0];
    let (_d, trace) = trace_with_stack("/nonexistent/dir/app", id, segs, &[addr]);
    let a = run(&trace);
    let frames = leak_frames(&a);
    assert_eq!(
        frames,
        vec![Frame {
            address: BASE + addr,
            module: Some("/nonexistent/dir/app".into()),
            module_offset: Some(addr),
            no_symbols: Some(NoSymbols::FileMissing),
            ..Frame::default()
        }]
    );
    assert_eq!(
        frames[0].to_string(),
        format!("{:#x}: app+{addr:#x}", BASE + addr)
    );
    assert_eq!(a.warnings(), Vec::<String>::new());
}

fn objcopy(args: &[&std::ffi::OsStr]) {
    let st = Command::new("objcopy").args(args).status().unwrap();
    assert!(st.success());
}

#[test]
fn separate_debug_info_via_debuglink_build_id_and_sysroot() {
    let bin = compile("gcc", "c", CHAIN_C, &["-O0", "-g"]);
    let (id, segs) = describe(&bin.path);
    let addrs = chain_addresses(&bin.path);
    let dir = bin.path.parent().unwrap().to_owned();
    let debug = dir.join("fixture.debug");
    objcopy(&[
        "--only-keep-debug".as_ref(),
        bin.path.as_os_str(),
        debug.as_os_str(),
    ]);
    objcopy(&[
        "--strip-debug".as_ref(),
        "--add-gnu-debuglink".as_ref(),
        debug.as_os_str(),
        bin.path.as_os_str(),
    ]);
    // The debug file in the .debug/ subdirectory, found by .gnu_debuglink.
    std::fs::create_dir_all(dir.join(".debug")).unwrap();
    std::fs::rename(&debug, dir.join(".debug/fixture.debug")).unwrap();
    let module = bin.path.display().to_string();
    let (_d, trace) = trace_with_stack(&module, id.clone(), segs.clone(), &addrs);
    assert_chain(&leak_frames(&run(&trace)), &addrs, &module);

    // Moved to DIR/.build-id/xx/yyyy.debug: found through `debug_dirs` only.
    let dbg = dir.join("dbg");
    let hex: String = id[1..].iter().map(|b| format!("{b:02x}")).collect();
    let by_id = dbg.join(format!(".build-id/{:02x}/{hex}.debug", id[0]));
    std::fs::create_dir_all(by_id.parent().unwrap()).unwrap();
    std::fs::rename(dir.join(".debug/fixture.debug"), &by_id).unwrap();
    let a = run(&trace);
    let f = leak_frames(&a);
    // The stripped binary still has its symbol table: names, no lines.
    assert_eq!(f[0].function.as_deref(), Some("e"));
    assert_eq!(f[0].line, None);
    assert_eq!(
        f[0].to_string(),
        format!("{:#x}: e (in fixture)", BASE + addrs[0])
    );
    let opts = AnalyzeOptions {
        debug_dirs: vec![dbg.clone()],
        ..AnalyzeOptions::default()
    };
    assert_chain(
        &leak_frames(&analyze(&trace, &opts).unwrap()),
        &addrs,
        &module,
    );

    // A sysroot: the module recorded as /opt/app/fixture lives under it.
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("opt/app")).unwrap();
    std::fs::copy(&bin.path, root.join("opt/app/fixture")).unwrap();
    let (_d2, trace2) = trace_with_stack("/opt/app/fixture", id, segs, &addrs);
    let opts = AnalyzeOptions {
        debug_dirs: vec![dbg],
        sysroot: Some(root),
        ..AnalyzeOptions::default()
    };
    assert_chain(
        &leak_frames(&analyze(&trace2, &opts).unwrap()),
        &addrs,
        "/opt/app/fixture",
    );
}

#[test]
fn cxx_names_are_demangled_from_dwarf_and_symbol_table() {
    for flags in [&["-O0", "-g"][..], &["-O0", "-g0"][..]] {
        let bin = compile("g++", "cc", CXX, flags);
        let (id, segs) = describe(&bin.path);
        let (start, size) = symbols(&bin.path)["_ZN6shapes8make_boxEi"];
        let module = bin.path.display().to_string();
        let (_d, trace) = trace_with_stack(&module, id, segs, &[start + size / 2]);
        let f = leak_frames(&run(&trace));
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].function.as_deref(),
            Some("shapes::make_box(int)"),
            "{flags:?}"
        );
        assert_eq!(f[0].line.is_some(), flags[1] == "-g");
    }
}

/// A trace of a process with `libc` and `/bin/app` mapped whose thread frees, at exit,
/// chunks from inside the C library.
fn internal_frees_trace(libc: &str) -> (tempfile::TempDir, PathBuf) {
    let seg = |start| Segment {
        start,
        len: 0x1000,
        file_offset: 0,
        prot: 5,
    };
    let mut t = Trace::new(30);
    t.launch(30).thread(30, 31);
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 2500,
        pid: 30,
        path: "/bin/app".into(),
        build_id: vec![],
        base: 0,
        segments: vec![seg(0x1000)],
    })));
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 2600,
        pid: 30,
        path: libc.into(),
        build_id: vec![],
        base: 0x7000,
        segments: vec![seg(0x7000)],
    })));
    t.stack(1, 0, 0x1100) // app
        .stack(2, 0, 0x7100) // libc: tcache_thread_shutdown
        .stack(3, 0, 0x7200); // libc: tcache_thread_shutdown, the tcache itself
    t.malloc(31, 0x5000, 16, 1)
        .free(31, 0x5000, 1) // the program's free: the chunk goes to the tcache
        .free(31, 0x5000, 2) // thread exit: the tcache flushed
        .free(31, 0x6000, 3) // thread exit: the tcache struct (never malloc'd)
        .free(31, 0x6000, 3)
        .thread_exit(31)
        .free(30, 0x5000, 1) // a real double free by the program
        .free(30, 0x6100, 1) // a real invalid free by the program
        .exit(30, ExitStatus::Code(0));
    t.finish()
}

#[test]
fn glibc_internal_frees_are_not_counted_or_reported() {
    for libc in ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib/libc-2.31.so"] {
        let (_d, path) = internal_frees_trace(libc);
        let a = run(&path);
        let img = a.processes[0].image();
        assert_eq!(
            (
                img.totals.allocations,
                img.totals.frees,
                img.totals.allocator_internal_frees
            ),
            (1, 3, 3),
            "{libc}"
        );
        let kinds: Vec<(FindingKind, u64)> = img
            .findings
            .list()
            .iter()
            .map(|f| (f.kind, f.count))
            .collect();
        assert_eq!(
            kinds,
            vec![(FindingKind::DoubleFree, 1), (FindingKind::InvalidFree, 1)]
        );
        assert_eq!(
            a.to_json()["processes"][0]["totals"]["allocator_internal_frees"],
            3
        );
    }
    // A library merely named like libc's prefix does not qualify.
    let (_d, path) = internal_frees_trace("/usr/lib/libcrypt.so.1");
    let img = &run(&path).processes[0].images[0];
    assert_eq!(
        (img.totals.frees, img.totals.allocator_internal_frees),
        (6, 0)
    );
}

#[test]
fn static_glibc_internal_frees_are_recognised_by_symbol() {
    // A static executable: the C library is inside it, so the innermost frame must
    // symbolize to glibc's thread-exit tcache flush.
    let src = "#include <stdlib.h>\nint main(void) { free(malloc(1)); return 0; }\n";
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("s.c");
    std::fs::write(&c, src).unwrap();
    let exe = dir.path().join("s");
    let ok = Command::new("gcc")
        .args(["-static", "-O0", "-o"])
        .arg(&exe)
        .arg(&c)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("no static glibc: skipped");
        return;
    }
    let syms = symbols(&exe);
    let Some(&(start, size)) = syms
        .get("tcache_thread_shutdown")
        .or_else(|| syms.get("__malloc_arena_thread_freeres"))
    else {
        panic!("static glibc without its tcache flush symbol");
    };
    let (main_start, _) = syms["main"];
    let data = std::fs::read(&exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let segments: Vec<Segment> = obj
        .segments()
        .map(|s| Segment {
            start: s.address(),
            len: s.size(),
            file_offset: s.file_range().0,
            prot: 5,
        })
        .collect();
    let build_id = obj.build_id().unwrap().unwrap_or_default().to_vec();
    let mut t = Trace::new(40);
    t.launch(40);
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 1500,
        pid: 40,
        path: exe.display().to_string(),
        build_id,
        base: 0,
        segments,
    })));
    t.stack(1, 0, main_start + 4)
        .stack(2, 0, start + size / 2)
        .malloc(40, 0x5000, 1, 1)
        .free(40, 0x5000, 1)
        .free(40, 0x5000, 2) // internal
        .free(40, 0x5000, 1) // the program's double free
        .exit(40, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let tot = &a.processes[0].image().totals;
    assert_eq!((tot.frees, tot.allocator_internal_frees), (2, 1));
    assert_eq!(a.processes[0].image().findings.list().len(), 1);
    // Symbolization off: nothing can tell, the free is reported.
    let raw = analyze(
        &path,
        &AnalyzeOptions {
            symbolize: false,
            ..AnalyzeOptions::default()
        },
    )
    .unwrap();
    let tot = &raw.processes[0].image().totals;
    assert_eq!((tot.frees, tot.allocator_internal_frees), (3, 0));
}
