//! valgrind memcheck's suppression blocks: reading them, and writing one for a loss
//! record (`--gen-suppressions`), as memcheck prints them:
//!
//! ```text
//! {
//!    <insert_a_suppression_name_here>
//!    Memcheck:Leak
//!    match-leak-kinds: definite
//!    fun:malloc
//!    fun:make_node
//!    fun:main
//! }
//! ```

use heaptape_format::AllocFn;

use super::glob::{escape, Glob};
use super::ALL_KINDS;
use super::{allocator_frame, kind_bit, FramePattern, Line, Rule, Suppression, SuppressionError};
use crate::checks::leaks::LeakKind;
use crate::symbolize::Frame;

/// At most this many location lines in a written suppression (valgrind's limit for a
/// suppression's stack).
const MAX_FRAMES: usize = 24;

/// Reads the block opened by the `{` on line `open` up to its `}`. `None` for a
/// suppression of another tool or error kind (valid, but not about leaks).
pub(super) fn parse_block<'a>(
    open: usize,
    lines: &mut impl Iterator<Item = Line<'a>>,
    origin: &str,
) -> Result<Option<Suppression>, SuppressionError> {
    let error = |line: usize, message: String| SuppressionError {
        origin: origin.to_owned(),
        line,
        message,
    };
    let unterminated = || error(open, "this suppression has no closing `}`".into());
    let (_, name) = lines.next().ok_or_else(unterminated)?;
    if name == "}" || name == "{" {
        return Err(error(open, "this suppression has no name".into()));
    }
    let (kind_line, kind) = lines.next().ok_or_else(unterminated)?;
    let Some((tools, what)) = kind.split_once(':') else {
        return Err(error(
            kind_line,
            format!("expected `Memcheck:Leak` (TOOL:KIND), found `{kind}`"),
        ));
    };
    let leak = tools.split(',').any(|t| t.trim() == "Memcheck") && what.trim() == "Leak";
    let mut kinds = ALL_KINDS;
    let mut patterns = Vec::new();
    loop {
        let (number, line) = lines.next().ok_or_else(unterminated)?;
        match line {
            "}" => break,
            "{" => return Err(unterminated()),
            _ if !leak => {} // another tool's or kind's lines
            "..." => patterns.push(FramePattern::Any),
            _ => {
                if let Some(list) = line.strip_prefix("match-leak-kinds:") {
                    if !patterns.is_empty() {
                        return Err(error(
                            number,
                            "`match-leak-kinds:` comes before the frame lines".into(),
                        ));
                    }
                    kinds = parse_kinds(list).map_err(|m| error(number, m))?;
                } else {
                    patterns.push(parse_location(line).map_err(|m| error(number, m))?);
                }
            }
        }
    }
    if !leak {
        return Ok(None);
    }
    if patterns.is_empty() {
        return Err(error(
            open,
            "this suppression has no frame line (fun:, obj:, src: or ...)".into(),
        ));
    }
    Ok(Some(Suppression {
        name: name.to_owned(),
        origin: format!("{origin}:{open}"),
        kinds,
        rule: Rule::Frames(patterns),
    }))
}

/// A `fun:`, `obj:` or `src:` line.
fn parse_location(line: &str) -> Result<FramePattern, String> {
    let bad = || {
        format!("expected `fun:PATTERN`, `obj:PATTERN`, `src:FILE[:LINE]` or `...`, found `{line}`")
    };
    let (what, pattern) = line.split_once(':').ok_or_else(bad)?;
    let pattern = pattern.trim();
    Ok(match what.trim() {
        "fun" => FramePattern::Fun(Glob::new(pattern)),
        "obj" => FramePattern::Obj(Glob::new(pattern)),
        "src" => match pattern.rsplit_once(':') {
            Some((file, n)) if n.parse::<u32>().is_ok() => {
                FramePattern::Src(Glob::new(file), n.parse().ok())
            }
            _ => FramePattern::Src(Glob::new(pattern), None),
        },
        _ => return Err(bad()),
    })
}

/// memcheck's `match-leak-kinds:` list: `definite`, `indirect`, `possible`,
/// `reachable`, `all` or `none`.
fn parse_kinds(list: &str) -> Result<u8, String> {
    let mut kinds = 0;
    for word in list.split(',').map(str::trim) {
        kinds |= match word {
            "definite" => kind_bit(LeakKind::DefinitelyLost),
            "indirect" => kind_bit(LeakKind::IndirectlyLost),
            "possible" => kind_bit(LeakKind::PossiblyLost),
            "reachable" => kind_bit(LeakKind::StillReachable),
            "all" => ALL_KINDS,
            "none" => 0,
            other => {
                return Err(format!(
                    "unknown leak kind `{other}` (expected definite, indirect, possible, \
                     reachable, all or none)"
                ))
            }
        };
    }
    Ok(kinds)
}

/// memcheck's word for a class in `match-leak-kinds:`.
fn kind_word(kind: LeakKind) -> &'static str {
    match kind {
        LeakKind::DefinitelyLost => "definite",
        LeakKind::IndirectlyLost => "indirect",
        LeakKind::PossiblyLost => "possible",
        LeakKind::StillReachable => "reachable",
    }
}

/// A suppression, in valgrind's format, for the blocks of class `kind` allocated by
/// `func` at `stack` (innermost first, from the allocator's caller): the allocator,
/// then one line per frame (its function, mangled when the name is, else its module)
/// down to `main`, at most 24 lines in all. Ends with a newline.
pub fn generate(kind: LeakKind, func: AllocFn, stack: &[Frame]) -> String {
    let mut out = format!(
        "{{\n   <insert_a_suppression_name_here>\n   Memcheck:Leak\n   match-leak-kinds: {}\n",
        kind_word(kind)
    );
    let allocator = allocator_frame(func);
    let frames = std::iter::once(&allocator).chain(stack);
    for f in frames.take(MAX_FRAMES) {
        let line = match (f.mangled.as_ref().or(f.function.as_ref()), &f.module) {
            (Some(name), _) => format!("fun:{}", escape(name)),
            (None, Some(module)) => format!("obj:{}", escape(module)),
            (None, None) => "obj:*".to_owned(),
        };
        out.push_str("   ");
        out.push_str(&line);
        out.push('\n');
        if f.function.as_deref() == Some("main") && !f.inlined {
            break;
        }
    }
    out.push_str("}\n");
    out
}
