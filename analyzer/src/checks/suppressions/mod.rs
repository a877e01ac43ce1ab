//! Leak suppressions: loss records matched by their allocation stack are taken out of
//! the LEAK SUMMARY's classes, counted as `suppressed` instead, not listed and never
//! fail `--fail-on` (memcheck's `--suppressions`, LeakSanitizer's `suppressions=`).
//!
//! Two file formats are read, even mixed in one file (see [`Suppressions::parse`]):
//!
//! * **valgrind memcheck's** blocks (`valgrind.rs`): a name, `Memcheck:Leak`, an
//!   optional `match-leak-kinds:` line, then frame patterns matched innermost first
//!   from the allocator function (`fun:malloc`), as valgrind does: `fun:PATTERN`
//!   (function name, demangled or mangled), `obj:PATTERN` (module path), `src:FILE` or
//!   `src:FILE:LINE` (source file name), `...` (any number of frames). The stack may go
//!   on past the last pattern. Blocks for other tools or error kinds are skipped.
//! * **LeakSanitizer's** `leak:PATTERN` lines (`lsan.rs`): a record is suppressed when
//!   the pattern occurs in the function name, source file or module path of any of its
//!   frames (`^` and `$` anchor it); other sanitizer lines (`race:`...) are skipped.
//!
//! Patterns take valgrind's wildcards (`glob.rs`): `*`, `?` and `\` escapes. `#` starts
//! a comment line. A frame without a known function is `???` to `fun:`, one outside
//! any module `???` to `obj:`. Inlined calls are frames of their own, as in valgrind
//! with its default `--read-inline-info=yes`.
//!
//! The default list (`default.supp`, [`Suppressions::defaults`]) hides the blocks the
//! C and C++ runtimes keep for the life of the process, which memcheck frees at exit
//! (`__libc_freeres`, `__gnu_cxx::__freeres`) before its leak check: the threads' TLS
//! vectors, stdio buffers, libstdc++'s emergency exception pool, the loader's own
//! blocks. They are matched by their allocation stacks, never by size.

mod apply;
mod glob;
mod lsan;
mod parse;
mod valgrind;

use heaptape_format::AllocFn;

use crate::checks::leaks::LeakKind;
use crate::symbolize::Frame;

pub(crate) use apply::{apply, matcher};
pub use valgrind::generate;

use glob::Glob;

/// The default list's text (valgrind's format).
pub const DEFAULT_SUPPRESSIONS: &str = include_str!("default.supp");

/// A list of suppressions, in file order (the first match names a suppressed record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suppressions {
    list: Vec<Suppression>,
}

/// One suppression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// Its name: the valgrind block's first line, or the LSan line itself.
    pub name: String,
    /// Where it was read: `FILE:LINE`.
    pub origin: String,
    /// The leak classes it applies to, a bit per [`LeakKind::ALL`] entry.
    kinds: u8,
    rule: Rule,
}

/// What a suppression matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// valgrind: frame patterns, innermost first, from the allocator.
    Frames(Vec<FramePattern>),
    /// LSan: a pattern any frame's function, file or module matches.
    Anywhere(Glob),
}

/// One location line of a valgrind suppression.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FramePattern {
    /// `fun:PATTERN`: the function, by its demangled or mangled name.
    Fun(Glob),
    /// `obj:PATTERN`: the module's path.
    Obj(Glob),
    /// `src:FILE[:LINE]`: the source file's name (and the line).
    Src(Glob, Option<u32>),
    /// `...`: any number of frames, none included.
    Any,
}

/// A suppression file that cannot be read: where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}: {message}")]
pub struct SuppressionError {
    /// The file (or the name the text was given).
    pub origin: String,
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// One line of a suppression file: its number (from 1) and its text without surrounding
/// blanks.
type Line<'a> = (usize, &'a str);

/// The bit of `kind` in [`Suppression::kinds`].
fn kind_bit(kind: LeakKind) -> u8 {
    1 << LeakKind::ALL.iter().position(|&k| k == kind).unwrap_or(0)
}

/// Every class.
const ALL_KINDS: u8 = 0b1111;

impl Suppressions {
    /// No suppression at all.
    pub fn none() -> Suppressions {
        Suppressions::default()
    }

