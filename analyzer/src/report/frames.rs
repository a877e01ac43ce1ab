//! Frames in reports: a stack's frames as the symbolizer describes them
//! ([`symbolize_stack`]), and the one describer that puts a frame in words, whatever the
//! output:
//!
//! * `Display` for [`Frame`] (text reports, after `at`/`by`): memcheck's wording,
//!   `0x4011d6: main (app.c:12)`, `0x4011d6: free (in libc.so.6)`,
//!   `0x4011d6: app+0x11d6`, or `0x4011d6: ???`;
//! * [`describe`] (a diff's keys and lines): the same without the address, the address
//!   standing for an unknown frame;
//! * [`folded_name`] (flamegraph frames): the function alone (no source place), else
//!   the same, made safe for the folded format;
//! * [`json_frames`] and [`json_stack`]: the frames as JSON objects;
//! * [`TextStacks`]: the text reports' `at`/`by` lines: frames below `main` left out
//!   (as memcheck's `--show-below-main=no`), inlined calls marked `[inlined]`, long C++
//!   template argument lists shortened to `<…>` ([`short_function`]), a frame without
//!   symbols saying why, and a stack printed a second time referred to by its id.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;

use heaptape_format::StackId;

use super::schema;
use crate::modules::ModuleMap;
use crate::stacks::StackTable;
use crate::symbolize::{first_program_frame, Frame, Symbolizer};
use crate::units::addr;

/// The frames of stack `id` in the image whose modules are `modules`, innermost first,
/// as the symbolizer describes them (every address of a stack is a return address).
pub fn symbolize_stack(
    stacks: &StackTable,
    modules: &ModuleMap,
    id: StackId,
    symbolizer: &dyn Symbolizer,
) -> Vec<Frame> {
    frames_of(stacks.iter(id), modules, symbolizer)
}

/// The frames of return addresses `addresses`, innermost first.
pub(crate) fn frames_of(
    addresses: impl IntoIterator<Item = u64>,
    modules: &ModuleMap,
    symbolizer: &dyn Symbolizer,
) -> Vec<Frame> {
    addresses
        .into_iter()
        .flat_map(|addr| symbolizer.symbolize(modules, addr, true))
        .collect()
}

/// What a frame without function or module is called.
#[derive(Clone, Copy)]
enum Unknown {
    /// `???`, as memcheck.
    Marks,
    /// Its address.
    Address,
}

