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
//! * [`write_stack`]: the text reports' `at`/`by` lines: frames below `main` left out
//!   (as memcheck's `--show-below-main=no`), inlined calls marked `[inlined]`, and
//!   long C++ template argument lists shortened to `<…>` ([`short_function`]).

use std::fmt;
use std::io;

use heaptape_format::StackId;

use super::schema;
use crate::modules::ModuleMap;
use crate::stacks::StackTable;
use crate::symbolize::{Frame, Symbolizer};
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

/// Writes `frames` as the text reports' stack lines: `        at FRAME`, then
/// `        by FRAME` for each caller, down to `main` unless `below_main` (the C
/// library's start-up frames under it say nothing about the program); function names
/// longer than [`SHORT_FUNCTION`] with their template arguments shortened, inlined
/// calls marked.
pub(crate) fn write_stack(
    out: &mut dyn io::Write,
    frames: &[Frame],
    below_main: bool,
) -> io::Result<()> {
    let shown = match frames
        .iter()
        .position(|f| f.function.as_deref() == Some("main"))
    {
        Some(main) if !below_main => main + 1,
        _ => frames.len(),
    };
    for (i, frame) in frames[..shown].iter().enumerate() {
        let word = if i == 0 { "at" } else { "by" };
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
        let inlined = if frame.inlined { " [inlined]" } else { "" };
        writeln!(out, "        {word} {line}{inlined}")?;
    }
    Ok(())
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
        let mut out = Vec::new();
        write_stack(&mut out, &frames, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "        at 0x10: helper [inlined]\n        by 0x10: work\n        by 0x10: main\n"
        );
        let mut out = Vec::new();
        write_stack(&mut out, &frames, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 5);
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
