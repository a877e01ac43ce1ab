//! Symbols embedded in a trace ([`heaptape_format::Record::Symbols`]): what the
//! recorder's symbolizer said of every stack address, module by module, so that a
//! trace whose modules were rebuilt, deleted or stayed on another machine reads as it
//! did when it was recorded. [`ElfSymbolizer`](super::ElfSymbolizer) asks this table
//! before the module's files (after them with `--debug-dir` or `--sysroot`); see
//! `docs/ANALYZER.md`.
//!
//! The records are kept as decoded (each with its own string table) and an address's
//! frames are made when asked, once: the symbolizer caches them.

use std::collections::HashMap;

use heaptape_format::{ModuleSymbols, SymbolFrame};

use super::Sym;

/// The embedded symbols of a trace, by module (path, then build-id).
#[derive(Debug, Default)]
pub(crate) struct EmbeddedSymbols {
    modules: HashMap<String, HashMap<Vec<u8>, ModuleTable>>,
}

/// One module's records.
#[derive(Debug, Default)]
pub(crate) struct ModuleTable {
    parts: Vec<ModuleSymbols>,
}

impl EmbeddedSymbols {
    /// The table of `records` (from any number of [`ModuleSymbols`] records, in any
    /// order; addresses a record lists out of order are sorted, so that a damaged or
    /// hand-made record cannot make a look-up miss what it holds).
    pub(crate) fn new(records: impl IntoIterator<Item = ModuleSymbols>) -> EmbeddedSymbols {
        let mut out = EmbeddedSymbols::default();
        for mut r in records {
            if !r.addresses.is_sorted_by_key(|a| a.address) {
                r.addresses.sort_by_key(|a| a.address);
            }
            out.modules
                .entry(r.path.clone())
                .or_default()
                .entry(r.build_id.clone())
                .or_default()
                .parts
                .push(r);
        }
        out
    }

    /// Whether no module has embedded symbols.
    pub(crate) fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The table of the module recorded as `path` with `build_id`, if the trace holds
    /// one.
    pub(crate) fn module(&self, path: &str, build_id: &[u8]) -> Option<&ModuleTable> {
        self.modules.get(path)?.get(build_id)
    }
}

impl ModuleTable {
    /// The frames of link-time address `probe` (a return address minus the load bias,
    /// minus 1), innermost first; `Some(empty)` when the recorder knew nothing of it,
    /// `None` when the trace does not list it.
    pub(crate) fn lookup(&self, probe: u64) -> Option<Vec<Sym>> {
        self.parts.iter().find_map(|part| {
            let i = part
                .addresses
                .binary_search_by_key(&probe, |a| a.address)
                .ok()?;
            Some(
                part.addresses[i]
                    .frames
                    .iter()
                    .map(|f| sym(&part.strings, f))
                    .collect(),
            )
        })
    }
}

/// A frame in the symbolizer's terms; an index outside the string table is unknown.
fn sym(strings: &[String], f: &SymbolFrame) -> Sym {
    let text = |i: Option<u32>| i.and_then(|i| strings.get(i as usize)).cloned();
    Sym {
        function: text(f.function),
        mangled: text(f.mangled),
        file: text(f.file),
        line: f.line,
        inlined: f.inlined,
    }
}

/// Builds [`ModuleSymbols`] records: the strings of a module's frames interned into one
/// table per record, records cut at about [`RECORD_BUDGET`] bytes.
pub(crate) struct RecordBuilder {
    path: String,
    build_id: Vec<u8>,
    current: ModuleSymbols,
    index: HashMap<String, u32>,
    /// An estimate of the current record's encoded size.
    bytes: usize,
    done: Vec<ModuleSymbols>,
}

/// About how many encoded bytes one record holds before the next one starts (well below
/// the format's record limit; about one chunk).
pub(crate) const RECORD_BUDGET: usize = 1 << 20;

impl RecordBuilder {
    /// A builder for the module recorded as `path` with `build_id`.
    pub(crate) fn new(path: &str, build_id: &[u8]) -> RecordBuilder {
        RecordBuilder {
            path: path.to_owned(),
            build_id: build_id.to_vec(),
            current: empty(path, build_id),
            index: HashMap::new(),
            bytes: 0,
            done: Vec::new(),
        }
    }

