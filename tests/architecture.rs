//! The layout rules of docs/ARCHITECTURE.md, checked on the source tree of the four
//! crates (`src/`, `recorder/src`, `analyzer/src`, `format/src`):
//!
//! - no file over [`MAX_LINES`] lines, except the codec ([`LONG_FILES_ALLOWED`]);
//! - no import cycle between sibling modules of a crate: a path `crate::a::b` or
//!   `super::x` written in module M and naming module T is an edge between the two
//!   siblings under M's and T's deepest common ancestor (a reference between a module
//!   and one of its ancestors is not an edge; `#[cfg(test)]` inline modules are not
//!   read);
//! - the word `unsafe` (outside comments and string literals) only in the files of
//!   [`UNSAFE_ALLOWED`], and each library's `lib.rs` starts with
//!   `#![deny(unsafe_code)]` or `#![forbid(unsafe_code)]`.
//!
//! Pure Rust, no dependency: it reads the files from `CARGO_MANIFEST_DIR`. Each failure
//! names the file, or the modules of the cycle with the lines that make its edges.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The source directories checked, one per crate.
const CRATES: [&str; 4] = ["src", "recorder/src", "analyzer/src", "format/src"];

/// The longest a source file may be.
const MAX_LINES: usize = 1500;

/// Files allowed to be longer: the codec, whose encoder and decoder mirror each other.
const LONG_FILES_ALLOWED: [&str; 1] = ["format/src/wire.rs"];

/// Where `unsafe` may appear, and how many times (`None`: any number).
///
/// - `recorder/src/sys.rs`: every system interface of the recorder (ptrace, process
///   memory, shared mappings, signals);
/// - `analyzer/src/platform.rs`: the analyzer's few OS calls;
/// - `format/src/record.rs`: one block, `clear_records` (`set_len(0)` on records that
///   own nothing);
/// - `format/src/wire.rs`: the decoder's fast path (unchecked reads of the padded
///   payload, records written in place), each block under its own
///   `#[allow(unsafe_code)]` with its SAFETY argument. Pinned: a new one is a decision,
///   made by raising the count here.
const UNSAFE_ALLOWED: [(&str, Option<usize>); 4] = [
    ("recorder/src/sys.rs", None),
    ("analyzer/src/platform.rs", None),
    ("format/src/record.rs", Some(1)),
    ("format/src/wire.rs", Some(6)),
];

