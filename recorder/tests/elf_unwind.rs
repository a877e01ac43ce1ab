//! Tests of the recorder's pure parts on this machine's real binaries:
//! `/proc/PID/maps` parsing, ELF hook discovery, unwinding from an
//! allocator-entry stack dump, and displaced-instruction relocation.
//!
//! The unwinding tests build `tests/fixtures/stackdump.c` (with
//! `entry_stub.S`) three ways, run it, and unwind the stack it dumps at the
//! first instruction of its fake allocator, as the recorder would at a
//! breakpoint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use heaptape_format::AllocFn;
use heaptape_recorder::low_level::{
    displaced_copy, group_modules, instruction_len, parse_maps, read_maps, CallKind, ElfModule,
    EntryRegs, HookSymbol, MapEntry, RelocateError, StackUnwinder,
};
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, OpKind};

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const LD_SO: &str = "/lib64/ld-linux-x86-64.so.2";
const LIBSTDCXX: &str = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("elf_unwind")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `nm -D --defined-only` (or without -D) addresses by name.
fn nm(path: &str, dynamic: bool) -> Vec<(String, u64)> {
    let mut cmd = Command::new("nm");
    if dynamic {
        cmd.arg("-D");
    }
    cmd.arg("--defined-only").arg(path);
    run(&mut cmd)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let _kind = it.next()?;
            let name = it.next()?;
            let name = name.split('@').next()?.to_string();
            Some((name, addr))
        })
        .collect()
}

fn nm_addr(path: &str, dynamic: bool, name: &str) -> u64 {
    nm(path, dynamic)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not in nm {path}"))
        .1
}

fn hook_named<'a>(hooks: &'a [HookSymbol], name: &str) -> &'a HookSymbol {
    hooks
        .iter()
        .find(|h| h.name == name || h.aliases.iter().any(|a| a == name))
        .unwrap_or_else(|| panic!("no hook for {name}: {hooks:#?}"))
}

// ---------------------------------------------------------------- maps

#[test]
fn read_own_maps() {
    let maps = read_maps(std::process::id() as i32).unwrap();
    assert!(maps.iter().any(|m| m.path == "[stack]"));
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let modules = group_modules(&maps);
    let me = modules
        .iter()
        .find(|m| Path::new(&m.path) == exe)
        .expect("own executable among the modules");
    assert!(me.mappings.iter().any(|m| m.exec));
    assert!(me.inode != 0);
    // The executable's load bias puts its entry point inside an executable
    // mapping.
    let elf = ElfModule::from_path(&exe).unwrap();
    let bias = elf.load_bias(&me.mappings).unwrap();
    let entry = elf.entry().wrapping_add(bias);
    assert!(me.mappings.iter().any(|m| m.exec && m.contains(entry)));
}

// ---------------------------------------------------------------- elf

#[test]
fn libc_hooks_match_nm() {
    let libc = ElfModule::from_path(LIBC).unwrap();
    assert!(libc.is_pie());
    let hooks = libc.hook_symbols(&[]);
    for name in [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "free",
        "posix_memalign",
        "memalign",
        "aligned_alloc",
        "valloc",
        "pvalloc",
    ] {
        let hook = hook_named(&hooks, name);
        assert_eq!(hook.vaddr, nm_addr(LIBC, true, name), "{name}");
        assert!(hook.size > 0, "{name}");
    }
    // One hook per address.
    let addrs: BTreeSet<u64> = hooks.iter().map(|h| h.vaddr).collect();
    assert_eq!(addrs.len(), hooks.len());
    // glibc makes aligned_alloc an alias of memalign: one hook, memalign's.
    let memalign = hook_named(&hooks, "memalign");
    assert_eq!(memalign.name, "memalign");
    assert_eq!(memalign.aliases, ["aligned_alloc"]);
    assert_eq!(memalign.spec.func, AllocFn::Memalign);
    // Argument layouts.
    let calloc = hook_named(&hooks, "calloc");
    assert_eq!(calloc.spec.func, AllocFn::Calloc);
    assert_eq!(
        calloc.spec.kind,
        CallKind::Alloc {
            size_arg: 1,
            count_arg: Some(0),
            align_arg: None,
            fixed_align: None
        }
    );
    assert_eq!(
        hook_named(&hooks, "reallocarray").spec.kind,
        CallKind::Realloc {
            ptr_arg: 0,
            size_arg: 2,
            count_arg: Some(1)
        }
    );
    assert_eq!(
        hook_named(&hooks, "posix_memalign").spec.kind,
        CallKind::PosixMemalign {
            out_arg: 0,
            align_arg: 1,
            size_arg: 2
        }
    );
    assert_eq!(
        hook_named(&hooks, "valloc").spec.kind,
        CallKind::Alloc {
            size_arg: 0,
            count_arg: None,
            align_arg: None,
            fixed_align: Some(4096)
        }
    );
    assert_eq!(
        hook_named(&hooks, "free").spec.kind,
        CallKind::Free { ptr_arg: 0 }
    );
    // Only allocator names: 10 C names on 9 addresses.
    assert_eq!(hooks.len(), 9, "{hooks:#?}");
    assert!(libc.ifunc_hook_names(&[]).is_empty());
    // symbolize agrees.
    assert_eq!(
        libc.symbolize(hook_named(&hooks, "malloc").vaddr + 3),
        Some("malloc")
    );
}

