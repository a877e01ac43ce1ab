//! The wildcards of suppression patterns, as valgrind matches them (`VG_(string_match)`):
//! `*` matches any run of characters (none included), `?` any one character, `\c` the
//! character `c` itself, anything else itself. The whole text must match.
//!
//! Hand-written rather than taken from a crate: `globset` compiles to regular
//! expressions and treats `/` specially, `wildmatch` has no `\` escape, and the matcher
//! is twenty lines.

/// One element of a compiled pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// `*`.
    Star,
    /// `?`.
    One,
    /// A literal character.
    Char(char),
}

/// A compiled wildcard pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
    /// A trailing lone `\`: valgrind's pattern then matches nothing.
    broken: bool,
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Glob {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars();
        let mut broken = false;
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::Star,
                '?' => Token::One,
                '\\' => match chars.next() {
                    Some(escaped) => Token::Char(escaped),
                    None => {
                        broken = true;
                        break;
                    }
                },
                c => Token::Char(c),
            });
        }
        Glob { tokens, broken }
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        if self.broken {
            return false;
        }
        // Positions are token indices and byte offsets into `text` (at char starts).
        let (mut p, mut t) = (0, 0);
        // The last `*` seen and the text offset it was tried at.
        let mut star: Option<(usize, usize)> = None;
        while let Some(c) = text[t..].chars().next() {
            match self.tokens.get(p) {
                Some(Token::Star) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(Token::One) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                Some(Token::Char(want)) if *want == c => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                _ => {}
            }
            // Mismatch: let the last `*` swallow one more character, if there is one.
            let Some((sp, st)) = star else {
                return false;
            };
            let next = st + text[st..].chars().next().map_or(1, char::len_utf8);
            star = Some((sp, next));
            p = sp + 1;
            t = next;
        }
        self.tokens[p..].iter().all(|t| *t == Token::Star)
    }
}

/// `text` with the wildcard characters (`*`, `?`, `\`) escaped, to match itself only.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).matches(t)
    }

    #[test]
    fn wildcards_as_valgrind() {
        assert!(m("malloc", "malloc"));
        assert!(!m("malloc", "malloc2"));
        assert!(!m("malloc", "xmalloc"));
        assert!(m("*", ""));
        assert!(m("*", "anything at all"));
        assert!(m("*alloc", "calloc"));
        assert!(m("*alloc", "alloc"));
        assert!(!m("*alloc", "allocate"));
        assert!(m("_IO_*_doallocate", "_IO_file_doallocate"));
        assert!(m("m?lloc", "malloc"));
        assert!(!m("m?lloc", "mlloc"));
        assert!(m(
            "*/libstdc++.so*",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"
        ));
        assert!(m("a*b*c", "aXXbYYbc"));
        assert!(!m("a*b*c", "aXXbYYb"));
        assert!(m("**", "x"));
        assert!(m("é?", "éü"));
    }

    #[test]
    fn escapes() {
        assert!(m(r"f\*", "f*"));
        assert!(!m(r"f\*", "fx"));
        assert!(m(r"a\\b", r"a\b"));
        // A trailing lone backslash matches nothing (valgrind's rule).
        assert!(!m("abc\\", "abc\\"));
        assert!(!m("abc\\", "abc"));
        let name = "operator delete(void*, unsigned long)?";
        assert!(m(&escape(name), name));
        assert!(!m(&escape("f*"), "fx"));
    }
}
