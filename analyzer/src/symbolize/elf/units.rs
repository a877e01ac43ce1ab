//! [`ModuleDwarf`]: a module's DWARF, read one compilation unit at a time where
//! `.debug_aranges` says which unit an address belongs to.
//!
//! Why: `addr2line::Context` builds its table of units by parsing the header, the
//! abbreviations and the first entry of *every* compilation unit of a module before it
//! answers anything (it does not trust `.debug_aranges` to list them all). The C
//! library's debug file has 2,063 units; a trace's stacks pass through two or three of
//! them, and building that table was ~30 ms of CPU, a fifth of analysing a 1 M-event
//! trace (see docs/PERFORMANCE.md). `.debug_aranges` maps address ranges to units
//! directly, so when it is complete this module answers an address with an
//! `addr2line::Context` made over the one unit covering it: that unit's bytes sliced
//! out of `.debug_info`, every other section shared. Such a context is built once per
//! unit and kept.
//!
//! The frames are the whole-module context's: the same code reads the same unit, and
//! the only thing a one-unit context cannot see is the rest of `.debug_info`, which is
//! why a unit is only read alone when its abbreviations use no form that points outside
//! it (`DW_FORM_ref_addr`, the supplementary-file forms, `DW_FORM_indirect`). Everything
//! else goes to the whole-module context, built on first need, exactly as before:
//!
//! * modules without `.debug_aranges`, with aranges that do not list every unit the
//!   context would index (or list something that is not one), with an unreadable
//!   aranges header, or with a supplementary (`.gnu_debugaltlink`) file;
//! * addresses that no arange covers, or that aranges of two units cover;
//! * units read alone that give no frame for the address (the whole-module context
//!   then looks at the other units its own table says cover it, as it always did).
//!
//! One difference, on damaged files only: the whole-module context fails altogether
//! when one unit's first entry cannot be read, while a unit read alone does not depend
//! on the others, so the addresses of its functions keep their frames.

use std::sync::Arc;

use gimli::{Reader as _, Section as _};

use super::{Reader, Sym, MAX_INLINE_DEPTH};
use crate::hash::FastMap;

/// A module's DWARF and the contexts made from it so far (see the module docs).
pub(super) struct ModuleDwarf {
    dwarf: Arc<gimli::Dwarf<Reader>>,
    /// The sections `dwarf` was loaded from, to make one unit's `Dwarf` from.
    sections: Vec<(gimli::SectionId, Reader)>,
    /// Which unit covers which addresses; `None` if aranges cannot be trusted for that.
    aranges: Option<Aranges>,
    /// One-unit contexts by the unit's `.debug_info` offset (`None`: the unit cannot
    /// be read alone).
    units: FastMap<usize, Option<addr2line::Context<Reader>>>,
    /// The whole-module context, once it was needed (`Some(None)`: it failed).
    full: Option<Option<addr2line::Context<Reader>>>,
}

impl ModuleDwarf {
    /// `dwarf`, loaded from `sections` (each section id with the reader it got).
    pub(super) fn new(
        dwarf: gimli::Dwarf<Reader>,
        sections: Vec<(gimli::SectionId, Reader)>,
    ) -> Self {
        let aranges = if dwarf.sup.is_none() {
            Aranges::parse(&dwarf)
        } else {
            None
        };
        ModuleDwarf {
            dwarf: Arc::new(dwarf),
            sections,
            aranges,
            units: FastMap::default(),
            full: None,
        }
    }

    /// The DWARF frames of link-time address `probe`, innermost first, all marked
    /// inlined (the caller unmarks the outermost); empty if DWARF knows nothing of it.
    pub(super) fn frames(&mut self, probe: u64) -> Vec<Sym> {
        if let Some(ctx) = self.unit_context(probe) {
            let out = context_frames(ctx, probe);
            if !out.is_empty() {
                return out;
            }
        }
        match self.full_context() {
            Some(ctx) => context_frames(ctx, probe),
            None => Vec::new(),
        }
    }