#[test]
fn libstdcxx_operators() {
    let lib = ElfModule::from_path(LIBSTDCXX).unwrap();
    let hooks = lib.hook_symbols(&[]);
    let names = [
        ("_Znwm", AllocFn::New, None),
        ("_Znam", AllocFn::NewArray, None),
        ("_ZnwmRKSt9nothrow_t", AllocFn::New, None),
        ("_ZnamRKSt9nothrow_t", AllocFn::NewArray, None),
        ("_ZnwmSt11align_val_t", AllocFn::New, Some(1)),
        ("_ZnwmSt11align_val_tRKSt9nothrow_t", AllocFn::New, Some(1)),
        ("_ZnamSt11align_val_t", AllocFn::NewArray, Some(1)),
        (
            "_ZnamSt11align_val_tRKSt9nothrow_t",
            AllocFn::NewArray,
            Some(1),
        ),
        ("_ZdlPv", AllocFn::Delete, None),
        ("_ZdaPv", AllocFn::DeleteArray, None),
        ("_ZdlPvm", AllocFn::Delete, None),
        ("_ZdaPvm", AllocFn::DeleteArray, None),
        ("_ZdlPvSt11align_val_t", AllocFn::Delete, None),
        ("_ZdlPvmSt11align_val_t", AllocFn::Delete, None),
        ("_ZdaPvSt11align_val_t", AllocFn::DeleteArray, None),
        ("_ZdaPvmSt11align_val_t", AllocFn::DeleteArray, None),
        ("_ZdlPvRKSt9nothrow_t", AllocFn::Delete, None),
        ("_ZdaPvRKSt9nothrow_t", AllocFn::DeleteArray, None),
        ("_ZdlPvSt11align_val_tRKSt9nothrow_t", AllocFn::Delete, None),
        (
            "_ZdaPvSt11align_val_tRKSt9nothrow_t",
            AllocFn::DeleteArray,
            None,
        ),
    ];
    for (name, func, align) in names {
        let hook = hook_named(&hooks, name);
        assert_eq!(hook.vaddr, nm_addr(LIBSTDCXX, true, name), "{name}");
        assert_eq!(hook.spec.func, func, "{name}");
        match hook.spec.kind {
            CallKind::Alloc {
                size_arg: 0,
                align_arg,
                count_arg: None,
                fixed_align: None,
            } => assert_eq!(align_arg, align, "{name}"),
            CallKind::Free { ptr_arg: 0 } => {
                assert!(matches!(func, AllocFn::Delete | AllocFn::DeleteArray))
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(hooks.len(), names.len());
}

#[test]
fn ld_so_debug_state() {
    let ld = ElfModule::from_path(LD_SO).unwrap();
    assert_eq!(
        ld.dl_debug_state(),
        Some(nm_addr(LD_SO, true, "_dl_debug_state"))
    );
    assert_eq!(ld.r_debug(), Some(nm_addr(LD_SO, true, "_r_debug")));
    assert!(ld.hook_symbols(&[]).is_empty());
    let libc = ElfModule::from_path(LIBC).unwrap();
    assert_eq!(libc.dl_debug_state(), None);
}

#[test]
fn build_id_matches_readelf() {
    for path in [LIBC, LD_SO, LIBSTDCXX] {
        let text = run(Command::new("readelf").arg("-n").arg(path));
        let expected = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .unwrap()
            .trim()
            .to_string();
        let elf = ElfModule::from_path(path).unwrap();
        assert_eq!(
            elf.build_id_hex().as_deref(),
            Some(expected.as_str()),
            "{path}"
        );
    }
}

#[test]
fn relro_matches_readelf() {
    for path in [LIBC, LD_SO, LIBSTDCXX] {
        let text = run(Command::new("readelf").args(["-lW", path]));
        // "  GNU_RELRO  0xOFFSET 0xVIRTADDR 0xPHYSADDR 0xFILESIZ 0xMEMSIZ R 0x1"
        let fields: Vec<u64> = text
            .lines()
            .find(|l| l.trim_start().starts_with("GNU_RELRO"))
            .unwrap_or_else(|| panic!("{path} has no GNU_RELRO:\n{text}"))
            .split_whitespace()
            .skip(1)
            .take(5)
            .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).unwrap())
            .collect();
        let elf = ElfModule::from_path(path).unwrap();
        assert_eq!(
            elf.relro_svma(),
            Some(fields[1]..fields[1] + fields[4]),
            "{path}"
        );
    }
}

#[test]
fn bad_input_is_an_error() {
    assert!(ElfModule::from_bytes("empty", Vec::new()).is_err());
    assert!(ElfModule::from_bytes("junk", vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0]).is_err());
    let mut libc = std::fs::read(LIBC).unwrap();
    libc.truncate(200);
    // A truncated file either fails to parse or parses without sections;
    // neither panics.
    if let Ok(m) = ElfModule::from_bytes("truncated", libc) {
        assert!(m.hook_symbols(&[]).is_empty());
    }
    assert!(ElfModule::from_path("/nonexistent/lib.so").is_err());
}