/// The one describer: the function, then (when `place`) its source file and line, or
/// the module it is in; else `module+0xoffset`, else the module; else `unknown`. Files
/// and modules are named by their file name only.
fn write_description(
    out: &mut dyn fmt::Write,
    f: &Frame,
    place: bool,
    unknown: Unknown,
) -> fmt::Result {
    match (&f.function, &f.module) {
        (Some(func), _) => {
            out.write_str(func)?;
            if !place {
                return Ok(());
            }
            match (&f.file, f.line) {
                (Some(file), Some(line)) => write!(out, " ({}:{line})", file_name(file)),
                (Some(file), None) => write!(out, " ({})", file_name(file)),
                _ => match &f.module {
                    Some(m) => write!(out, " (in {})", file_name(m)),
                    None => Ok(()),
                },
            }
        }
        (None, Some(m)) => match f.module_offset {
            Some(off) => write!(out, "{}+{off:#x}", file_name(m)),
            None => out.write_str(file_name(m)),
        },
        (None, None) => match unknown {
            Unknown::Marks => out.write_str("???"),
            Unknown::Address => write!(out, "{:#x}", f.address),
        },
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl fmt::Display for Frame {
    /// Worded like memcheck: `0x4011d6: main (app.c:12)` (the source file's name
    /// only), `0x4011d6: free (in libc.so.6)` without line information,
    /// `0x4011d6: app+0x11d6` without a symbol, or `0x4011d6: ???`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}: ", self.address)?;
        write_description(f, self, true, Unknown::Marks)
    }
}

/// A frame as `function (file:line)`, `function (file)`, `function (in module)`,
/// `function`, `module+0xoffset`, `module`, or its address.
pub(crate) fn describe(f: &Frame) -> String {
    let mut s = String::new();
    let _ = write_description(&mut s, f, true, Unknown::Address);
    s
}

/// A frame's name in a folded flamegraph line: its function (inlined calls are frames
/// of their own), else `module+0xoffset`, else its address; never contains `;` or a
/// line break.
pub(crate) fn folded_name(f: &Frame) -> String {
    let mut s = String::new();
    let _ = write_description(&mut s, f, false, Unknown::Address);
    s.replace([';', '\n', '\r'], ":")
}

/// Frames as JSON objects.
pub(crate) fn json_frames(frames: Vec<Frame>) -> Vec<schema::Frame> {
    frames
        .into_iter()
        .map(|f| schema::Frame {
            address: addr(f.address),
            file: f.file,
            function: f.function,
            inlined: f.inlined,
            line: f.line,
            module: f.module,
            offset: f.module_offset.map(addr),
            no_symbols: f.no_symbols.map(|why| why.to_string()),
        })
        .collect()
}

/// The frames of stack `id` (see [`symbolize_stack`]) as JSON objects.
pub(crate) fn json_stack(
    stacks: &StackTable,
    modules: &ModuleMap,
    id: StackId,
    symbolizer: &dyn Symbolizer,
) -> Vec<schema::Frame> {
    json_frames(symbolize_stack(stacks, modules, id, symbolizer))
}

/// The text reports' stacks: memcheck's `at`/`by` lines, each distinct stack printed
/// in full once per report and referred to by a short id after that.
///
/// A stack is written down to `main` unless `below_main` (the C library's start-up
/// frames under it say nothing about the program); function names longer than
/// [`SHORT_FUNCTION`] have their template arguments shortened, inlined calls are
/// marked `[inlined]`, and the first frame of a module without symbols says why. A
/// stack of [`NAMED_STACK`] lines or more gets an id (`S1`, `S2`, ...) on its first
/// line the first time it is printed; printed again (in another section, another
/// process), it is one line: the id and the first frame that is the program's own.
pub(crate) struct TextStacks {
    below_main: bool,
    /// The lines of every stack given an id so far → its number.
    seen: RefCell<HashMap<Vec<String>, usize>>,
}

/// Stacks of this many lines or more are printed in full once and by id after that.
pub(crate) const NAMED_STACK: usize = 2;

impl TextStacks {
    /// A report's stacks, none printed yet.
    pub(crate) fn new(below_main: bool) -> Self {
        TextStacks {
            below_main,
            seen: RefCell::new(HashMap::new()),
        }
    }

    /// Writes `frames` (innermost first): in full, or as a reference to the same
    /// stack printed earlier in the report.
    pub(crate) fn write(&self, out: &mut dyn io::Write, frames: &[Frame]) -> io::Result<()> {
        let shown = if self.below_main {
            frames
        } else {
            &frames[..down_to_main(frames)]
        };
        let lines = frame_lines(shown);
        if lines.len() < NAMED_STACK {
            return lines
                .iter()
                .enumerate()
                .try_for_each(|(i, l)| writeln!(out, "        {} {l}", at_or_by(i)));
        }
        let mut seen = self.seen.borrow_mut();
        if let Some(&id) = seen.get(&lines) {
            let own = &shown[first_program_frame(shown)];
            return writeln!(
                out,
                "        stack S{id}, printed above: {} ...",
                short_description(own)
            );
        }
        let id = seen.len() + 1;
        for (i, l) in lines.iter().enumerate() {
            let tag = if i == 0 {
                format!("  [S{id}]")
            } else {
                String::new()
            };
            writeln!(out, "        {} {l}{tag}", at_or_by(i))?;
        }
        seen.insert(lines, id);
        Ok(())
    }
}

/// How many of `frames` (innermost first) are `main` and the frames above it: up to
/// `main`, or, when `main` has no name (a stripped program), up to the C library's
/// frame that calls it; all of them when there is neither.
fn down_to_main(frames: &[Frame]) -> usize {
    let named =
        |f: &Frame, names: &[&str]| f.function.as_deref().is_some_and(|n| names.contains(&n));
    if let Some(main) = frames.iter().position(|f| named(f, &["main"])) {
        return main + 1;
    }
    frames
        .iter()
        .position(|f| {
            named(
                f,
                &[
                    "__libc_start_call_main",
                    "__libc_start_main",
                    "__libc_start_main_impl",
                ],
            )
        })
        .unwrap_or(frames.len())
}

fn at_or_by(i: usize) -> &'static str {
    if i == 0 {
        "at"
    } else {
        "by"
    }
}

