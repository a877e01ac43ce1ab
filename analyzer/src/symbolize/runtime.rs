//! Which frames belong to the allocator and the C and C++ runtimes rather than to the
//! program: where a call-site key starts counting frames (`heaptape diff
//! --call-site-depth N` keys a site by its first N frames *outside* these, so that on
//! a C++ program they reach the program's own functions instead of
//! `std::__new_allocator<T>::allocate`, `std::vector<T>::_M_realloc_insert` and the
//! like).
//!
//! A frame is the runtime's when
//!
//! * its module is the C library, the dynamic loader, the C++ runtime (`libstdc++`,
//!   `libc++`, `libc++abi`, `libgcc_s`) or an allocator library (`libjemalloc`,
//!   `libtcmalloc`, `libmimalloc`), or
//! * its source file is a C++ standard library header (a path with `/include/c++/`:
//!   templates instantiated, or inlined, into the program), or
//! * its function (the qualified name, without return type or parameters) is in the
//!   `std`, `__gnu_cxx`, `__cxxabiv1` or `__gnu_debug` namespaces, is an `operator
//!   new`/`operator delete`, a `__cxa_` function, or one of the allocator's entry points
//!   (`malloc`, `calloc`, ...: a static executable has no C library module).

use super::Frame;

/// Namespaces of the C++ standard library's internals.
const NAMESPACES: &[&str] = &["std::", "__gnu_cxx::", "__cxxabiv1::", "__gnu_debug::"];

/// File names (prefixes) of the runtimes' and allocators' shared objects.
const LIBRARIES: &[&str] = &[
    "libc.so",
    "libc-",
    "ld-linux",
    "libstdc++.so",
    "libc++.so",
    "libc++abi.so",
    "libgcc_s.so",
    "libjemalloc",
    "libtcmalloc",
    "libmimalloc",
];

/// The allocator's entry points, by name.
const ALLOCATOR: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
];

/// Whether `f` is a frame of the allocator or of the C/C++ runtimes (see the module
/// docs).
pub fn is_runtime_frame(f: &Frame) -> bool {
    if let Some(m) = &f.module {
        let name = m.rsplit('/').next().unwrap_or(m);
        if LIBRARIES.iter().any(|l| name.starts_with(l)) {
            return true;
        }
    }
    if f.file
        .as_deref()
        .is_some_and(|p| p.contains("/include/c++/"))
    {
        return true;
    }
    f.function.as_deref().is_some_and(is_runtime_function)
}

/// Whether a demangled function name names the runtime (see the module docs).
fn is_runtime_function(name: &str) -> bool {
    if name.starts_with("operator new")
        || name.starts_with("operator delete")
        || name.starts_with("__cxa_")
    {
        return true;
    }
    let q = qualified_name(name);
    ALLOCATOR.contains(&q) || NAMESPACES.iter().any(|ns| q.starts_with(ns))
}

/// The qualified name in a demangled function name: without its parameter list (from
/// the first `(` outside template arguments and parentheses that does not start the
/// name) and without the return type a template function's name starts with (up to the
/// last space outside them before the parameters).
fn qualified_name(name: &str) -> &str {
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in name.char_indices() {
        match c {
            '(' if depth == 0 && i > start => return &name[start..i],
            // Template arguments, and a name that starts with a parenthesis:
            // `(anonymous namespace)::f`.
            '<' | '(' => depth += 1,
            '>' | ')' => depth = depth.saturating_sub(1),
            ' ' if depth == 0 => start = i + 1,
            _ => {}
        }
    }
    &name[start..]
}

/// The index of the first frame of `frames` (innermost first) that is not the
/// runtime's: where a call-site key starts. 0 when every frame is the runtime's (a
/// stack entirely inside the libraries is keyed from its innermost frame).
pub fn first_program_frame(frames: &[Frame]) -> usize {
    frames
        .iter()
        .position(|f| !is_runtime_frame(f))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn func(name: &str) -> Frame {
        Frame {
            function: Some(name.into()),
            module: Some("/work/app".into()),
            ..Frame::default()
        }
    }

    #[test]
    fn qualified_names_lose_return_types_and_parameters() {
        assert_eq!(qualified_name("main"), "main");
        assert_eq!(qualified_name("make_box(int)"), "make_box");
        assert_eq!(
            qualified_name(
                "void std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>(__gnu_cxx::__normal_iterator<int*, std::vector<int, std::allocator<int> > >, int const&)"
            ),
            "std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>"
        );
        assert_eq!(
            qualified_name("std::vector<int, std::allocator<int> > make_vec<int>(int)"),
            "make_vec<int>"
        );
        assert_eq!(
            qualified_name("(anonymous namespace)::helper(int)"),
            "(anonymous namespace)::helper"
        );
    }

    #[test]
    fn runtime_frames_by_module_file_and_name() {
        for name in [
            "std::__new_allocator<int>::allocate(unsigned long, void const*)",
            "void std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>(__gnu_cxx::__normal_iterator<int*, std::vector<int, std::allocator<int> > >, int const&)",
            "__gnu_cxx::new_allocator<char>::allocate(unsigned long, void const*)",
            "operator new(unsigned long)",
            "operator delete[](void*)",
            "__cxa_allocate_exception",
            "malloc",
        ] {
            assert!(is_runtime_frame(&func(name)), "{name}");
        }
        for name in [
            "main",
            "leak_one",
            "shapes::make_box(int)",
            "std::vector<int, std::allocator<int> > make_vec<int>(int)",
            "(anonymous namespace)::helper(int)",
            "mallocate_things",
        ] {
            assert!(!is_runtime_frame(&func(name)), "{name}");
        }
        let lib = |m: &str| Frame {
            module: Some(m.into()),
            ..Frame::default()
        };
        assert!(is_runtime_frame(&lib(
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
        )));
        assert!(is_runtime_frame(&lib("/lib/x86_64-linux-gnu/libc.so.6")));
        assert!(!is_runtime_frame(&lib("/usr/lib/libz.so.1")));
        let header = Frame {
            function: Some("allocate".into()),
            file: Some("/usr/include/c++/12/bits/new_allocator.h".into()),
            ..func("allocate")
        };
        assert!(is_runtime_frame(&header));
        let frames = [
            func("operator new(unsigned long)"),
            func("std::x::y()"),
            func("main"),
        ];
        assert_eq!(first_program_frame(&frames), 2);
        assert_eq!(first_program_frame(&frames[..2]), 0);
        assert_eq!(first_program_frame(&[]), 0);
    }
}