#[test]
fn prefixed_and_ifunc_hooks() {
    let dir = work_dir("prefixed");
    let so = dir.join("libprefixed.so");
    run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(fixtures().join("prefixed_alloc.c")));
    let lib = ElfModule::from_path(&so).unwrap();
    // mimalloc's own names are in the catalogue; jemalloc's prefixed ones are not.
    let names = |hooks: &[HookSymbol]| {
        let mut v: Vec<String> = hooks.iter().map(|h| h.name.clone()).collect();
        v.sort();
        v
    };
    let plain = lib.hook_symbols(&[]);
    assert_eq!(names(&plain), ["mi_calloc", "mi_malloc"]);
    assert_eq!(
        hook_named(&plain, "mi_malloc").aliases,
        Vec::<String>::new()
    );
    let hooks = lib.hook_symbols(&["je_", "mi_"]);
    assert_eq!(names(&hooks), ["je_free", "mi_calloc", "mi_malloc"]);
    // A catalogue name is preferred to a prefixed one at the same address.
    let mi_malloc = hook_named(&hooks, "mi_malloc");
    assert_eq!(mi_malloc.aliases, ["je_malloc"]);
    assert_eq!(mi_malloc.spec.func, AllocFn::Malloc);
    assert!(!mi_malloc.spec.shared);
    assert_eq!(hook_named(&hooks, "mi_calloc").spec.func, AllocFn::Calloc);
    assert_eq!(hook_named(&hooks, "je_free").spec.func, AllocFn::Free);
    // The IFUNC is reported, not hooked.
    assert_eq!(lib.ifunc_hook_names(&["je_", "mi_"]), ["je_realloc"]);
}

/// Debian's jemalloc, tcmalloc and mimalloc, when installed (`.ci/run` installs them).
fn allocator_lib(file: &str, package: &str) -> Option<ElfModule> {
    let path = Path::new("/usr/lib/x86_64-linux-gnu").join(file);
    if !path.exists() {
        eprintln!("SKIPPED: {file} is not installed (apt-get install {package})");
        return None;
    }
    Some(ElfModule::from_path(&path).unwrap())
}

#[test]
fn replacement_allocators_entry_points() {
    if let Some(je) = allocator_lib("libjemalloc.so.2", "libjemalloc2") {
        let hooks = je.hook_symbols(&[]);
        for name in [
            "mallocx", "rallocx", "xallocx", "dallocx", "sdallocx", "malloc",
        ] {
            assert!(!hook_named(&hooks, name).spec.shared, "{name}");
        }
        assert_eq!(
            hook_named(&hooks, "mallocx").spec.kind,
            CallKind::Mallocx {
                size_arg: 0,
                flags_arg: 1
            }
        );
        assert_eq!(
            hook_named(&hooks, "xallocx").spec.kind,
            CallKind::Resize {
                ptr_arg: 0,
                size_arg: 1
            }
        );
        assert_eq!(hook_named(&hooks, "sdallocx").spec.func, AllocFn::Free);
        // Its operators are functions of their own.
        assert_eq!(hook_named(&hooks, "_ZdlPv").spec.func, AllocFn::Delete);
    }
    if let Some(tc) = allocator_lib("libtcmalloc.so.4", "libgoogle-perftools4") {
        let hooks = tc.hook_symbols(&[]);
        // free, operator delete and delete[] are one function: shared.
        let free = hook_named(&hooks, "free");
        assert!(
            free.aliases.iter().any(|a| a == "_ZdlPv"),
            "{:?}",
            free.aliases
        );
        assert!(
            free.aliases.iter().any(|a| a == "_ZdaPv"),
            "{:?}",
            free.aliases
        );
        assert!(free.spec.shared);
        let new = hooks
            .iter()
            .find(|h| h.name == "_Znam" || h.aliases.iter().any(|a| a == "_Znam"))
            .unwrap();
        assert!(new.spec.shared, "new and new[] are one function");
        assert!(!hook_named(&hooks, "malloc").spec.shared);
        assert_eq!(
            hook_named(&hooks, "tc_malloc_skip_new_handler").spec.func,
            AllocFn::Malloc
        );
    }
    if let Some(mi) = allocator_lib("libmimalloc.so.2", "libmimalloc2.0") {
        let hooks = mi.hook_symbols(&[]);
        assert!(hook_named(&hooks, "free").spec.shared);
        // operator delete(void*, size_t) is mi_free_size: a free and a delete.
        let sized = hooks
            .iter()
            .find(|h| h.name == "mi_free_size" || h.aliases.iter().any(|a| a == "mi_free_size"))
            .unwrap();
        assert!(sized.spec.shared, "{sized:?}");
        assert_eq!(
            hook_named(&hooks, "mi_strndup").spec.kind,
            CallKind::Dup { limit_arg: Some(1) }
        );
        assert_eq!(hook_named(&hooks, "mi_valloc").spec.func, AllocFn::Valloc);
        assert_eq!(
            hook_named(&hooks, "mi_heap_calloc").spec.kind,
            CallKind::Alloc {
                size_arg: 2,
                count_arg: Some(1),
                align_arg: None,
                fixed_align: None
            }
        );
        assert!(!hook_named(&hooks, "mi_zalloc").spec.shared);
    }
}

// ---------------------------------------------------------------- stack dumps

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    O0,
    O2,
    Static,
}

struct Dump {
    regs: EntryRegs,
    stack: Vec<u8>,
    maps: Vec<MapEntry>,
    vdso: Option<Vec<u8>>,
    exe: PathBuf,
    /// Runtime addresses of a, b, c, d, main as the fixture printed them.
    funcs: Vec<(String, u64)>,
}