    /// The one-unit context for `probe`, if aranges name exactly one unit for it and
    /// that unit can be read alone.
    fn unit_context(&mut self, probe: u64) -> Option<&addr2line::Context<Reader>> {
        let offset = self.aranges.as_ref()?.unit_at(probe)?;
        if !self.units.contains_key(&offset) {
            // Marked first: a unit whose parsing panics is not tried again.
            self.units.insert(offset, None);
            let ctx = unit_context(&self.dwarf, &self.sections, offset);
            self.units.insert(offset, ctx);
        }
        self.units.get(&offset)?.as_ref()
    }

    /// The whole-module context, built on first call.
    fn full_context(&mut self) -> Option<&addr2line::Context<Reader>> {
        if self.full.is_none() {
            // Marked first: a context whose building panics is not tried again.
            self.full = Some(None);
            self.full = Some(addr2line::Context::from_arc_dwarf(self.dwarf.clone()).ok());
        }
        self.full.as_ref()?.as_ref()
    }
}

/// The frames `ctx` gives for `probe` (see [`ModuleDwarf::frames`]).
fn context_frames(ctx: &addr2line::Context<Reader>, probe: u64) -> Vec<Sym> {
    let mut out = Vec::new();
    if let Ok(mut frames) = ctx.find_frames(probe).skip_all_loads() {
        while let Ok(Some(frame)) = frames.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|f| f.demangle().ok())
                .map(std::borrow::Cow::into_owned);
            let mangled = frame
                .function
                .as_ref()
                .and_then(|f| f.raw_name().ok())
                .filter(|raw| Some(raw.as_ref()) != function.as_deref())
                .map(std::borrow::Cow::into_owned);
            let (file, line) = match &frame.location {
                Some(l) => (l.file.map(str::to_owned), l.line),
                None => (None, None),
            };
            out.push(Sym {
                function,
                mangled,
                file,
                line,
                inlined: true,
            });
            if out.len() == MAX_INLINE_DEPTH {
                break;
            }
        }
    }
    out
}

/// A context over the unit at `.debug_info` offset `offset` alone, if it is a
/// compilation unit whose entries refer to nothing outside it.
fn unit_context(
    dwarf: &gimli::Dwarf<Reader>,
    sections: &[(gimli::SectionId, Reader)],
    offset: usize,
) -> Option<addr2line::Context<Reader>> {
    let header = dwarf
        .debug_info
        .header_from_offset(gimli::DebugInfoOffset(offset))
        .ok()?;
    if header.type_() != gimli::UnitType::Compilation
        || !stays_in_unit(dwarf.debug_abbrev.reader(), header.debug_abbrev_offset().0)
    {
        return None;
    }
    let mut info = dwarf.debug_info.reader().clone();
    info.skip(offset).ok()?;
    info.truncate(header.length_including_self()).ok()?;
    let mut empty = info.clone();
    empty.truncate(0).ok()?;
    let unit_dwarf = gimli::Dwarf::load(|id| -> Result<Reader, gimli::Error> {
        Ok(match id {
            gimli::SectionId::DebugInfo => info.clone(),
            // The unit's ranges come from its own entry; the arange offsets would
            // not match the sliced section's anyway.
            gimli::SectionId::DebugAranges => empty.clone(),
            _ => sections
                .iter()
                .find(|(s, _)| *s == id)
                .map_or_else(|| empty.clone(), |(_, r)| r.clone()),
        })
    })
    .ok()?;
    addr2line::Context::from_dwarf(unit_dwarf).ok()
}

/// Forms whose values point outside their unit: into the rest of `.debug_info`, into a
/// supplementary file, or (`DW_FORM_indirect`) any form at all.
const OUTSIDE_FORMS: &[gimli::DwForm] = &[
    gimli::DW_FORM_ref_addr,
    gimli::DW_FORM_ref_sup4,
    gimli::DW_FORM_ref_sup8,
    gimli::DW_FORM_GNU_ref_alt,
    gimli::DW_FORM_strp_sup,
    gimli::DW_FORM_GNU_strp_alt,
    gimli::DW_FORM_indirect,
];