/// The text of each frame's line, after `at`/`by` (see [`TextStacks`]).
fn frame_lines(frames: &[Frame]) -> Vec<String> {
    let mut said_why: Vec<&str> = Vec::new();
    frames
        .iter()
        .map(|frame| {
            let mut line = String::new();
            match frame.function.as_deref().map(short_function) {
                Some(std::borrow::Cow::Owned(short)) => {
                    let f = Frame {
                        function: Some(short),
                        ..frame.clone()
                    };
                    let _ = fmt::write(&mut line, format_args!("{f}"));
                }
                _ => {
                    let _ = fmt::write(&mut line, format_args!("{frame}"));
                }
            }
            if frame.inlined {
                line.push_str(" [inlined]");
            }
            if let (Some(why), Some(module)) = (frame.no_symbols, frame.module.as_deref()) {
                if !said_why.contains(&module) {
                    said_why.push(module);
                    let _ = fmt::write(&mut line, format_args!(" ({why})"));
                }
            }
            line
        })
        .collect()
}

/// `own` described without its address (see [`describe`]), its function shortened.
fn short_description(own: &Frame) -> String {
    let f = Frame {
        function: own
            .function
            .as_deref()
            .map(|n| short_function(n).into_owned()),
        ..own.clone()
    };
    describe(&f)
}

/// Function names longer than this are shortened in text ([`short_function`]).
pub(crate) const SHORT_FUNCTION: usize = 100;