fn build_and_dump(variant: Variant) -> Dump {
    let (name, flags): (&str, &[&str]) = match variant {
        Variant::O0 => ("o0", &["-O0", "-g"]),
        Variant::O2 => ("o2", &["-O2", "-fomit-frame-pointer"]),
        Variant::Static => ("static", &["-O2", "-fomit-frame-pointer", "-static"]),
    };
    let dir = work_dir(name);
    let exe = dir.join("stackdump");
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(fixtures().join("stackdump.c"))
        .arg(fixtures().join("entry_stub.S")));
    let prefix = dir.join("dump");
    run(Command::new(&exe).arg(&prefix));
    let read = |suffix: &str| std::fs::read(format!("{}.{suffix}", prefix.display()));
    let regs_text = String::from_utf8(read("regs").unwrap()).unwrap();
    let mut lines = regs_text.lines();
    let first: Vec<u64> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|w| u64::from_str_radix(w, 16).unwrap())
        .collect();
    let funcs = lines
        .map(|l| {
            let (n, a) = l.split_once(' ').unwrap();
            (n.to_string(), u64::from_str_radix(a, 16).unwrap())
        })
        .collect();
    Dump {
        regs: EntryRegs {
            rip: first[0],
            rsp: first[1],
            rbp: first[2],
        },
        stack: read("stack").unwrap(),
        maps: parse_maps(&String::from_utf8(read("maps").unwrap()).unwrap()),
        vdso: read("vdso").ok(),
        exe,
        funcs,
    }
}

fn dump(variant: Variant) -> &'static Dump {
    static O0: OnceLock<Dump> = OnceLock::new();
    static O2: OnceLock<Dump> = OnceLock::new();
    static STATIC: OnceLock<Dump> = OnceLock::new();
    let cell = match variant {
        Variant::O0 => &O0,
        Variant::O2 => &O2,
        Variant::Static => &STATIC,
    };
    cell.get_or_init(|| build_and_dump(variant))
}

/// The modules of a dump, loaded and registered with an unwinder.
struct Process {
    modules: Vec<(ElfModule, u64, std::ops::Range<u64>)>,
    unwinder: StackUnwinder,
}

impl Process {
    fn load(d: &Dump) -> Self {
        let mut modules = Vec::new();
        let mut unwinder = StackUnwinder::new();
        for m in group_modules(&d.maps) {
            let elf = if m.is_vdso() {
                let Some(bytes) = &d.vdso else { continue };
                ElfModule::from_bytes("[vdso]", bytes.clone()).unwrap()
            } else {
                ElfModule::from_path(m.mappings[0].path_without_deleted()).unwrap()
            };
            let bias = elf.load_bias(&m.mappings).unwrap();
            unwinder.add_module(&elf, bias, m.avma_range());
            modules.push((elf, bias, m.avma_range()));
        }
        Process { modules, unwinder }
    }

    fn module_of(&self, addr: u64) -> Option<&(ElfModule, u64, std::ops::Range<u64>)> {
        self.modules.iter().find(|(_, _, r)| r.contains(&addr))
    }

    /// Symbolize a return address (looking up the call instruction).
    fn symbolize(&self, ra: u64) -> Option<String> {
        let (elf, bias, _) = self.module_of(ra - 1)?;
        elf.symbolize(ra - 1 - bias).map(str::to_string)
    }
}

fn check_unwind(variant: Variant) {
    let d = dump(variant);
    let mut p = Process::load(d);
    let exe = p
        .modules
        .iter()
        .find(|(e, _, _)| Path::new(e.name()) == d.exe)
        .unwrap();
    assert_eq!(exe.0.is_pie(), variant != Variant::Static);
    if variant == Variant::Static {
        assert_eq!(exe.1, 0, "ET_EXEC is not relocated");
    }
    // The executable's symbols plus its bias give the addresses the fixture
    // printed.
    for (name, addr) in &d.funcs {
        assert_eq!(
            exe.0.symbol_address(name).map(|v| v + exe.1),
            Some(*addr),
            "{name}"
        );
    }
    assert_eq!(exe.0.symbolize(d.regs.rip - exe.1), Some("fake_alloc"));

    let mut out = Vec::new();
    p.unwinder
        .unwind(d.regs, &d.stack, d.regs.rsp, 64, &mut out);
    let names: Vec<Option<String>> = out.iter().map(|&ra| p.symbolize(ra)).collect();
    eprintln!("{variant:?}: {:x?} {names:?}", out);
    let expect = ["d", "c", "b", "a", "main"];
    assert!(out.len() > expect.len(), "{names:?}");
    for (i, e) in expect.iter().enumerate() {
        assert_eq!(names[i].as_deref(), Some(*e), "frame {i}: {names:?}");
    }
    // Then the C library's start code, and the unwind ends by itself.
    let after_main = out[expect.len()];
    let (m, _, _) = p.module_of(after_main).unwrap();
    if variant == Variant::Static {
        assert_eq!(
            names[expect.len()].as_deref(),
            Some("__libc_start_call_main")
        );
    } else {
        assert!(m.name().ends_with("libc.so.6"), "{}", m.name());
    }
    assert!(out.len() < 64, "unwind did not stop: {names:?}");

    // The first return address is right after d's call to fake_alloc.
    let (elf, bias, _) = p.module_of(out[0]).unwrap();
    let call = elf.bytes_at_vaddr(out[0] - bias - 5, 5).unwrap();
    assert_eq!(call[0], 0xe8, "call rel32 before the return address");
}

#[test]
fn unwind_o0() {
    check_unwind(Variant::O0);
}

#[test]
fn unwind_o2_omit_frame_pointer() {
    check_unwind(Variant::O2);
}

#[test]
fn unwind_static() {
    check_unwind(Variant::Static);
}