/// Whether the abbreviation table at `offset` of `debug_abbrev` is readable and uses
/// none of [`OUTSIDE_FORMS`].
fn stays_in_unit(debug_abbrev: &Reader, offset: usize) -> bool {
    let mut r = debug_abbrev.clone();
    r.skip(offset).is_ok() && scan_abbreviations(&mut r).unwrap_or(false)
}

fn scan_abbreviations(r: &mut Reader) -> gimli::Result<bool> {
    loop {
        if r.read_uleb128()? == 0 {
            return Ok(true);
        }
        r.read_uleb128()?; // tag
        r.read_u8()?; // children
        loop {
            let name = r.read_uleb128()?;
            let form = r.read_uleb128()?;
            if name == 0 && form == 0 {
                break;
            }
            let Ok(form) = u16::try_from(form).map(gimli::DwForm) else {
                return Ok(false);
            };
            if form == gimli::DW_FORM_implicit_const {
                r.read_sleb128()?;
            }
            if OUTSIDE_FORMS.contains(&form) {
                return Ok(false);
            }
        }
    }
}

/// Address ranges by unit, from `.debug_aranges`.
#[derive(Debug, Default)]
struct Aranges {
    /// (begin, end, unit's `.debug_info` offset), sorted by begin; never empty ranges.
    ranges: Vec<(u64, u64, usize)>,
    /// `max_end[i]`: the largest end of `ranges[..=i]`.
    max_end: Vec<u64>,
}

impl Aranges {
    /// The aranges of `dwarf`, if they list exactly the units a whole-module context
    /// would index (every unit but type and partial units) and cover something.
    fn parse(dwarf: &gimli::Dwarf<Reader>) -> Option<Aranges> {
        let mut listed = Vec::new();
        let mut ranges = Vec::new();
        let mut headers = dwarf.debug_aranges.headers();
        while let Some(header) = headers.next().ok()? {
            let unit = header.debug_info_offset().0;
            listed.push(unit);
            let mut entries = header.entries();
            // An entry that fails (an address overflow) is skipped, as addr2line does;
            // the iterator ends after an error it cannot step over.
            while let Some(entry) = entries.next().transpose() {
                if let Ok(e) = entry {
                    let r = e.range();
                    if e.length() != 0 && r.begin < r.end {
                        ranges.push((r.begin, r.end, unit));
                    }
                }
            }
        }
        listed.sort_unstable();
        listed.dedup();
        let mut indexed = Vec::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next().ok()? {
            match header.type_() {
                gimli::UnitType::Type { .. }
                | gimli::UnitType::SplitType { .. }
                | gimli::UnitType::Partial => {}
                _ => indexed.push(header.debug_info_offset()?.0),
            }
        }
        indexed.sort_unstable();
        if indexed != listed || ranges.is_empty() {
            return None;
        }
        Some(Aranges::from_ranges(ranges))
    }

    fn from_ranges(mut ranges: Vec<(u64, u64, usize)>) -> Aranges {
        ranges.sort_unstable();
        let mut max = 0;
        let max_end = ranges
            .iter()
            .map(|r| {
                max = max.max(r.1);
                max
            })
            .collect();
        Aranges { ranges, max_end }
    }

