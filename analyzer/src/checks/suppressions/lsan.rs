//! LeakSanitizer's suppressions: `leak:PATTERN` lines. LSan hides a leak when the
//! pattern occurs in the module path, or in the function name or source file of any
//! frame of its stack (inlined ones included): a substring match, unless `^` anchors
//! the pattern at the start or `$` at the end; `*` matches any run of characters.

use super::glob::{escape, Glob};
use super::{Rule, Suppression, ALL_KINDS};
use crate::symbolize::Frame;

/// The suppression of line `kind:pattern`, `None` for a sanitizer type other than
/// `leak` (ThreadSanitizer's `race:`, ...), which LSan files may hold.
pub(super) fn parse_line(
    kind: &str,
    pattern: &str,
    origin: &str,
    line: usize,
) -> Result<Option<Suppression>, String> {
    if matches!(kind, "fun" | "obj" | "src" | "match-leak-kinds") || kind.contains(',') {
        return Err(format!(
            "`{kind}:{pattern}` belongs inside a valgrind suppression (`{{` ... `}}`)"
        ));
    }
    if kind.is_empty()
        || !kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "`{kind}:{pattern}` is not a suppression (expected `leak:PATTERN`)"
        ));
    }
    if kind == "Memcheck" {
        return Err(format!(
            "`{kind}:{pattern}` belongs inside a valgrind suppression, after its name"
        ));
    }
    if kind != "leak" {
        return Ok(None);
    }
    if pattern.is_empty() {
        return Err("`leak:` needs a pattern".into());
    }
    Ok(Some(Suppression {
        name: format!("leak:{pattern}"),
        origin: format!("{origin}:{line}"),
        kinds: ALL_KINDS,
        rule: Rule::Anywhere(Glob::new(&to_glob(pattern))),
    }))
}

/// An LSan pattern as a whole-text wildcard pattern: unanchored ends take a `*`.
fn to_glob(pattern: &str) -> String {
    let (start, rest) = match pattern.strip_prefix('^') {
        Some(rest) => ("", rest),
        None => ("*", pattern),
    };
    let (rest, end) = match rest.strip_suffix('$') {
        Some(rest) => (rest, ""),
        None => (rest, "*"),
    };
    let body: Vec<String> = rest.split('*').map(escape).collect();
    format!("{start}{}{end}", body.join("*"))
}

/// Whether `glob` matches one of what LSan looks at in frame `f`. An empty name never
/// matches (LSan's rule).
pub(super) fn frame_matches(glob: &Glob, f: &Frame) -> bool {
    [&f.function, &f.mangled, &f.file, &f.module]
        .into_iter()
        .flatten()
        .any(|s| !s.is_empty() && glob.matches(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsan_patterns_are_substrings_unless_anchored() {
        let g = |p: &str| Glob::new(&to_glob(p));
        assert!(g("leak_two").matches("my_leak_two_helper"));
        assert!(g("^leak_two").matches("leak_two_helper"));
        assert!(!g("^leak_two").matches("my_leak_two"));
        assert!(g("leak_two$").matches("my_leak_two"));
        assert!(!g("leak_two$").matches("leak_two_helper"));
        assert!(g("^leak_two$").matches("leak_two"));
        assert!(g("libfoo*.so").matches("/usr/lib/libfoo-1.2.so.3"));
        // `?` is no wildcard to LSan.
        assert!(!g("a?c").matches("abc"));
        assert!(g("a?c").matches("xa?cx"));
    }

    #[test]
    fn other_sanitizer_types_are_skipped() {
        assert_eq!(parse_line("race", "foo", "f", 1), Ok(None));
        assert!(parse_line("leak", "", "f", 1).is_err());
        assert!(parse_line("not a type", "x", "f", 1).is_err());
        assert!(parse_line("fun", "malloc", "f", 1).is_err());
        assert!(parse_line("Memcheck", "Leak", "f", 1).is_err());
        let s = parse_line("leak", "foo", "f", 3).unwrap().unwrap();
        assert_eq!(s.name, "leak:foo");
        assert_eq!(s.origin, "f:3");
    }
}