#[test]
fn unwind_short_copy_and_read_more() {
    let d = dump(Variant::O2);
    let mut p = Process::load(d);
    let mut full = Vec::new();
    p.unwinder
        .unwind(d.regs, &d.stack, d.regs.rsp, 64, &mut full);

    // Only the return address is copied: one frame, then a read outside the
    // copy ends the unwind.
    let mut out = Vec::new();
    p.unwinder
        .unwind(d.regs, &d.stack[..8], d.regs.rsp, 64, &mut out);
    assert_eq!(out, full[..1]);

    // With a reader for the rest, the full stack again.
    let mut reads = 0;
    let stack = &d.stack;
    let start = d.regs.rsp;
    let mut read_more = |addr: u64| {
        reads += 1;
        let off = usize::try_from(addr.checked_sub(start)?).ok()?;
        let b = stack.get(off..off + 8)?;
        Some(u64::from_le_bytes(b.try_into().unwrap()))
    };
    p.unwinder
        .unwind_with(d.regs, &d.stack[..8], start, 64, &mut out, &mut read_more);
    assert_eq!(out, full);
    assert!(reads > 0);

    // max_depth is respected.
    p.unwinder.unwind(d.regs, &d.stack, start, 3, &mut out);
    assert_eq!(out, full[..3]);
    p.unwinder.unwind(d.regs, &d.stack, start, 0, &mut out);
    assert!(out.is_empty());

    // An address outside every module falls back to the frame pointer chain;
    // garbage registers end without panicking.
    let bogus = EntryRegs {
        rip: 0x10,
        rsp: start,
        rbp: 0,
    };
    p.unwinder.unwind(bogus, &d.stack, start, 64, &mut out);
    assert!(out.len() <= 64);

    // Removing the executable's module: its frames can't be unwound by CFI.
    let exe_start = p
        .modules
        .iter()
        .find(|(e, _, _)| Path::new(e.name()) == d.exe)
        .unwrap()
        .2
        .start;
    p.unwinder.remove_module(exe_start);
    p.unwinder.unwind(d.regs, &d.stack, start, 64, &mut out);
    assert_ne!(out, full);
}

#[test]
fn unwind_timing() {
    for variant in [Variant::O0, Variant::O2, Variant::Static] {
        let d = dump(variant);
        let mut p = Process::load(d);
        let mut out = Vec::with_capacity(64);
        p.unwinder
            .unwind(d.regs, &d.stack, d.regs.rsp, 64, &mut out);
        let frames = out.len();
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n {
            p.unwinder
                .unwind(d.regs, &d.stack, d.regs.rsp, 64, &mut out);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(out.len(), frames);
        eprintln!(
            "unwind {variant:?}: {frames} frames, {ns:.0} ns/unwind ({:.1} ns/frame, warm cache)",
            ns / frames as f64
        );
    }
}

#[test]
fn vdso_from_memory_image() {
    let d = dump(Variant::O2);
    let bytes = d.vdso.clone().expect("fixture dumped [vdso]");
    let vdso = ElfModule::from_bytes("[vdso]", bytes).unwrap();
    assert!(vdso.is_pie());
    assert!(vdso.eh_frame().is_some() && vdso.eh_frame_hdr().is_some());
    let module = group_modules(&d.maps)
        .into_iter()
        .find(|m| m.is_vdso())
        .unwrap();
    let bias = vdso.load_bias(&module.mappings).unwrap();
    assert_eq!(
        bias,
        module.mappings[0].start - (vdso.segments()[0].vaddr & !0xfff)
    );
    let gettime = vdso
        .symbol_address("__vdso_clock_gettime")
        .expect("__vdso_clock_gettime");
    assert!(module.exec_ranges().any(|r| r.contains(&(gettime + bias))));
    let segs = vdso.format_segments(bias);
    assert_eq!(segs[0].start, bias + vdso.segments()[0].vaddr);
    assert!(segs.iter().any(|s| s.prot & 4 != 0));
}

#[test]
fn load_bias_and_format_segments() {
    let d = dump(Variant::O0);
    let modules = group_modules(&d.maps);
    let libc_map = modules
        .iter()
        .find(|m| m.path.ends_with("/libc.so.6"))
        .unwrap();
    let libc = ElfModule::from_path(&libc_map.path).unwrap();
    let bias = libc.load_bias(&libc_map.mappings).unwrap();
    assert_eq!(bias % 4096, 0);
    // Every PT_LOAD segment lies in the module's mappings with the right
    // permissions for its code.
    let segs = libc.format_segments(bias);
    assert_eq!(segs.len(), libc.segments().len());
    for s in &segs {
        let m = libc_map
            .mappings
            .iter()
            .find(|m| m.contains(s.start))
            .unwrap_or_else(|| panic!("segment {s:?} not mapped"));
        assert_eq!(
            m.offset & !0xfff,
            (s.file_offset & !0xfff) + (s.start & !0xfff) - m.start
        );
        if s.prot & 4 != 0 {
            assert!(m.exec);
        }
    }
    // malloc's runtime address is in an executable mapping.
    let malloc = hook_named(&libc.hook_symbols(&[]), "malloc").vaddr + bias;
    assert!(libc_map.exec_ranges().any(|r| r.contains(&malloc)));
}

// ---------------------------------------------------------------- relocate

fn decode_all(bytes: &[u8], ip: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        out.push(decoder.decode());
    }
    out
}

/// Every absolute address the trampoline can transfer control to outside
/// itself: direct branch targets and `jmp [rip+x]` through a qword stored in
/// the trampoline.
fn exits(bytes: &[u8], dest: u64, instrs: &[Instruction]) -> BTreeSet<u64> {
    let inside = dest..dest + bytes.len() as u64;
    let mut out = BTreeSet::new();
    for i in instrs {
        match i.flow_control() {
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
                if i.op0_kind() == OpKind::NearBranch64
                    && !inside.contains(&i.near_branch_target()) =>
            {
                out.insert(i.near_branch_target());
            }
            FlowControl::IndirectBranch if i.is_ip_rel_memory_operand() => {
                let at = i.ip_rel_memory_address();
                assert!(inside.contains(&at), "pointer outside trampoline");
                let off = (at - dest) as usize;
                out.insert(u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap()));
            }
            _ => {}
        }
    }
    out
}

