use super::*;

/// A frame named `function` in `module`.
fn f(function: &str, module: &str) -> Frame {
    Frame {
        function: Some(function.into()),
        module: Some(module.into()),
        ..Frame::default()
    }
}

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const LD: &str = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
const APP: &str = "/home/u/app";

/// `leak_two` called by `helper` called by `main`, in the program.
fn stack() -> Vec<Frame> {
    vec![f("leak_two", APP), f("helper", APP), f("main", APP)]
}

fn parse(text: &str) -> Suppressions {
    Suppressions::parse(text, "t.supp").unwrap()
}

fn error(text: &str) -> String {
    Suppressions::parse(text, "t.supp").unwrap_err().to_string()
}

const DEF: LeakKind = LeakKind::DefinitelyLost;

#[test]
fn valgrind_frames_match_from_the_allocator() {
    let s = parse(
        "# a comment\n\
         {\n   two\n   Memcheck:Leak\n   match-leak-kinds: definite,possible\n   \
         fun:malloc\n   fun:leak_*\n}\n",
    );
    assert_eq!(s.len(), 1);
    assert_eq!(s.get(0).unwrap().name, "two");
    assert_eq!(s.get(0).unwrap().origin, "t.supp:2");
    assert_eq!(s.find(DEF, AllocFn::Malloc, &stack()), Some(0));
    assert_eq!(
        s.find(LeakKind::PossiblyLost, AllocFn::Malloc, &stack()),
        Some(0)
    );
    // Another class, another allocator, another innermost frame: no match.
    assert_eq!(
        s.find(LeakKind::StillReachable, AllocFn::Malloc, &stack()),
        None
    );
    assert_eq!(
        s.find(LeakKind::IndirectlyLost, AllocFn::Malloc, &stack()),
        None
    );
    assert_eq!(s.find(DEF, AllocFn::Calloc, &stack()), None);
    assert_eq!(s.find(DEF, AllocFn::Malloc, &stack()[1..]), None);
}

#[test]
fn dots_obj_src_and_mangled_names() {
    let s = parse(
        "{\n x\n Memcheck:Leak\n fun:*alloc\n ...\n fun:main\n}\n\
         {\n y\n Memcheck:Leak\n fun:_Znwm\n obj:*/app\n}\n\
         {\n z\n Memcheck:Leak\n fun:*\n src:app.c:12\n}\n",
    );
    assert_eq!(s.find(DEF, AllocFn::Calloc, &stack()), Some(0));
    // `...` matches no frame too.
    assert_eq!(s.find(DEF, AllocFn::Realloc, &stack()[2..]), Some(0));
    // The pattern may not run past the stack.
    assert_eq!(s.find(DEF, AllocFn::Calloc, &stack()[..2]), None);
    // operator new is `_Znwm` to valgrind.
    assert_eq!(s.find(DEF, AllocFn::New, &stack()[..1]), Some(1));
    let mut at_line = stack();
    at_line[0].file = Some("/src/app.c".into());
    at_line[0].line = Some(12);
    assert_eq!(s.find(DEF, AllocFn::PosixMemalign, &at_line[..1]), Some(2));
    at_line[0].line = Some(13);
    assert_eq!(s.find(DEF, AllocFn::PosixMemalign, &at_line[..1]), None);
    // A C++ frame matches by its mangled name as well as its demangled one.
    let cxx = Frame {
        function: Some("ns::make(int)".into()),
        mangled: Some("_ZN2ns4makeEi".into()),
        ..Frame::default()
    };
    let both = parse(
        "{\n m\n Memcheck:Leak\n fun:malloc\n fun:_ZN2ns4makeEi\n}\n\
         {\n d\n Memcheck:Leak\n fun:calloc\n fun:ns::make\\(int\\)\n}\n",
    );
    assert_eq!(
        both.find(DEF, AllocFn::Malloc, std::slice::from_ref(&cxx)),
        Some(0)
    );
    assert_eq!(both.find(DEF, AllocFn::Calloc, &[cxx]), Some(1));
    // An unknown function is `???`.
    let unknown = parse("{\n u\n Memcheck:Leak\n fun:malloc\n fun:???\n}\n");
    assert_eq!(
        unknown.find(DEF, AllocFn::Malloc, &[Frame::default()]),
        Some(0)
    );
}

#[test]
fn lsan_lines_match_any_frame() {
    let s = parse("# LSan\nleak:leak_two\nrace:whatever\n\nleak:libfoo.so\n");
    assert_eq!(s.len(), 2);
    assert_eq!(s.find(DEF, AllocFn::Malloc, &stack()), Some(0));
    assert_eq!(
        s.find(LeakKind::StillReachable, AllocFn::Malloc, &stack()),
        Some(0)
    );
    let other = vec![f("leak_one", APP), f("main", APP)];
    assert_eq!(s.find(DEF, AllocFn::Malloc, &other), None);
    let in_lib = vec![f("make", "/opt/lib/libfoo.so.1"), f("main", APP)];
    assert_eq!(s.find(DEF, AllocFn::Malloc, &in_lib), Some(1));
}

#[test]
fn other_tools_and_kinds_are_skipped() {
    let s = parse(
        "{\n cond\n Memcheck:Cond\n fun:foo\n}\n\
         {\n param\n Memcheck:Param\n write(buf)\n fun:write\n}\n\
         {\n race\n Helgrind:Race\n fun:foo\n}\n\
         {\n leak\n Memcheck,Addrcheck:Leak\n fun:malloc\n}\n",
    );
    assert_eq!(s.len(), 1);
    assert_eq!(s.get(0).unwrap().name, "leak");
}