/// The crate roots, which must deny `unsafe_code`.
const LIBS: [&str; 4] = [
    "src/main.rs",
    "recorder/src/lib.rs",
    "analyzer/src/lib.rs",
    "format/src/lib.rs",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `.rs` files under `dir`, sorted.
fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A file's path from the repository root, with `/` separators.
fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `text` with its comments (line, block, doc), string literals (plain, byte, raw) and
/// char literals replaced by spaces, line breaks kept: what is left is code, on the
/// lines it was on.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let prev_ident = i > 0 && is_ident(b[i - 1]);
        if b[i..].starts_with(b"//") {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if !prev_ident && (b[i] == b'r' || b[i..].starts_with(b"br")) && {
            let k = i + if b[i] == b'r' { 1 } else { 2 };
            let hashes = b[k..].iter().take_while(|&&c| c == b'#').count();
            b.get(k + hashes) == Some(&b'"')
        } {
            // A raw string: r"..." or r#"..."# (any number of #), maybe b-prefixed.
            let k = i + if b[i] == b'r' { 1 } else { 2 };
            let hashes = b[k..].iter().take_while(|&&c| c == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = k + hashes + 1;
            let end = b[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |n| body + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}', multi-byte 'é') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                let end = (j + 1).min(b.len());
                blank(&mut out, i, end);
                i = end;
            } else if let Some(c) = text[i + 1..].chars().next() {
                let after = i + 1 + c.len_utf8();
                if b.get(after) == Some(&b'\'') {
                    blank(&mut out, i, after + 1);
                    i = after + 1;
                } else {
                    i += 1;
                }
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8: only whole literals are replaced")
}

/// `code` (from [`code_only`]) with every `#[cfg(test)]` inline module blanked.
fn without_test_modules(code: &str) -> String {
    let b = code.as_bytes();
    let mut out = b.to_vec();
    let mut from = 0;
    while let Some(n) = code[from..].find("#[cfg(test)]") {
        let at = from + n;
        from = at + 1;
        let rest = code[at + "#[cfg(test)]".len()..].trim_start();
        let Some(rest) = rest.strip_prefix("mod ") else {
            continue;
        };
        let name_len = rest.bytes().take_while(|&c| is_ident(c)).count();
        if !rest[name_len..].trim_start().starts_with('{') {
            continue; // `mod tests;`: a file of its own
        }
        let open = code.len() - rest[name_len..].trim_start().len();
        let mut depth = 0;
        let mut end = b.len();
        for (j, &c) in b.iter().enumerate().skip(open) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        for c in &mut out[at..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end;
    }
    String::from_utf8(out).expect("only ASCII blanked")
}

/// Line numbers (from 1) where the word `unsafe` appears in `code`.
fn unsafe_lines(code: &str) -> Vec<usize> {
    let b = code.as_bytes();
    let mut lines = Vec::new();
    let mut from = 0;
    while let Some(n) = code[from..].find("unsafe") {
        let at = from + n;
        let end = at + "unsafe".len();
        if (at == 0 || !is_ident(b[at - 1])) && (end == b.len() || !is_ident(b[end])) {
            lines.push(code[..at].matches('\n').count() + 1);
        }
        from = end;
    }
    lines
}

/// A module path from its crate's root (`[]`: the root).
type Module = Vec<String>;

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "(crate root)".to_string()
    } else {
        m.join("::")
    }
}

/// The module of each file of a crate (`a/b.rs` and `a/b/mod.rs`: `a::b`; `lib.rs`,
/// `main.rs`: the root).
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Module = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main")
        || parts.last().is_some_and(|p| p == "mod")
    {
        parts.pop();
    }
    parts
}

/// The paths starting with `crate` or `super` in `code`, with their line, `use` groups
/// expanded (`crate::a::{b::C, d}`: `crate::a::b::C` and `crate::a::d`).
fn module_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts_word = i == 0 || !is_ident(b[i - 1]);
        let kw = ["crate", "super"].into_iter().find(|k| {
            starts_word && code[i..].starts_with(k) && code[i + k.len()..].starts_with("::")
        });
        let Some(kw) = kw else {
            i += 1;
            continue;
        };
        let line = code[..i].matches('\n').count() + 1;
        let mut paths = Vec::new();
        let end = parse_tree(b, i + kw.len(), vec![kw.to_string()], &mut paths);
        out.extend(paths.into_iter().map(|p| (line, p)));
        i = end.max(i + kw.len());
    }
    out
}

/// Parses `(::segment)* (::{tree, ...})?` after `prefix`, from `i`; pushes the full
/// paths into `out` and returns where the path ends.
fn parse_tree(
    b: &[u8],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        let j = skip_ws(i);
        if !b[j..].starts_with(b"::") {
            break;
        }
        let k = skip_ws(j + 2);
        if b.get(k) == Some(&b'{') {
            // A group: trees separated by commas, up to the matching brace.
            let mut p = k + 1;
            loop {
                p = skip_ws(p);
                match b.get(p) {
                    None => return p,
                    Some(b'}') => return p + 1,
                    Some(b',') => p += 1,
                    _ => {
                        let seg_end = p + b[p..].iter().take_while(|&&c| is_ident(c)).count();
                        if seg_end == p {
                            p += 1; // `*` or something unexpected
                            continue;
                        }
                        let seg = String::from_utf8_lossy(&b[p..seg_end]).into_owned();
                        let mut path = prefix.clone();
                        if seg != "self" {
                            path.push(seg);
                        }
                        p = parse_tree(b, seg_end, path, out);
                        // `as alias`
                        let q = skip_ws(p);
                        if b[q..].starts_with(b"as")
                            && b.get(q + 2).is_some_and(|c| c.is_ascii_whitespace())
                        {
                            let r = skip_ws(q + 2);
                            p = r + b[r..].iter().take_while(|&&c| is_ident(c)).count();
                        }
                    }
                }
            }
        }
        let seg_end = k + b[k..].iter().take_while(|&&c| is_ident(c)).count();
        if seg_end == k {
            break; // `::*`, `::<T>`
        }
        prefix.push(String::from_utf8_lossy(&b[k..seg_end]).into_owned());
        i = seg_end;
    }
    out.push(prefix);
    i
}