    /// heaptape's default list (`default.supp`): the C and C++ runtimes' blocks.
    pub fn defaults() -> Suppressions {
        Suppressions::parse(DEFAULT_SUPPRESSIONS, "default.supp")
            .expect("the default suppressions parse")
    }

    /// Reads suppressions in valgrind's or LeakSanitizer's format (see the module
    /// docs); `origin` names the text in errors and in [`Suppression::origin`].
    pub fn parse(text: &str, origin: &str) -> Result<Suppressions, SuppressionError> {
        parse::parse(text, origin).map(|list| Suppressions { list })
    }

    /// Appends `other`'s suppressions.
    pub fn extend(&mut self, other: Suppressions) {
        self.list.extend(other.list);
    }

    /// How many suppressions there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The `i`-th suppression.
    pub fn get(&self, i: usize) -> Option<&Suppression> {
        self.list.get(i)
    }

    /// The suppressions, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Suppression> {
        self.list.iter()
    }

    /// The index of the first suppression hiding blocks of class `kind` allocated by
    /// `func` with call stack `stack` (innermost first, from the allocator's caller;
    /// inlined calls as frames of their own).
    pub fn find(&self, kind: LeakKind, func: AllocFn, stack: &[Frame]) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        self.find_in(kind, func, stack.iter())
    }

    /// [`Suppressions::find`] over frames given by reference.
    pub(crate) fn find_in<'f>(
        &self,
        kind: LeakKind,
        func: AllocFn,
        stack: impl Iterator<Item = &'f Frame>,
    ) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        let allocator = allocator_frame(func);
        let mut frames: Vec<&Frame> = vec![&allocator];
        for f in stack {
            frames.push(f);
        }
        self.list.iter().position(|s| s.matches(kind, &frames))
    }
}

impl Suppression {
    /// Whether it hides a block of class `kind` allocated at `frames` (the allocator
    /// first).
    fn matches(&self, kind: LeakKind, frames: &[&Frame]) -> bool {
        if self.kinds & kind_bit(kind) == 0 {
            return false;
        }
        match &self.rule {
            Rule::Frames(patterns) => frames_match(patterns, frames),
            Rule::Anywhere(glob) => frames.iter().any(|f| lsan::frame_matches(glob, f)),
        }
    }
}

/// Whether `patterns` match `frames` from the first frame on (frames may remain).
fn frames_match(patterns: &[FramePattern], frames: &[&Frame]) -> bool {
    match patterns.split_first() {
        None => true,
        Some((FramePattern::Any, rest)) => {
            (0..=frames.len()).any(|skip| frames_match(rest, &frames[skip..]))
        }
        Some((p, rest)) => frames
            .split_first()
            .is_some_and(|(f, more)| p.matches(f) && frames_match(rest, more)),
    }
}

/// What `fun:` and `obj:` see of an unknown function or module.
const UNKNOWN: &str = "???";

impl FramePattern {
    fn matches(&self, f: &Frame) -> bool {
        match self {
            FramePattern::Fun(g) => {
                let mut names = f.function.iter().chain(&f.mangled).peekable();
                if names.peek().is_none() {
                    return g.matches(UNKNOWN);
                }
                names.any(|n| g.matches(n))
            }
            FramePattern::Obj(g) => g.matches(f.module.as_deref().unwrap_or(UNKNOWN)),
            FramePattern::Src(g, line) => {
                let file = f.file.as_deref().map_or(UNKNOWN, file_name);
                g.matches(file) && line.is_none_or(|l| f.line == Some(l))
            }
            FramePattern::Any => true,
        }
    }
}

/// The file name of a path.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The allocator as the innermost frame: its name as reports give it (demangled) and
/// as valgrind's suppressions spell it (mangled, for `operator new`).
pub(crate) fn allocator_frame(func: AllocFn) -> Frame {
    let (function, mangled) = match func {
        AllocFn::New => ("operator new(unsigned long)", Some("_Znwm")),
        AllocFn::NewArray => ("operator new[](unsigned long)", Some("_Znam")),
        other => (other.name(), None),
    };
    Frame {
        function: Some(function.to_owned()),
        mangled: mangled.map(str::to_owned),
        ..Frame::default()
    }
}

#[cfg(test)]
mod tests;