/// Check a displaced copy of the instruction in `code` at `entry`.
fn check_displaced(code: &[u8], entry: u64, dest: u64) -> (Instruction, Vec<Instruction>) {
    let orig = decode_all(code, entry)[0];
    let d = displaced_copy(code, entry, dest).unwrap();
    assert_eq!(d.displaced_len, orig.len());
    assert_eq!(instruction_len(code, entry), Some(orig.len()));
    let resume = entry + orig.len() as u64;
    let out = decode_all(&d.bytes, dest);
    let first = out[0];
    assert!(!first.is_invalid());
    match orig.flow_control() {
        FlowControl::Next => {
            // Same instruction, same absolute memory operand.
            assert_eq!(first.code(), orig.code());
            assert_eq!(first.op_count(), orig.op_count());
            if orig.is_ip_rel_memory_operand() {
                assert!(first.is_ip_rel_memory_operand());
                assert_eq!(first.ip_rel_memory_address(), orig.ip_rel_memory_address());
            } else {
                assert_eq!(&d.bytes[..orig.len()], &code[..orig.len()]);
            }
            assert_eq!(first.immediate64(), orig.immediate64());
            // Followed directly by the jump back.
            let next = out[1];
            assert!(matches!(
                next.flow_control(),
                FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
            ));
            assert_eq!(exits(&d.bytes, dest, &out[1..2]), BTreeSet::from([resume]));
        }
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
            let mut expected = BTreeSet::from([orig.near_branch_target()]);
            if orig.flow_control() == FlowControl::ConditionalBranch {
                expected.insert(resume);
            }
            // The (possibly rewritten) branch goes to the original target,
            // and falling through goes back to resume.
            let mut e = exits(&d.bytes, dest, &out);
            if orig.flow_control() == FlowControl::UnconditionalBranch {
                e.remove(&resume);
            }
            assert_eq!(e, expected);
        }
        FlowControl::Call => {
            // push lo32 ; [mov dword [rsp+4], hi32] ; jmp target
            assert_eq!(out[0].code(), Code::Pushq_imm32);
            let mut ret = out[0].immediate32to64() as u64;
            let mut k = 1;
            if out[1].code() == Code::Mov_rm32_imm32 {
                ret = (ret & 0xffff_ffff) | (u64::from(out[1].immediate32()) << 32);
                k = 2;
            }
            assert_eq!(ret, resume);
            assert!(matches!(
                out[k].flow_control(),
                FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
            ));
            assert_eq!(
                exits(&d.bytes, dest, &out),
                BTreeSet::from([orig.near_branch_target()])
            );
        }
        FlowControl::IndirectBranch => {
            // jmp [rip+x]: the same absolute slot.
            assert_eq!(first.code(), orig.code());
            assert_eq!(first.ip_rel_memory_address(), orig.ip_rel_memory_address());
        }
        FlowControl::Return => assert_eq!(&d.bytes[..orig.len()], &code[..orig.len()]),
        other => panic!("unexpected {other:?}"),
    }
    (orig, out)
}