#[test]
fn bad_files_name_the_line() {
    assert_eq!(
        error("{\n x\n Memcheck:Leak\n fun:malloc\n"),
        "t.supp:1: this suppression has no closing `}`"
    );
    assert!(error("\n{\n x\n Memcheck:Leak\n bogus\n}\n").starts_with("t.supp:5: expected"));
    assert!(error("{\n x\n Memcheck:Leak\n}\n").contains("no frame line"));
    assert!(
        error("{\n x\n Memcheck:Leak\n match-leak-kinds: lost\n fun:m\n}\n")
            .contains("unknown leak kind `lost`")
    );
    assert!(error("fun:malloc\n").contains("inside a valgrind suppression"));
    assert!(error("hello\n").starts_with("t.supp:1: `hello` is not a suppression"));
    assert!(error("{\n x\n NoColon\n fun:m\n}\n").contains("TOOL:KIND"));
}

#[test]
fn generated_suppressions_parse_and_match_their_record() {
    let mut frames = stack();
    frames[0].mangled = Some("_Z8leak_twov".into());
    frames.push(f("__libc_start_call_main", LIBC));
    let text = generate(LeakKind::IndirectlyLost, AllocFn::NewArray, &frames);
    assert_eq!(
        text,
        "{\n   <insert_a_suppression_name_here>\n   Memcheck:Leak\n   \
         match-leak-kinds: indirect\n   fun:_Znam\n   fun:_Z8leak_twov\n   \
         fun:helper\n   fun:main\n}\n"
    );
    let s = parse(&text);
    assert_eq!(
        s.find(LeakKind::IndirectlyLost, AllocFn::NewArray, &frames),
        Some(0)
    );
    assert_eq!(s.find(DEF, AllocFn::NewArray, &frames), None);
    // Frames without a function are their module; names are escaped.
    let odd = vec![
        Frame {
            module: Some(LD.into()),
            ..Frame::default()
        },
        f("f(char*)", APP),
        Frame::default(),
    ];
    let text = generate(DEF, AllocFn::Malloc, &odd);
    assert!(text.contains(&format!("   obj:{LD}\n   fun:f(char\\*)\n   obj:*\n")));
    assert_eq!(parse(&text).find(DEF, AllocFn::Malloc, &odd), Some(0));
}

#[test]
fn generated_suppressions_stop_at_24_frames() {
    let deep: Vec<Frame> = (0..40).map(|i| f(&format!("f{i}"), APP)).collect();
    let text = generate(DEF, AllocFn::Malloc, &deep);
    assert_eq!(text.lines().filter(|l| l.contains("fun:")).count(), 24);
    assert_eq!(parse(&text).find(DEF, AllocFn::Malloc, &deep), Some(0));
}

#[test]
fn the_default_list_hides_the_runtimes_blocks_only() {
    let d = Suppressions::defaults();
    let name = |i: Option<usize>| i.map(|i| d.get(i).unwrap().name.clone());
    // A joined thread's DTV (glibc's internal name from DWARF).
    let dtv = vec![
        f("calloc", LD),
        f("allocate_dtv", LD),
        f("__GI__dl_allocate_tls", LD),
        f("allocate_stack", LIBC),
        f("main", APP),
    ];
    assert_eq!(
        name(d.find(LeakKind::PossiblyLost, AllocFn::Calloc, &dtv)),
        Some("glibc-thread-dtv".into())
    );
    // stdout's buffer, with and without libc's debug info.
    for doalloc in ["__GI__IO_file_doallocate", "_IO_file_doallocate"] {
        let buffer = vec![f(doalloc, LIBC), f("puts", LIBC), f("main", APP)];
        assert_eq!(
            name(d.find(LeakKind::StillReachable, AllocFn::Malloc, &buffer)),
            Some("glibc-stdio-buffer".into())
        );
    }
    // libstdc++'s pool without symbols: an unnamed frame in the library, then the
    // loader's call_init.
    let pool = vec![
        Frame {
            module: Some("/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30".into()),
            ..Frame::default()
        },
        f("call_init", LD),
        f("_dl_init", LD),
    ];
    assert_eq!(
        name(d.find(LeakKind::StillReachable, AllocFn::Malloc, &pool)),
        Some("libstdc++-emergency-eh-pool-unnamed".into())
    );
    // A static executable's loader start-up.
    let stat = vec![
        f("_dl_find_object_init", APP),
        f("_dl_non_dynamic_init", APP),
        f("__libc_init_first", APP),
    ];
    assert_eq!(
        name(d.find(DEF, AllocFn::Malloc, &stat)),
        Some("static-glibc-loader-init".into())
    );
    // The program's own blocks, even under a loader frame (a library constructor run
    // by _dl_init) or a stdio call, are not hidden.
    assert_eq!(d.find(DEF, AllocFn::Malloc, &stack()), None);
    let ctor = vec![f("plugin_init", "/opt/libplugin.so"), f("call_init", LD)];
    assert_eq!(d.find(DEF, AllocFn::Malloc, &ctor), None);
    let fopen = vec![f("__fopen_internal", LIBC), f("main", APP)];
    assert_eq!(
        d.find(LeakKind::StillReachable, AllocFn::Malloc, &fopen),
        None
    );
}