    /// The unit whose ranges hold `probe`, if exactly one unit's do.
    fn unit_at(&self, probe: u64) -> Option<usize> {
        let mut i = self.ranges.partition_point(|r| r.0 <= probe);
        let mut found = None;
        while i > 0 {
            i -= 1;
            if self.max_end.get(i).is_none_or(|&end| end <= probe) {
                break;
            }
            let (_, end, unit) = self.ranges[i];
            if probe < end {
                if found.is_some_and(|u| u != unit) {
                    return None;
                }
                found = Some(unit);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use object::{Object, ObjectSection, SectionKind};

    use super::*;
    use crate::symbolize::elf::{load_dwarf, map_file, SymbolizerOptions};

    #[test]
    fn aranges_name_one_unit_or_none() {
        let a = Aranges::from_ranges(vec![
            (0x1000, 0x1100, 1),
            (0x1100, 0x1180, 2),
            (0x1180, 0x1200, 1),
            // Overlaps: the same unit twice, then two units.
            (0x2000, 0x2100, 3),
            (0x2080, 0x2090, 3),
            (0x3000, 0x3100, 4),
            (0x30f0, 0x3200, 5),
            // A wide range (as a discarded function's at 0 might be) around others.
            (0x10, 0x20, 6),
        ]);
        let at = |p| a.unit_at(p);
        assert_eq!(at(0xfff), None);
        assert_eq!(at(0x1000), Some(1));
        assert_eq!(at(0x10ff), Some(1));
        assert_eq!(at(0x1100), Some(2));
        assert_eq!(at(0x1180), Some(1));
        assert_eq!(at(0x1200), None);
        assert_eq!(at(0x2085), Some(3));
        assert_eq!(at(0x3050), Some(4));
        assert_eq!(at(0x30f5), None, "claimed by two units");
        assert_eq!(at(0x3150), Some(5));
        assert_eq!(at(0x15), Some(6));
        assert_eq!(at(u64::MAX), None);
        let wide = Aranges::from_ranges(vec![(0, u64::MAX, 7), (0x500, 0x600, 8)]);
        assert_eq!(wide.unit_at(0x400), Some(7));
        assert_eq!(wide.unit_at(0x550), None);
        assert_eq!(Aranges::default().unit_at(0), None);
    }

    const MAIN_C: &str = r#"
#include <stdlib.h>
static inline __attribute__((always_inline)) int twice(int x) { return x * 2 + rand(); }
static inline __attribute__((always_inline)) int quad(int x) { return twice(twice(x)); }
int helper(int);
__attribute__((noinline)) int outer(int x) { return quad(x) + helper(x); }
int main(int argc, char **argv) { (void)argv; return outer(argc); }
"#;

    const HELPER_CC: &str = r#"
#include <cstdlib>
#include <vector>
namespace shapes {
template <typename T> struct Box {
    T *p;
    explicit Box(int n) : p(static_cast<T *>(std::malloc(sizeof(T) * n))) {}
    ~Box() { std::free(p); }
};
}
extern "C" __attribute__((noinline)) int helper(int n) {
    shapes::Box<long> b(n);
    std::vector<int> v(n);
    return static_cast<int>(v.size()) + (b.p != nullptr);
}
"#;

    fn run(cmd: &mut Command) {
        let out = cmd.output().expect("run the compiler");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Builds a program of a C unit and a C++ unit (`-O2 -g`, inlined calls in both)
    /// with `flags`; with `strip_one`, the C++ object loses its `.debug_aranges`.
    fn program(dir: &Path, name: &str, flags: &[&str], strip_one: bool) -> PathBuf {
        let (c, cc) = (dir.join("main.c"), dir.join("helper.cc"));
        std::fs::write(&c, MAIN_C).unwrap();
        std::fs::write(&cc, HELPER_CC).unwrap();
        let (co, cco) = (
            dir.join(format!("{name}-main.o")),
            dir.join(format!("{name}-helper.o")),
        );
        run(Command::new("gcc")
            .args(["-O2", "-g", "-c"])
            .args(flags)
            .arg(&c)
            .arg("-o")
            .arg(&co));
        run(Command::new("g++")
            .args(["-O2", "-g", "-c"])
            .args(flags)
            .arg(&cc)
            .arg("-o")
            .arg(&cco));
        if strip_one {
            run(Command::new("objcopy")
                .args(["--remove-section", ".debug_aranges"])
                .arg(&cco));
        }
        let out = dir.join(name);
        run(Command::new("g++").arg(&co).arg(&cco).arg("-o").arg(&out));
        out
    }

    fn module_dwarf(path: &Path) -> ModuleDwarf {
        let mapped = map_file(path).expect("map");
        let obj = object::File::parse(&*mapped.map).expect("parse");
        load_dwarf(&obj, path, &SymbolizerOptions::default()).expect("DWARF")
    }

    /// Resolves each of `probes` through `m` and through a whole-module context over the
    /// same DWARF; asserts they agree and returns how many had frames.
    fn assert_same_frames(m: &mut ModuleDwarf, probes: impl IntoIterator<Item = u64>) -> usize {
        let full = addr2line::Context::from_arc_dwarf(m.dwarf.clone()).expect("context");
        let mut known = 0;
        for p in probes {
            let want = context_frames(&full, p);
            assert_eq!(m.frames(p), want, "frames of {p:#x}");
            known += usize::from(!want.is_empty());
        }
        known
    }

    /// Every address of the executable sections of the file at `path`.
    fn code_addresses(path: &Path) -> Vec<u64> {
        let data = std::fs::read(path).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        obj.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .flat_map(|s| s.address()..s.address() + s.size())
            .collect()
    }

    #[test]
    fn units_read_alone_give_the_whole_module_frames_at_every_address() {
        let dir = tempfile::tempdir().unwrap();
        for (name, flags) in [("dwarf5", &[][..]), ("dwarf4", &["-gdwarf-4"][..])] {
            let prog = program(dir.path(), name, flags, false);
            let mut m = module_dwarf(&prog);
            assert!(
                m.aranges.is_some(),
                "{name}: gcc lists every unit in aranges"
            );
            let known = assert_same_frames(&mut m, code_addresses(&prog));
            assert!(known > 100, "{name}: only {known} addresses resolved");
            // Both units were read alone, and addresses outside them (the C runtime's
            // start-up code, the PLT) went to the whole-module context.
            assert_eq!(
                m.units.values().filter(|c| c.is_some()).count(),
                2,
                "{name}"
            );
            assert!(m.full.is_some(), "{name}");
        }
    }

    #[test]
    fn without_complete_aranges_the_whole_module_context_answers() {
        let dir = tempfile::tempdir().unwrap();
        let partial = program(dir.path(), "partial", &[], true);
        let none = dir.path().join("none");
        run(Command::new("objcopy")
            .args(["--remove-section", ".debug_aranges"])
            .arg(&partial)
            .arg(&none));
        for prog in [partial, none] {
            let mut m = module_dwarf(&prog);
            assert!(m.aranges.is_none(), "{}", prog.display());
            let known = assert_same_frames(&mut m, code_addresses(&prog));
            assert!(known > 100);
            assert!(m.units.is_empty());
        }
    }

    /// The system C library's separate debug file, where installed (libc6-dbg): every
    /// unit that aranges name is read alone and agrees with the whole-module context at
    /// both ends of each range and every 61st address in between.
    #[test]
    fn c_library_units_read_alone_agree() {
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(libc) = libc else {
            eprintln!("no C library found; skipped");
            return;
        };
        let module =
            match crate::symbolize::elf::load_module(libc, &[], &SymbolizerOptions::default()) {
                Ok(m) => m,
                Err(_) => return,
            };
        let Some(mut m) = module.dwarf else {
            eprintln!("no debug info for {libc}; skipped");
            return;
        };
        let Some(aranges) = &m.aranges else {
            eprintln!("{libc}: aranges incomplete; skipped");
            return;
        };
        let probes: Vec<u64> = aranges
            .ranges
            .iter()
            .flat_map(|&(begin, end, _)| (begin..end).step_by(61).chain([end - 1, end]))
            .collect();
        let known = assert_same_frames(&mut m, probes);
        assert!(known > 1000, "only {known} addresses resolved");
        assert!(m.units.values().filter(|c| c.is_some()).count() > 1000);
    }
}