/// `name` with the contents of every outermost template argument list replaced by `…`
/// when it is longer than [`SHORT_FUNCTION`] characters (`std::vector<…>::_M_realloc_insert<…>(__gnu_cxx::__normal_iterator<…>, int const&)`);
/// operators `<`, `<<`, `<=`, `<=>`, `>`, `>>`, `>=`, `->` are not brackets. Borrowed
/// when nothing changes.
pub(crate) fn short_function(name: &str) -> std::borrow::Cow<'_, str> {
    if name.chars().count() <= SHORT_FUNCTION {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut depth = 0usize;
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        // An operator's name, copied whole (`operator<<`, `operator->`, ...).
        if depth == 0 && out.trim_end().ends_with("operator") {
            let op = ["<=>", "<<=", ">>=", "<<", ">>", "<=", ">=", "->", "<", ">"]
                .iter()
                .find(|op| rest.starts_with(**op));
            if let Some(op) = op {
                out.push_str(op);
                rest = &rest[op.len()..];
                continue;
            }
        }
        match c {
            '<' => {
                if depth == 0 {
                    out.push_str("<…");
                }
                depth += 1;
            }
            '>' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push('>');
                }
            }
            _ if depth == 0 => out.push(c),
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    if depth != 0 {
        // Unbalanced: leave it as it is.
        return std::borrow::Cow::Borrowed(name);
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::NoSymbols;

    #[test]
    fn one_describer_three_wordings() {
        let full = Frame {
            address: 0x10,
            module: Some("/lib/libc.so.6".into()),
            module_offset: Some(0x10),
            function: Some("free".into()),
            mangled: None,
            file: Some("/src/malloc.c".into()),
            line: Some(7),
            inlined: false,
            no_symbols: None,
        };
        assert_eq!(full.to_string(), "0x10: free (malloc.c:7)");
        assert_eq!(describe(&full), "free (malloc.c:7)");
        assert_eq!(folded_name(&full), "free");
        let unknown = Frame {
            address: 0x99,
            ..Frame::default()
        };
        assert_eq!(unknown.to_string(), "0x99: ???");
        assert_eq!(describe(&unknown), "0x99");
        assert_eq!(folded_name(&unknown), "0x99");
    }

    #[test]
    fn long_template_arguments_are_shortened_and_operators_kept() {
        let long = "void std::vector<std::__cxx11::basic_string<char, std::char_traits<char>, \
                    std::allocator<char> >, std::allocator<std::__cxx11::basic_string<char> > \
                    >::_M_realloc_insert<std::__cxx11::basic_string<char> const&>(\
                    __gnu_cxx::__normal_iterator<int*, std::vector<int> >, int const&)";
        assert_eq!(
            short_function(long),
            "void std::vector<…>::_M_realloc_insert<…>(__gnu_cxx::__normal_iterator<…>, \
             int const&)"
        );
        let op = format!(
            "std::basic_ostream<char, std::char_traits<char> >& std::operator<< \
             <std::char_traits<char> >(std::basic_ostream<char, {}>&, char const*)",
            "std::char_traits<char> ".repeat(3)
        );
        assert_eq!(
            short_function(&op),
            "std::basic_ostream<…>& std::operator<< <…>(std::basic_ostream<…>&, char const*)"
        );
        let cmp = format!("bool operator<(A<{}> const&, B const&)", "int, ".repeat(30));
        assert_eq!(
            short_function(&cmp),
            "bool operator<(A<…> const&, B const&)"
        );
        // Short names, and unbalanced ones, stay.
        assert_eq!(
            short_function("std::vector<int>::push_back"),
            "std::vector<int>::push_back"
        );
        let odd = format!("f<{}", "x".repeat(200));
        assert_eq!(short_function(&odd), odd);
    }

    fn written(stacks: &TextStacks, frames: &[Frame]) -> String {
        let mut out = Vec::new();
        stacks.write(&mut out, frames).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_stacks_stop_at_main_and_mark_inlined_calls() {
        let f = |function: &str, inlined| Frame {
            address: 0x10,
            function: Some(function.into()),
            inlined,
            ..Frame::default()
        };
        let frames = [
            f("helper", true),
            f("work", false),
            f("main", false),
            f("__libc_start_call_main", false),
            f("_start", false),
        ];
        assert_eq!(
            written(&TextStacks::new(false), &frames),
            "        at 0x10: helper [inlined]  [S1]\n        by 0x10: work\n        by 0x10: main\n"
        );
        assert_eq!(written(&TextStacks::new(true), &frames).lines().count(), 5);
        // A one-frame stack is printed in full every time, without an id.
        let short = TextStacks::new(false);
        for _ in 0..2 {
            assert_eq!(written(&short, &frames[2..3]), "        at 0x10: main\n");
        }
    }

    #[test]
    fn a_stack_printed_again_is_referred_to_by_its_id() {
        let f = |function: &str, module: &str, line: Option<u32>| Frame {
            address: 0x10,
            function: Some(function.into()),
            module: Some(module.into()),
            file: line.map(|_| "/src/app.c".to_string()),
            line,
            ..Frame::default()
        };
        let leak = [
            f("malloc", "/lib/libc.so.6", None),
            f("make_node", "/bin/app", Some(3)),
            f("build", "/bin/app", Some(9)),
            f("main", "/bin/app", Some(20)),
        ];
        let mut other = leak.clone();
        other[2].line = Some(10);
        let stacks = TextStacks::new(false);
        let first = written(&stacks, &leak);
        assert_eq!(first.lines().count(), 4);
        assert!(first.lines().next().unwrap().ends_with("  [S1]"), "{first}");
        // The same stack again: one line naming the program's own first frame.
        assert_eq!(
            written(&stacks, &leak),
            "        stack S1, printed above: make_node (app.c:3) ...\n"
        );
        // Another stack gets the next id, and keeps it.
        assert!(written(&stacks, &other).contains("[S2]"));
        assert!(written(&stacks, &other).starts_with("        stack S2,"));
        assert_eq!(
            written(&stacks, &leak),
            "        stack S1, printed above: make_node (app.c:3) ...\n"
        );
    }

    #[test]
    fn an_unnamed_frame_says_why_once_per_module_and_stack() {
        let raw = |offset: u64, module: &str, why| Frame {
            address: 0x1000 + offset,
            module: Some(module.into()),
            module_offset: Some(offset),
            no_symbols: Some(why),
            ..Frame::default()
        };
        let frames = [
            raw(0x11d6, "/opt/app", NoSymbols::Stripped),
            raw(0x1200, "/opt/app", NoSymbols::Stripped),
            raw(0x40, "/opt/libgone.so", NoSymbols::FileMissing),
        ];
        let text = written(&TextStacks::new(false), &frames);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "        at 0x21d6: app+0x11d6 (no symbols: stripped, no debug file found)  [S1]"
        );
        assert_eq!(lines[1], "        by 0x2200: app+0x1200");
        assert_eq!(
            lines[2],
            "        by 0x1040: libgone.so+0x40 (no symbols: file not found)"
        );
    }

    #[test]
    fn folded_names() {
        let f = Frame {
            address: 0x1234,
            function: Some("ns::f;g".into()),
            ..Frame::default()
        };
        assert_eq!(folded_name(&f), "ns::f:g");
        let f = Frame {
            address: 0x1234,
            module: Some("/usr/lib/libz.so.1".into()),
            module_offset: Some(0x234),
            ..Frame::default()
        };
        assert_eq!(folded_name(&f), "libz.so.1+0x234");
        assert_eq!(
            folded_name(&Frame {
                address: 0x99,
                ..Frame::default()
            }),
            "0x99"
        );
    }
}