#[test]
fn relocate_real_allocator_entries() {
    let libc = ElfModule::from_path(LIBC).unwrap();
    let cxx = ElfModule::from_path(LIBSTDCXX).unwrap();
    let bias = 0x7f12_3400_0000u64;
    let mut rip_relative = 0;
    for (elf, name) in [
        (&libc, "malloc"),
        (&libc, "free"),
        (&libc, "calloc"),
        (&libc, "realloc"),
        (&libc, "reallocarray"),
        (&libc, "posix_memalign"),
        (&libc, "memalign"),
        (&libc, "aligned_alloc"),
        (&libc, "valloc"),
        (&libc, "pvalloc"),
        (&cxx, "_Znwm"),
        (&cxx, "_ZdlPv"),
        (&cxx, "_Znam"),
        (&cxx, "_ZdaPv"),
    ] {
        let vaddr = elf.symbol_address(name).unwrap();
        let code = elf.bytes_at_vaddr(vaddr, 16).unwrap();
        let entry = vaddr + bias;
        for dest in [entry + (1 << 30), entry - (1 << 30), entry + 64] {
            let (orig, _) = check_displaced(code, entry, dest);
            if dest == entry + (1 << 30) {
                eprintln!(
                    "{name}: {:?} ({} bytes){}",
                    orig.code(),
                    orig.len(),
                    if orig.is_ip_rel_memory_operand() {
                        " rip-relative"
                    } else {
                        ""
                    }
                );
                if orig.is_ip_rel_memory_operand() {
                    rip_relative += 1;
                }
            }
        }
        // Far away: the jump back becomes an absolute jump, or a
        // RIP-relative operand cannot reach.
        let far = entry + (3 << 30);
        match displaced_copy(code, entry, far) {
            Ok(_) => {
                check_displaced(code, entry, far);
            }
            Err(RelocateError::OutOfRange { target, dest }) => {
                assert_eq!(dest, far);
                assert_eq!(target, decode_all(code, entry)[0].ip_rel_memory_address());
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    // glibc 2.36's posix_memalign, memalign, valloc, pvalloc start with
    // `cmp byte [rip+x], 0`.
    assert!(rip_relative >= 1);
}

#[test]
fn relocate_synthetic() {
    let entry = 0x5555_0000_1000u64;
    let near = entry + (1 << 30);
    let far = entry + (8 << 30);
    let pad = |b: &[u8]| {
        let mut v = b.to_vec();
        v.resize(16, 0x90);
        v
    };
    let cases: &[(&str, &[u8])] = &[
        ("endbr64", &[0xf3, 0x0f, 0x1e, 0xfa]),
        ("push rbp", &[0x55]),
        ("mov rbp,rsp", &[0x48, 0x89, 0xe5]),
        ("sub rsp,0x18", &[0x48, 0x83, 0xec, 0x18]),
        ("test rdi,rdi", &[0x48, 0x85, 0xff]),
        ("je rel8", &[0x74, 0x10]),
        ("jne rel32", &[0x0f, 0x85, 0x00, 0x01, 0x00, 0x00]),
        ("jmp rel8", &[0xeb, 0x20]),
        ("jmp rel32", &[0xe9, 0x00, 0x10, 0x00, 0x00]),
        ("call rel32", &[0xe8, 0x00, 0x20, 0x00, 0x00]),
        (
            "lea rax,[rip+0x100]",
            &[0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00],
        ),
        (
            "mov rax,[rip+0x100]",
            &[0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00],
        ),
        (
            "cmp byte [rip+0x100],0",
            &[0x80, 0x3d, 0x00, 0x01, 0x00, 0x00, 0x00],
        ),
        ("jrcxz rel8", &[0xe3, 0x05]),
        ("jmp [rip+0x100]", &[0xff, 0x25, 0x00, 0x01, 0x00, 0x00]),
        ("ret", &[0xc3]),
    ];
    for (name, bytes) in cases {
        let code = pad(bytes);
        for dest in [near, far] {
            let result = displaced_copy(&code, entry, dest);
            let orig = decode_all(&code, entry)[0];
            if dest == far && orig.is_ip_rel_memory_operand() {
                assert!(
                    matches!(result, Err(RelocateError::OutOfRange { .. })),
                    "{name}: {result:?}"
                );
                continue;
            }
            if orig.code() == Code::Jrcxz_rel8_64 {
                // Rewritten by the block encoder; check only the exits.
                let d = result.unwrap();
                let out = decode_all(&d.bytes, dest);
                let e = exits(&d.bytes, dest, &out);
                assert_eq!(
                    e,
                    BTreeSet::from([orig.near_branch_target(), entry + 2]),
                    "{name}"
                );
                continue;
            }
            let (_, out) = check_displaced(&code, entry, dest);
            if *name == "call rel32" {
                // The return address pushed is the original one, not one in
                // the trampoline.
                assert_eq!(out[0].code(), Code::Pushq_imm32);
            }
        }
    }
    // A call whose return address fits a sign-extended imm32: no mov.
    let low = 0x40_1000u64;
    let d = displaced_copy(&pad(&[0xe8, 0, 1, 0, 0]), low, low + 0x1000).unwrap();
    let out = decode_all(&d.bytes, low + 0x1000);
    assert_eq!(out[0].code(), Code::Pushq_imm32);
    assert_eq!(out[0].immediate32to64() as u64, low + 5);
    assert_eq!(out[1].code(), Code::Jmp_rel32_64);
    assert_eq!(out[1].near_branch_target(), low + 5 + 0x100);
    // Indirect call through the GOT: emulated as push + jmp [rip+x].
    let code = pad(&[0xff, 0x15, 0x00, 0x01, 0x00, 0x00]);
    let d = displaced_copy(&code, entry, near).unwrap();
    let out = decode_all(&d.bytes, near);
    let jmp = out.iter().find(|i| i.code() == Code::Jmp_rm64).unwrap();
    assert_eq!(jmp.ip_rel_memory_address(), entry + 6 + 0x100);

    // Errors.
    assert!(matches!(
        displaced_copy(&pad(&[0xcc]), entry, near),
        Err(RelocateError::NotDisplaceable { .. })
    ));
    assert!(matches!(
        displaced_copy(&[0x06, 0, 0, 0], entry, near),
        Err(RelocateError::Undecodable { .. })
    ));
    assert!(matches!(
        displaced_copy(&[0xe8, 0x00], entry, near),
        Err(RelocateError::Undecodable { .. })
    ));
    assert!(matches!(
        displaced_copy(&[], entry, near),
        Err(RelocateError::Undecodable { .. })
    ));
    assert_eq!(instruction_len(&[0x48, 0x89, 0xe5], 0), Some(3));
    assert_eq!(instruction_len(&[0x48, 0x89], 0), None);
}

#[test]
fn types_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<ElfModule>();
    send_sync::<heaptape_recorder::low_level::MappedModule>();
    send::<StackUnwinder>();
    send_sync::<heaptape_recorder::low_level::Displaced>();
}

#[test]
fn no_section_headers_and_no_cfi() {
    let d = dump(Variant::O0);
    let mut with_cfi = Process::load(d);
    let mut expected = Vec::new();
    with_cfi
        .unwinder
        .unwind(d.regs, &d.stack, d.regs.rsp, 64, &mut expected);
    let exe = with_cfi
        .modules
        .iter()
        .find(|(e, _, _)| Path::new(e.name()) == d.exe)
        .unwrap();
    let (bias, range) = (exe.1, exe.2.clone());
    let orig = ElfModule::from_path(&d.exe).unwrap();

    // Drop the section headers, as `sstrip` does: PT_GNU_EH_FRAME still
    // locates .eh_frame_hdr, which points at .eh_frame, so the unwind is the
    // same.
    let mut bytes = std::fs::read(&d.exe).unwrap();
    bytes[0x28..0x30].fill(0); // e_shoff
    bytes[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    let sstripped = ElfModule::from_bytes("sstripped", bytes.clone()).unwrap();
    assert!(sstripped.text().is_none());
    assert_eq!(
        sstripped.eh_frame_hdr().map(|r| r.svma.clone()),
        orig.eh_frame_hdr().map(|r| r.svma.clone())
    );
    assert_eq!(
        sstripped.eh_frame().map(|r| r.svma.start),
        orig.eh_frame().map(|r| r.svma.start)
    );
    let mut p = Process::load(d);
    p.unwinder.remove_module(range.start);
    p.unwinder.add_module(&sstripped, bias, range.clone());
    let mut out = Vec::new();
    p.unwinder
        .unwind(d.regs, &d.stack, d.regs.rsp, 64, &mut out);
    assert_eq!(out, expected);

    // Also make PT_GNU_EH_FRAME PT_NULL: no CFI at all. The -O0 build keeps
    // frame pointers, so the rbp chain gives the same frames.
    let le16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (le16(&bytes, 0x36), le16(&bytes, 0x38));
    let mut patched = 0;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if bytes[at..at + 4] == 0x6474_e550u32.to_le_bytes() {
            bytes[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 1);
    let no_cfi = ElfModule::from_bytes("no-cfi", bytes).unwrap();
    assert!(no_cfi.eh_frame().is_none() && no_cfi.eh_frame_hdr().is_none());
    assert!(no_cfi.debug_frame().is_none());
    let mut p = Process::load(d);
    p.unwinder.remove_module(range.start);
    p.unwinder.add_module(&no_cfi, bias, range);
    p.unwinder
        .unwind(d.regs, &d.stack, d.regs.rsp, 64, &mut out);
    // d, c, b, a, main through the rbp chain, then libc's CFI again.
    assert!(out.len() >= 6, "{out:x?}");
    assert_eq!(out[..6], expected[..6]);
}

/// A thread's outer frames are taken from its last unwind only while every stack word
/// that unwind read holds the same value: with any single word of the copy changed, the
/// result is a fresh unwind's, and with none changed the frames are reused.
#[test]
fn a_threads_last_unwind_is_reused_only_while_its_stack_words_hold() {
    for variant in [Variant::O0, Variant::O2, Variant::Static] {
        let d = dump(variant);
        let mut p = Process::load(d);
        let start = d.regs.rsp;
        let mut none = |_: u64| None;
        let mut full = Vec::new();
        p.unwinder.unwind(d.regs, &d.stack, start, 64, &mut full);
        assert!(full.len() > 5, "{variant:?}: {full:x?}");

        let mut out = Vec::new();
        p.unwinder
            .unwind_thread(7, d.regs, &d.stack, start, 64, &mut out, &mut none);
        assert_eq!(out, full, "{variant:?}: first unwind of the thread");
        assert_eq!(
            p.unwinder.reused_frames(),
            0,
            "{variant:?}: nothing to reuse yet"
        );
        p.unwinder
            .unwind_thread(7, d.regs, &d.stack, start, 64, &mut out, &mut none);
        assert_eq!(out, full, "{variant:?}: same stack again");
        assert_eq!(
            p.unwinder.reused_frames(),
            full.len() as u64 - 1,
            "{variant:?}: every frame above the first is the last unwind's"
        );

        // A stack cut at max_depth does not end the next, deeper one early.
        p.unwinder
            .unwind_thread(7, d.regs, &d.stack, start, 3, &mut out, &mut none);
        assert_eq!(out, full[..3], "{variant:?}");
        p.unwinder
            .unwind_thread(7, d.regs, &d.stack, start, 64, &mut out, &mut none);
        assert_eq!(out, full, "{variant:?}: after a cut unwind");

        // Every word of the copy changed in turn: always what a fresh unwind gives.
        let mut changed_results = 0;
        for off in (0..d.stack.len() - 7).step_by(8) {
            let mut stack = d.stack.clone();
            for b in &mut stack[off..off + 8] {
                *b ^= 0x10;
            }
            let mut fresh = Vec::new();
            p.unwinder.unwind(d.regs, &stack, start, 64, &mut fresh);
            p.unwinder
                .unwind_thread(7, d.regs, &stack, start, 64, &mut out, &mut none);
            assert_eq!(out, fresh, "{variant:?}: word at +{off:#x} changed");
            changed_results += usize::from(fresh != full);
            p.unwinder
                .unwind_thread(7, d.regs, &d.stack, start, 64, &mut out, &mut none);
            assert_eq!(out, full, "{variant:?}: word at +{off:#x} restored");
        }
        assert!(
            changed_results >= full.len() - 1,
            "{variant:?}: each return address word changes the stack"
        );

        // Threads do not share memos, and a module change makes every memo stale.
        let reused = p.unwinder.reused_frames();
        p.unwinder
            .unwind_thread(8, d.regs, &d.stack, start, 64, &mut out, &mut none);
        assert_eq!(out, full);
        assert_eq!(p.unwinder.reused_frames(), reused, "{variant:?}: thread 8");
        let (elf, bias, range) = &p.modules[0];
        p.unwinder.remove_module(range.start);
        p.unwinder.add_module(elf, *bias, range.clone());
        p.unwinder
            .unwind_thread(7, d.regs, &d.stack, start, 64, &mut out, &mut none);
        assert_eq!(out, full);
        assert_eq!(
            p.unwinder.reused_frames(),
            reused,
            "{variant:?}: modules changed"
        );
    }
}
