//! Replacement allocators (jemalloc, tcmalloc, mimalloc) the leak tests run fixtures
//! under, linked into the program or preloaded: Debian's `libjemalloc2`,
//! `libgoogle-perftools4` and `libmimalloc2.0`, which `.ci/run` installs. Only their
//! shared objects are needed: programs link them by full path.

use std::path::{Path, PathBuf};
use std::sync::Once;

/// A replacement allocator installed on this machine.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// Short name (`jemalloc`, `tcmalloc`, `mimalloc`).
    pub name: &'static str,
    /// The Debian package that ships it.
    pub package: &'static str,
    /// Its shared object.
    pub lib: PathBuf,
}

/// How a program gets a replacement allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorUse {
    /// Linked into the program (its `malloc` comes before libc's in the lookup order).
    Linked,
    /// `LD_PRELOAD`ed into an unchanged program.
    Preloaded,
}

impl AllocatorUse {
    /// Both ways.
    pub const ALL: [AllocatorUse; 2] = [AllocatorUse::Linked, AllocatorUse::Preloaded];

    /// `linked` or `preloaded`.
    pub fn label(self) -> &'static str {
        match self {
            AllocatorUse::Linked => "linked",
            AllocatorUse::Preloaded => "preloaded",
        }
    }
}

/// Debian's allocators: name, package, shared object file name.
const KNOWN: [(&str, &str, &str); 3] = [
    ("jemalloc", "libjemalloc2", "libjemalloc.so.2"),
    ("tcmalloc", "libgoogle-perftools4", "libtcmalloc.so.4"),
    ("mimalloc", "libmimalloc2.0", "libmimalloc.so.2"),
];

/// Where shared objects are looked for.
const LIB_DIRS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/local/lib",
];

/// The allocators installed here. A missing one is named on stderr (once per test
/// binary) with the package to install; `.ci/run` installs all three, so CI runs them.
pub fn allocators() -> Vec<Allocator> {
    static NOTE: Once = Once::new();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (name, package, file) in KNOWN {
        match LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join(file))
            .find(|p| p.exists())
        {
            Some(lib) => found.push(Allocator { name, package, lib }),
            None => missing.push(format!("{name} ({file}: apt-get install {package})")),
        }
    }
    if !missing.is_empty() {
        NOTE.call_once(|| {
            eprintln!(
                "SKIPPED: allocator variants not installed here: {}",
                missing.join(", ")
            )
        });
    }
    found
}

/// The allocator named `name`, if installed (see [`allocators`]).
pub fn allocator(name: &str) -> Option<Allocator> {
    allocators().into_iter().find(|a| a.name == name)
}

impl Allocator {
    /// The compiler flags that link it into a program (after the sources).
    pub fn link_flags(&self) -> Vec<String> {
        vec![
            "-Wl,--no-as-needed".to_string(),
            self.lib.display().to_string(),
        ]
    }

    /// The valgrind option that has memcheck replace this allocator's functions as it
    /// replaces the C library's (`--soname-synonyms=somalloc=libjemalloc.so*`).
    pub fn memcheck_option(&self) -> String {
        let file = self
            .lib
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = file.split(".so").next().unwrap_or(&file);
        format!("--soname-synonyms=somalloc={stem}.so*")
    }

    /// A label for files and messages: `jemalloc-linked`.
    pub fn label(&self, how: AllocatorUse) -> String {
        format!("{}-{}", self.name, how.label())
    }
}