/// A reference making an edge: the file, its line, the path written there.
type Witness = (String, usize, String);

/// The edges between sibling modules that `modules` (module -> (file name, code))
/// make, with the first reference that makes each.
fn sibling_edges(
    modules: &BTreeMap<Module, (String, String)>,
) -> BTreeMap<(Module, Module), Witness> {
    let mut edges = BTreeMap::new();
    for (m, (file, code)) in modules {
        for (line, path) in module_paths(&without_test_modules(code)) {
            let mut target: Module = if path[0] == "crate" {
                path[1..].to_vec()
            } else {
                let mut base = m.clone();
                let mut rest = &path[..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                base
            };
            // The longest prefix that is a module: the rest names an item.
            while !target.is_empty() && !modules.contains_key(&target) {
                target.pop();
            }
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == target.len() {
                continue; // the same module, or an ancestor and its descendant
            }
            edges
                .entry((m[..=common].to_vec(), target[..=common].to_vec()))
                .or_insert_with(|| (file.clone(), line, path.join("::")));
        }
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<(Module, Module), Witness>) -> Vec<Vec<Module>> {
    struct Tarjan<'a> {
        graph: BTreeMap<&'a Module, Vec<&'a Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a Module) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).cloned().unwrap_or_default() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[v].min(self.low[w]);
                    self.low.insert(v, l);
                } else if self.on_stack.contains(w) {
                    let l = self.low[v].min(self.index[w]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                loop {
                    let w = self.stack.pop().expect("v is on the stack");
                    self.on_stack.remove(w);
                    comp.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for (a, b) in edges.keys() {
        t.graph.entry(a).or_default().push(b);
    }
    let nodes: Vec<&Module> = t.graph.keys().copied().collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

/// One line per cycle of `modules`, naming its modules and the references making its
/// edges.
fn cycle_report(crate_dir: &str, modules: &BTreeMap<Module, (String, String)>) -> Vec<String> {
    let edges = sibling_edges(modules);
    cycles(&edges)
        .into_iter()
        .map(|comp| {
            let names: Vec<String> = comp.iter().map(|m| show(m)).collect();
            let members: BTreeSet<&Module> = comp.iter().collect();
            let why: Vec<String> = edges
                .iter()
                .filter(|((a, b), _)| members.contains(a) && members.contains(b))
                .map(|((a, b), (file, line, path))| {
                    format!("    {} -> {}: {file}:{line} `{path}`", show(a), show(b))
                })
                .collect();
            format!(
                "import cycle in {crate_dir} between {}:\n{}",
                names.join(", "),
                why.join("\n")
            )
        })
        .collect()
}

fn crate_modules(crate_dir: &str) -> BTreeMap<Module, (String, String)> {
    let src = root().join(crate_dir);
    rs_files(&src)
        .into_iter()
        .map(|f| (module_of(&src, &f), (rel(&f), code_only(&read(&f)))))
        .collect()
}

#[test]
fn no_file_is_over_1500_lines() {
    let mut long = Vec::new();
    for dir in CRATES {
        for f in rs_files(&root().join(dir)) {
            let name = rel(&f);
            let lines = read(&f).lines().count();
            if lines > MAX_LINES && !LONG_FILES_ALLOWED.contains(&name.as_str()) {
                long.push(format!(
                    "{name}: {lines} lines (at most {MAX_LINES}: split it by job)"
                ));
            }
        }
    }
    assert!(long.is_empty(), "files too long:\n{}", long.join("\n"));
}

#[test]
fn no_import_cycles_between_sibling_modules() {
    let mut found = Vec::new();
    for dir in CRATES {
        let modules = crate_modules(dir);
        assert!(modules.len() > 1, "{dir}: no modules found");
        found.extend(cycle_report(dir, &modules));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn unsafe_stays_where_it_is_allowed() {
    let mut wrong = Vec::new();
    for (file, _) in UNSAFE_ALLOWED {
        assert!(
            root().join(file).is_file(),
            "{file} is in UNSAFE_ALLOWED but does not exist"
        );
    }
    for dir in CRATES {
        for f in rs_files(&root().join(dir)) {
            let name = rel(&f);
            let lines = unsafe_lines(&code_only(&read(&f)));
            if lines.is_empty() {
                continue;
            }
            let at = lines
                .iter()
                .map(|l| format!("{name}:{l}"))
                .collect::<Vec<_>>()
                .join(", ");
            match UNSAFE_ALLOWED.iter().find(|(file, _)| *file == name) {
                None => wrong.push(format!("`unsafe` outside the allowed files: {at}")),
                Some((_, Some(max))) if lines.len() > *max => wrong.push(format!(
                    "{name}: {} `unsafe` where {max} are allowed (tests/architecture.rs): {at}",
                    lines.len()
                )),
                Some(_) => {}
            }
        }
    }
    for lib in LIBS {
        let code = code_only(&read(&root().join(lib)));
        let first: String = code.split_whitespace().collect::<Vec<_>>().concat();
        if !(first.starts_with("#![deny(unsafe_code)]")
            || first.starts_with("#![forbid(unsafe_code)]"))
        {
            wrong.push(format!(
                "{lib} does not start with #![deny(unsafe_code)] or #![forbid(unsafe_code)]"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The rules' machinery on small made-up crates: each rule can fail.
#[test]
fn the_checks_catch_what_they_should() {
    let crate_of = |files: &[(&[&str], &str)]| -> BTreeMap<Module, (String, String)> {
        files
            .iter()
            .map(|(m, text)| {
                let m: Module = m.iter().map(|s| s.to_string()).collect();
                (m.clone(), (format!("{}.rs", show(&m)), code_only(text)))
            })
            .collect()
    };
    // a <-> b through a use group, between siblings under `x`.
    let cyclic = crate_of(&[
        (&[], "mod x; mod c;"),
        (&["x"], "mod a; mod b; pub use super::c::C;"),
        (&["x", "a"], "use crate::x::{b::B, self};\npub struct A;"),
        (&["x", "b"], "pub struct B(super::a::A);"),
        (&["c"], "pub struct C;"),
    ]);
    let report = cycle_report("made-up", &cyclic);
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].contains("between x::a, x::b:"), "{}", report[0]);
    assert!(
        report[0].contains("x::a -> x::b: x::a.rs:1 `crate::x::b::B`"),
        "{}",
        report[0]
    );
    // Without it, x -> c (x's own reference) and c -> x::a: a cycle between the
    // siblings x and c.
    let mut other = cyclic.clone();
    other.insert(
        vec!["x".into(), "b".into()],
        ("x::b.rs".into(), "pub struct B;".into()),
    );
    other.insert(
        vec!["c".into()],
        ("c.rs".into(), "use crate::x::a::A; pub struct C;".into()),
    );
    let report = cycle_report("made-up", &other);
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].contains("between c, x:"), "{}", report[0]);
    assert!(
        report[0].contains("c -> x: c.rs:1 `crate::x::a::A`"),
        "{}",
        report[0]
    );
    assert!(
        report[0].contains("x -> c: x.rs:1 `super::c::C`"),
        "{}",
        report[0]
    );
    // Parent/child references, comments, strings and unit tests make no edge.
    let fine = crate_of(&[
        (&[], "mod a; mod b; pub use a::A;"),
        (&["a"], "use crate::b::B; // crate::b is fine\n pub struct A(B);"),
        (
            &["b"],
            "use super::{self as me}; const S: &str = \"crate::a::A\";\nconst R: &str = r#\"super::a\"#;\n\
             #[cfg(test)]\nmod tests { use crate::a::A; fn f() { if true {} } }\npub struct B;",
        ),
    ]);
    assert_eq!(cycle_report("made-up", &fine), Vec::<String>::new());
    assert_eq!(
        sibling_edges(&fine).keys().collect::<Vec<_>>(),
        vec![&(vec!["a".to_string()], vec!["b".to_string()])]
    );
    // `unsafe` as a word of code only.
    let code = code_only("// unsafe\nlet s = \"unsafe\";\n#![deny(unsafe_code)]\nlet c = '\"';\nunsafe { x() }\n/* unsafe */");
    assert_eq!(unsafe_lines(&code), vec![5]);
    assert!(unsafe_lines(&code_only("fn f<'a>(x: &'a u8) { unsafe {} }")) == vec![1]);
}