    /// Adds `probe`'s frames (addresses must come in ascending order).
    pub(crate) fn push(&mut self, probe: u64, syms: &[Sym]) {
        if self.bytes >= RECORD_BUDGET {
            let full = std::mem::replace(&mut self.current, empty(&self.path, &self.build_id));
            self.done.push(full);
            self.index.clear();
            self.bytes = 0;
        }
        let frames = syms
            .iter()
            .map(|s| SymbolFrame {
                function: self.intern(s.function.as_deref()),
                mangled: self.intern(s.mangled.as_deref()),
                file: self.intern(s.file.as_deref()),
                line: s.line,
                inlined: s.inlined,
            })
            .collect::<Vec<_>>();
        self.bytes += 6 + frames.len() * 12;
        self.current
            .addresses
            .push(heaptape_format::SymbolizedAddress {
                address: probe,
                frames,
            });
    }

    fn intern(&mut self, text: Option<&str>) -> Option<u32> {
        let text = text?;
        if let Some(&i) = self.index.get(text) {
            return Some(i);
        }
        let i = self.current.strings.len() as u32;
        self.current.strings.push(text.to_owned());
        self.index.insert(text.to_owned(), i);
        self.bytes += text.len() + 2;
        Some(i)
    }

    /// The records (at least one, so that the module is known to have been looked at).
    pub(crate) fn finish(mut self) -> Vec<ModuleSymbols> {
        self.done.push(self.current);
        self.done
    }
}

fn empty(path: &str, build_id: &[u8]) -> ModuleSymbols {
    ModuleSymbols {
        path: path.to_owned(),
        build_id: build_id.to_vec(),
        strings: Vec::new(),
        addresses: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(f: &str, line: u32, inlined: bool) -> Sym {
        Sym {
            function: Some(f.into()),
            mangled: None,
            file: Some("/src/a.c".into()),
            line: Some(line),
            inlined,
        }
    }

    #[test]
    fn built_records_read_back_the_same() {
        let mut b = RecordBuilder::new("/bin/app", &[1, 2]);
        let a = vec![named("inner", 3, true), named("outer", 9, false)];
        b.push(0x10, &a);
        b.push(0x20, &[]);
        b.push(0x30, &a[1..]);
        let records = b.finish();
        assert_eq!(records.len(), 1);
        // Strings are shared within a record.
        assert_eq!(records[0].strings, ["inner", "/src/a.c", "outer"]);
        let t = EmbeddedSymbols::new(records);
        let m = t.module("/bin/app", &[1, 2]).expect("module");
        assert_eq!(m.lookup(0x10), Some(a.clone()));
        assert_eq!(m.lookup(0x20), Some(vec![]));
        assert_eq!(m.lookup(0x30), Some(a[1..].to_vec()));
        assert_eq!(m.lookup(0x18), None);
        assert!(t.module("/bin/app", &[]).is_none());
        assert!(t.module("/bin/other", &[1, 2]).is_none());
    }

    #[test]
    fn big_modules_are_split_and_bad_indexes_are_unknown() {
        let mut b = RecordBuilder::new("/lib/big.so", &[]);
        let long = "f".repeat(1000);
        for i in 0..3000u64 {
            b.push(i * 4, &[named(&format!("{long}{i}"), 1, false)]);
        }
        let records = b.finish();
        assert!(records.len() > 1, "{} records", records.len());
        let t = EmbeddedSymbols::new(records);
        let m = t.module("/lib/big.so", &[]).unwrap();
        for i in [0u64, 1500, 2999] {
            let f = m.lookup(i * 4).unwrap();
            assert_eq!(f[0].function.as_deref(), Some(&*format!("{long}{i}")));
        }
        // A record naming strings it does not have, addresses out of order.
        let bad = ModuleSymbols {
            path: "/x".into(),
            build_id: vec![],
            strings: vec!["f".into()],
            addresses: vec![
                heaptape_format::SymbolizedAddress {
                    address: 9,
                    frames: vec![SymbolFrame {
                        function: Some(7),
                        mangled: None,
                        file: Some(0),
                        line: None,
                        inlined: false,
                    }],
                },
                heaptape_format::SymbolizedAddress {
                    address: 1,
                    frames: vec![],
                },
            ],
        };
        let t = EmbeddedSymbols::new([bad]);
        let m = t.module("/x", &[]).unwrap();
        let f = m.lookup(9).unwrap();
        assert_eq!(
            (f[0].function.clone(), f[0].file.as_deref()),
            (None, Some("f"))
        );
        assert_eq!(m.lookup(1), Some(vec![]));
    }
}
