//! [`ElfSymbolizer`]: function names, source lines and inlined frames from the ELF files
//! and DWARF debug info of the recorded modules.
//!
//! Each module of a trace is named by its path and the GNU build-id the recorder read
//! from the running process. The symbolizer opens that path (under the sysroot first, if
//! one is given), refuses a file whose build-id differs from the recorded one (its
//! addresses would give wrong lines; a warning says so once per module), and finds DWARF
//! in the file itself or in a separate debug file (see [`debug_file_candidates`]).
//! Without DWARF the ELF symbol table (`.symtab`, else `.dynsym`) still names functions.
//!
//! Every distinct (module, address) is resolved once and cached. [`ElfSymbolizer::prefetch`]
//! resolves a batch of addresses grouped by module, the modules in parallel (rayon). The
//! DWARF is read into memory once per module, lazily, and parsed one compilation unit at
//! a time where `.debug_aranges` allows it (see [`units`]); nothing of a malformed or
//! truncated file can panic the analysis: such a module's frames simply stay
//! `module+offset`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use rayon::prelude::*;

use crate::hash::FastMap;
use crate::modules::ModuleMap;
use crate::symbolize::embedded::EmbeddedSymbols;
use crate::symbolize::{DataSymbol, Frame, NoSymbols, Sym, Symbolizer};

mod units;

use units::ModuleDwarf;

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// Where to look for the files of a trace's modules and their debug info.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerOptions {
    /// Extra directories holding separate debug files, searched before the system's
    /// `/usr/lib/debug`: `DIR/.build-id/xx/yyyy.debug`, `DIR/<module dir>/<debuglink>`
    /// and `DIR/<debuglink>`.
    pub debug_dirs: Vec<PathBuf>,
    /// A directory standing for `/` of the recorded machine: module paths (and
    /// `/usr/lib/debug`) are looked up under it first, then as they are.
    pub sysroot: Option<PathBuf>,
}

/// Why a module gives no symbols.
#[derive(Debug)]
enum Unavailable {
    /// No file at the path (or a pseudo module such as `[vdso]`).
    Missing,
    /// The file is not the one that was recorded.
    BuildIdMismatch(String),
    /// The file could not be parsed.
    Unreadable,
}

/// The symbol tables and DWARF of one module file.
struct DebugModule {
    dwarf: Option<ModuleDwarf>,
    /// Function symbols sorted by start address, one per address.
    symbols: Vec<ElfSym>,
    /// Data symbols (global variables) of known size, sorted the same way.
    data: Vec<ElfSym>,
    /// Whether neither the file nor a debug file had a full symbol table or DWARF:
    /// only the dynamic symbols name functions.
    stripped: bool,
}

#[derive(Debug)]
struct ElfSym {
    start: u64,
    /// Exclusive end; equal to `start` for symbols of unknown size.
    end: u64,
    name: String,
}

enum SlotState {
    Unloaded,
    Ready(Box<DebugModule>),
    Unavailable(NoSymbols),
}

/// One (path, build-id) module and its lazily loaded debug info.
struct Slot {
    /// Its index in [`Slots::list`] (the order warnings are given in).
    index: usize,
    path: String,
    build_id: Vec<u8>,
    state: Mutex<SlotState>,
    /// Whether a background load was started ([`Symbolizer::preload`]).
    preloading: AtomicBool,
    /// Why the trace's embedded symbols name nothing at some address of the module,
    /// once asked ([`stripped_on_disk`]).
    why_embedded_unnamed: std::sync::OnceLock<NoSymbols>,
}

#[derive(Default)]
struct Slots {
    by_path: HashMap<String, HashMap<Vec<u8>, usize>>,
    list: Vec<Arc<Slot>>,
}

/// A request to resolve: the module's slot and the address to look up in it.
type Probe = (usize, u64);

/// Resolved probes: frames innermost first (empty: nothing known).
type Cache = FastMap<Probe, Arc<[Sym]>>;

/// A [`Symbolizer`] reading ELF symbol tables and DWARF (see the module docs), or the
/// symbols embedded in the trace ([`ElfSymbolizer::set_embedded`]).
pub struct ElfSymbolizer {
    options: SymbolizerOptions,
    /// The trace's embedded symbols, if it has any.
    embedded: RwLock<Arc<EmbeddedSymbols>>,
    /// Whether a module's files are asked before its embedded symbols (`--debug-dir`
    /// or `--sysroot` given: the user points at files the recording may not have had).
    prefer_files: bool,
    slots: Mutex<Slots>,
    /// (slot, probe address) → frames, innermost first (empty: nothing known).
    cache: RwLock<Cache>,
    /// (slot index, warning); shared with background loads.
    warnings: Arc<Mutex<Vec<(usize, String)>>>,
}

impl fmt::Debug for ElfSymbolizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElfSymbolizer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ElfSymbolizer {
    /// A symbolizer looking for files as `options` say.
    pub fn new(options: SymbolizerOptions) -> Self {
        ElfSymbolizer {
            prefer_files: !options.debug_dirs.is_empty() || options.sysroot.is_some(),
            options,
            embedded: RwLock::default(),
            slots: Mutex::default(),
            cache: RwLock::default(),
            warnings: Arc::default(),
        }
    }

    /// The warnings so far, in the order their modules were first asked about: one
    /// per module whose file was rejected and whose symbols the trace does not embed.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = lock(&self.warnings).clone();
        w.sort_by_key(|(slot, _)| *slot);
        let embedded = read(&self.embedded).clone();
        let slots = lock(&self.slots);
        w.into_iter()
            .filter(|(slot, _)| {
                let s = &slots.list[*slot];
                embedded.module(&s.path, &s.build_id).is_none()
            })
            .map(|(_, text)| text)
            .collect()
    }

    /// Gives the symbolizer the symbols embedded in the trace: they answer for their
    /// modules before the files do (after them when `--debug-dir` or `--sysroot` was
    /// given), and whenever a module's file is missing or was rebuilt. Frames already
    /// resolved stay as they are, so this is called before any.
    pub(crate) fn set_embedded(&self, symbols: Arc<EmbeddedSymbols>) {
        *write(&self.embedded) = symbols;
    }

    /// Whether the symbolizer has embedded symbols.
    pub(crate) fn has_embedded(&self) -> bool {
        !read(&self.embedded).is_empty()
    }

    /// Loads the symbols and debug info of the module recorded as `path` with
    /// `build_id` now, on the calling thread (`heaptape record` does it while the
    /// program runs, for the symbols it embeds at the end). Loading a module twice is
    /// never done: a second caller waits for the first.
    pub fn load_now(&self, path: &str, build_id: &[u8]) {
        let index = self.slot(path, build_id);
        let Some(slot) = lock(&self.slots).list.get(index).cloned() else {
            return;
        };
        drop(load_slot(&slot, &self.options, &self.warnings));
    }

    /// Resolves `probes` (link-time addresses minus 1, ascending) in the module
    /// recorded as `path` with `build_id`, from its files only: what a trace embeds.
    pub(crate) fn resolve_module(
        &self,
        path: &str,
        build_id: &[u8],
        probes: &[u64],
    ) -> Vec<Arc<[Sym]>> {
        self.resolve_many(self.slot(path, build_id), probes)
    }

    /// Resolves every address of `requests` (as [`Symbolizer::symbolize`] would, with
    /// `return_address` true) that is not cached yet, grouping them by module and
    /// working on the modules in parallel. Later `symbolize` calls for them are cache
    /// hits.
    pub fn prefetch<'m>(&self, requests: impl IntoIterator<Item = (&'m ModuleMap, u64)>) {
        let mut by_slot: FastMap<usize, Vec<u64>> = FastMap::default();
        {
            let cache = read(&self.cache);
            for (modules, address) in requests {
                if let Some((slot, probe)) = self.probe(modules, address, true) {
                    if !cache.contains_key(&(slot, probe)) {
                        by_slot.entry(slot).or_default().push(probe);
                    }
                }
            }
        }
        let groups: Vec<(usize, Vec<u64>)> = by_slot
            .into_iter()
            .map(|(slot, mut probes)| {
                probes.sort_unstable();
                probes.dedup();
                (slot, probes)
            })
            .collect();
        let resolved: Vec<Vec<(Probe, Arc<[Sym]>)>> = groups
            .into_par_iter()
            .map(|(slot, probes)| {
                self.resolve_many(slot, &probes)
                    .into_iter()
                    .zip(probes)
                    .map(|(syms, probe)| ((slot, probe), syms))
                    .collect()
            })
            .collect();
        let mut cache = write(&self.cache);
        for (key, syms) in resolved.into_iter().flatten() {
            cache.insert(key, syms);
        }
    }

    /// Why module `slot` names no function at an address: its files' state (loaded
    /// if it was not: the question is asked for unnamed frames only), or, for a module
    /// whose symbols the trace embeds, that the recorder found none (its files are
    /// not read for the question).
    fn why_unnamed(&self, slot: usize) -> Option<NoSymbols> {
        let slot = lock(&self.slots).list.get(slot).cloned()?;
        let embedded = !self.prefer_files
            && read(&self.embedded)
                .module(&slot.path, &slot.build_id)
                .is_some();
        if embedded && matches!(*lock(&slot.state), SlotState::Unloaded) {
            return Some(*slot.why_embedded_unnamed.get_or_init(|| {
                if stripped_on_disk(&slot.path, &slot.build_id, &self.options) {
                    NoSymbols::Stripped
                } else {
                    NoSymbols::NoneWhenRecorded
                }
            }));
        }
        let state = load_slot(&slot, &self.options, &self.warnings);
        match &*state {
            SlotState::Ready(m) if m.stripped => Some(NoSymbols::Stripped),
            SlotState::Ready(_) => Some(NoSymbols::NoSymbolHere),
            SlotState::Unavailable(why) => Some(*why),
            SlotState::Unloaded => None,
        }
    }

    /// The slot of the module containing `address` and the address to look up in it.
    fn probe(&self, modules: &ModuleMap, address: u64, return_address: bool) -> Option<Probe> {
        let hit = modules.lookup(address)?;
        let slot = self.slot(&hit.module.path, &hit.module.build_id);
        let probe = if return_address {
            hit.link_address.wrapping_sub(1)
        } else {
            hit.link_address
        };
        Some((slot, probe))
    }

    /// The slot of a module, made if new.
    fn slot(&self, path: &str, build_id: &[u8]) -> usize {
        let mut slots = lock(&self.slots);
        if let Some(&i) = slots.by_path.get(path).and_then(|m| m.get(build_id)) {
            return i;
        }
        let i = slots.list.len();
        slots.list.push(Arc::new(Slot {
            index: i,
            path: path.to_owned(),
            build_id: build_id.to_vec(),
            state: Mutex::new(SlotState::Unloaded),
            preloading: AtomicBool::new(false),
            why_embedded_unnamed: std::sync::OnceLock::new(),
        }));
        slots
            .by_path
            .entry(path.to_owned())
            .or_default()
            .insert(build_id.to_vec(), i);
        i
    }

    /// Resolves `probes` in module `slot`: from the trace's embedded symbols when they
    /// list a probe (unless files are preferred), else from the module's files (loaded
    /// if needed), else, when the files are missing or rejected, from the embedded
    /// symbols.
    fn resolve_many(&self, slot: usize, probes: &[u64]) -> Vec<Arc<[Sym]>> {
        let none = || Arc::from(Vec::new());
        let Some(slot) = lock(&self.slots).list.get(slot).cloned() else {
            return probes.iter().map(|_| none()).collect();
        };
        let embedded = read(&self.embedded).clone();
        let table = embedded.module(&slot.path, &slot.build_id);
        let mut out: Vec<Option<Arc<[Sym]>>> = match table {
            Some(t) if !self.prefer_files => {
                probes.iter().map(|&p| t.lookup(p).map(Arc::from)).collect()
            }
            _ => vec![None; probes.len()],
        };
        if out.iter().any(Option::is_none) {
            let mut state = load_slot(&slot, &self.options, &self.warnings);
            for (o, &p) in out.iter_mut().zip(probes).filter(|(o, _)| o.is_none()) {
                *o = Some(match &mut *state {
                    SlotState::Ready(m) => Arc::from(guarded(|| m.resolve(p)).unwrap_or_default()),
                    _ => table.and_then(|t| t.lookup(p)).map_or_else(none, Arc::from),
                });
            }
        }
        out.into_iter().map(|o| o.unwrap_or_else(none)).collect()
    }
}

/// Slot `slot`'s state, loaded first if it was not (under its lock, so a load that a
/// background task started is waited for, never repeated).
fn load_slot<'s>(
    slot: &'s Slot,
    options: &SymbolizerOptions,
    warnings: &Mutex<Vec<(usize, String)>>,
) -> std::sync::MutexGuard<'s, SlotState> {
    let mut state = lock(&slot.state);
    if matches!(*state, SlotState::Unloaded) {
        *state = match guarded(|| load_module(&slot.path, &slot.build_id, options)) {
            Some(Ok(m)) => SlotState::Ready(Box::new(m)),
            Some(Err(Unavailable::BuildIdMismatch(found))) => {
                lock(warnings).push((
                    slot.index,
                    format!(
                        "{}: build-id differs from the recorded one (the binary was rebuilt \
                         or replaced; {found}); its frames are shown as module+offset",
                        slot.path
                    ),
                ));
                SlotState::Unavailable(NoSymbols::Rebuilt)
            }
            Some(Err(Unavailable::Missing)) => SlotState::Unavailable(NoSymbols::FileMissing),
            Some(Err(Unavailable::Unreadable)) | None => {
                SlotState::Unavailable(NoSymbols::Unreadable)
            }
        };
    }
    state
}

impl Symbolizer for ElfSymbolizer {
    /// Loads the module's symbols and debug info on the rayon pool (inflating a module's
    /// compressed DWARF, such as the C library's debug file, takes over ten
    /// milliseconds: ready by the end of the replay instead of holding up the report).
    fn preload(&self, path: &str, build_id: &[u8]) {
        if !self.prefer_files && read(&self.embedded).module(path, build_id).is_some() {
            // The trace embeds its symbols: the file will not be read.
            return;
        }
        let index = self.slot(path, build_id);
        let Some(slot) = lock(&self.slots).list.get(index).cloned() else {
            return;
        };
        if slot.preloading.swap(true, Ordering::Relaxed) {
            return;
        }
        let options = self.options.clone();
        let warnings = self.warnings.clone();
        rayon::spawn(move || {
            drop(load_slot(&slot, &options, &warnings));
        });
    }

    fn data_symbol(&self, modules: &ModuleMap, address: u64) -> Option<DataSymbol> {
        let (slot, probe) = self.probe(modules, address, false)?;
        let slot = lock(&self.slots).list.get(slot).cloned()?;
        let state = load_slot(&slot, &self.options, &self.warnings);
        match &*state {
            SlotState::Ready(m) => guarded(|| m.data_symbol(probe)).flatten(),
            _ => None,
        }
    }

    fn symbolize(&self, modules: &ModuleMap, address: u64, return_address: bool) -> Vec<Frame> {
        let Some(hit) = modules.lookup(address) else {
            return vec![Frame {
                address,
                ..Frame::default()
            }];
        };
        let raw = Frame {
            address,
            module: Some(hit.module.path.clone()),
            module_offset: Some(hit.link_address),
            ..Frame::default()
        };
        let Some(key) = self.probe(modules, address, return_address) else {
            return vec![raw];
        };
        let cached = read(&self.cache).get(&key).cloned();
        let syms = match cached {
            Some(s) => s,
            None => {
                let s = self
                    .resolve_many(key.0, &[key.1])
                    .pop()
                    .unwrap_or_else(|| Arc::from(Vec::new()));
                write(&self.cache).insert(key, s.clone());
                s
            }
        };
        if syms.is_empty() {
            return vec![Frame {
                no_symbols: self.why_unnamed(key.0),
                ..raw
            }];
        }
        syms.iter()
            .map(|s| Frame {
                function: s.function.clone(),
                mangled: s.mangled.clone(),
                file: s.file.clone(),
                line: s.line,
                inlined: s.inlined,
                ..raw.clone()
            })
            .collect()
    }
}

/// Runs `f`, turning a panic (a bug in a parser fed odd input) into `None`.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// At most this many frames (inlined ones included) for one address.
const MAX_INLINE_DEPTH: usize = 64;

impl DebugModule {
    /// The frames of link-time address `probe`, innermost first; empty if unknown.
    fn resolve(&mut self, probe: u64) -> Vec<Sym> {
        let mut out = match &mut self.dwarf {
            Some(dwarf) => dwarf.frames(probe),
            None => Vec::new(),
        };
        let symbol = || self.symbol(probe);
        match out.last_mut() {
            Some(outer) => {
                outer.inlined = false;
                if outer.function.is_none() {
                    if let Some((name, mangled)) = symbol() {
                        outer.function = Some(name);
                        outer.mangled = mangled;
                    }
                }
            }
            None => {
                if let Some((name, mangled)) = symbol() {
                    out.push(Sym {
                        function: Some(name),
                        mangled,
                        ..Sym::default()
                    });
                }
            }
        }
        out
    }

    /// The demangled name of the data symbol containing link-time address `probe`, and
    /// how far into it `probe` is.
    fn data_symbol(&self, probe: u64) -> Option<DataSymbol> {
        let i = self.data.partition_point(|s| s.start <= probe);
        let s = self.data.get(i.checked_sub(1)?)?;
        (probe < s.end).then(|| DataSymbol {
            name: demangle(&s.name),
            offset: probe - s.start,
            size: s.end - s.start,
        })
    }

    /// The demangled name of the function symbol containing `probe`, and its raw
    /// name when that differs.
    fn symbol(&self, probe: u64) -> Option<(String, Option<String>)> {
        let i = self.symbols.partition_point(|s| s.start <= probe);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        if s.end > s.start && probe >= s.end {
            return None;
        }
        let name = demangle(&s.name);
        let mangled = (name != s.name).then(|| s.name.clone());
        Some((name, mangled))
    }
}

/// A symbol name demangled if it is a mangled C++ (`_Z`) or Rust (`_ZN`, `_R`) name.
/// Others stay as they are: the C++ demangler would read a C function named `e` as the
/// type `long double`.
fn demangle(name: &str) -> String {
    if name.starts_with("_Z") || name.starts_with("_R") {
        addr2line::demangle_auto(Cow::Borrowed(name), None).into_owned()
    } else {
        name.to_owned()
    }
}

/// A mapped file; the map lives only while the module is being loaded.
struct Mapped {
    path: PathBuf,
    map: memmap2::Mmap,
}

fn map_file(path: &Path) -> Option<Mapped> {
    let file = File::open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    // Read-only: see `crate::platform` for why mapping is sound enough.
    let map = crate::platform::map_read_only(&file).ok()?;
    Some(Mapped {
        path: path.to_owned(),
        map,
    })
}

/// The file paths standing for recorded path `path`: under the sysroot, then as is.
fn module_candidates(path: &str, options: &SymbolizerOptions) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(root) = &options.sysroot {
        out.push(root.join(path.trim_start_matches('/')));
    }
    out.push(PathBuf::from(path));
    out
}

fn load_module(
    path: &str,
    build_id: &[u8],
    options: &SymbolizerOptions,
) -> Result<DebugModule, Unavailable> {
    if path.starts_with('[') || path.is_empty() {
        return Err(Unavailable::Missing);
    }
    let mapped = module_candidates(path, options)
        .iter()
        .find_map(|p| map_file(p))
        .ok_or(Unavailable::Missing)?;
    let obj = object::File::parse(&*mapped.map).map_err(|_| Unavailable::Unreadable)?;
    let file_id = obj.build_id().ok().flatten();
    if !build_id.is_empty() && file_id != Some(build_id) {
        let found = match file_id {
            Some(id) => format!("recorded {}, found {}", hex(build_id), hex(id)),
            None => format!("recorded {}, the file has none", hex(build_id)),
        };
        return Err(Unavailable::BuildIdMismatch(found));
    }
    let has_symtab = obj.symbol_table().is_some();
    let mut symbols = function_symbols(&obj);
    let mut data = sorted_symbols(&obj, SymbolKind::Data);
    let has_dwarf = |o: &object::File<'_>| {
        o.section_by_name(".debug_info")
            .is_some_and(|s| s.size() > 0)
    };
    let dwarf = if has_dwarf(&obj) {
        load_dwarf(&obj, &mapped.path, options)
    } else {
        let debuglink = obj.gnu_debuglink().ok().flatten().map(|(name, _crc)| name);
        let candidates = debug_file_candidates(path, &mapped.path, file_id, debuglink, options);
        let mut found = None;
        for c in candidates {
            if c == mapped.path {
                continue;
            }
            let Some(dm) = map_file(&c) else { continue };
            let Ok(dobj) = object::File::parse(&*dm.map) else {
                continue;
            };
            // A debug file is only trusted if it belongs to this very build.
            if file_id.is_some() && dobj.build_id().ok().flatten() != file_id {
                continue;
            }
            if !has_dwarf(&dobj) {
                continue;
            }
            if symbols.is_empty() {
                symbols = function_symbols(&dobj);
            }
            if data.is_empty() {
                data = sorted_symbols(&dobj, SymbolKind::Data);
            }
            found = load_dwarf(&dobj, &dm.path, options);
            break;
        }
        found
    };
    data.retain(|s| s.end > s.start);
    Ok(DebugModule {
        stripped: dwarf.is_none() && !has_symtab,
        dwarf,
        symbols,
        data,
    })
}

/// Whether the module recorded as `path` with `build_id` is, on this machine, a file
/// of that build with neither a full symbol table nor DWARF, and no separate debug
/// file: why the recorder named nothing at an address of it. Reads the file's section
/// headers only (a module whose symbols the trace embeds is otherwise not read).
fn stripped_on_disk(path: &str, build_id: &[u8], options: &SymbolizerOptions) -> bool {
    let check = || {
        let mapped = module_candidates(path, options)
            .iter()
            .find_map(|p| map_file(p))?;
        let obj = object::File::parse(&*mapped.map).ok()?;
        let file_id = obj.build_id().ok().flatten();
        if build_id.is_empty() || file_id != Some(build_id) {
            return None;
        }
        let has_dwarf = obj
            .section_by_name(".debug_info")
            .is_some_and(|s| s.size() > 0);
        if obj.symbol_table().is_some() || has_dwarf {
            return Some(false);
        }
        let debuglink = obj.gnu_debuglink().ok().flatten().map(|(name, _crc)| name);
        let debug_file = debug_file_candidates(path, &mapped.path, file_id, debuglink, options)
            .into_iter()
            .any(|c| c != mapped.path && c.is_file());
        Some(!debug_file)
    };
    guarded(check).flatten().unwrap_or(false)
}

/// The DWARF of `obj` (and of its `.gnu_debugaltlink` supplementary file, if found).
fn load_dwarf(
    obj: &object::File<'_>,
    path: &Path,
    options: &SymbolizerOptions,
) -> Option<ModuleDwarf> {
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let mut sections = Vec::new();
    let mut dwarf = gimli::Dwarf::load(|id| {
        let s = section(obj, id.name(), endian)?;
        sections.push((id, s.clone()));
        Ok::<_, gimli::Error>(s)
    })
    .ok()?;
    if let Ok(Some((alt_path, alt_id))) = obj.gnu_debugaltlink() {
        let alt = alt_candidates(alt_path, alt_id, path, options)
            .into_iter()
            .find_map(|c| {
                let m = map_file(&c)?;
                let o = object::File::parse(&*m.map).ok()?;
                (o.build_id().ok().flatten() == Some(alt_id)).then_some(())?;
                gimli::Dwarf::load(|id| section(&o, id.name(), endian)).ok()
            });
        if let Some(sup) = alt {
            dwarf.set_sup(sup);
        }
    }
    Some(ModuleDwarf::new(dwarf, sections))
}

/// Sections that function, file and line lookups never read: location lists and
/// macro information (a sixth of the C library's compressed DWARF; not decompressing
/// them is time saved on every report).
const UNUSED_SECTIONS: &[&str] = &[
    ".debug_loc",
    ".debug_loclists",
    ".debug_macinfo",
    ".debug_macro",
];

/// A section's (decompressed) bytes, empty if absent, undecodable or unused.
fn section(
    obj: &object::File<'_>,
    name: &str,
    endian: gimli::RunTimeEndian,
) -> Result<Reader, gimli::Error> {
    let data: Arc<[u8]> = (!UNUSED_SECTIONS.contains(&name))
        .then(|| obj.section_by_name(name))
        .flatten()
        .and_then(|s| section_bytes(&s))
        .unwrap_or_else(|| Arc::from(Vec::new()));
    Ok(gimli::EndianArcSlice::new(data, endian))
}

/// A section's bytes, zlib-compressed ones inflated straight into their shared buffer
/// (`uncompressed_data` would inflate into a vector, which then had to be copied into
/// the `Arc`: a second buffer of several megabytes to fault in and fill, 15% of an
/// analysis of a small trace).
fn section_bytes(section: &object::Section<'_, '_>) -> Option<Arc<[u8]>> {
    let compressed = section.compressed_data().ok()?;
    if compressed.format != object::CompressionFormat::Zlib {
        return section.uncompressed_data().ok().map(|d| Arc::from(&*d));
    }
    inflate_zlib(compressed.data, compressed.uncompressed_size)
}

/// Inflates a zlib stream that declares `size` bytes; `None` if it is damaged, if it
/// does not hold exactly `size` bytes, or if `size` is more than zlib can expand its
/// input to (about 1032 to 1: a hostile header does not get a huge allocation).
fn inflate_zlib(data: &[u8], size: u64) -> Option<Arc<[u8]>> {
    let size = usize::try_from(size).ok()?;
    if size > data.len().saturating_mul(1032).saturating_add(1024) {
        return None;
    }
    let mut out: Arc<[u8]> = std::iter::repeat_n(0u8, size).collect();
    let buf = Arc::get_mut(&mut out)?;
    let mut inflater = flate2::Decompress::new(true);
    match inflater.decompress(data, buf, flate2::FlushDecompress::Finish) {
        Ok(flate2::Status::StreamEnd) if inflater.total_out() == size as u64 => Some(out),
        _ => None,
    }
}

/// Function symbols of `obj` (its `.symtab`, else its `.dynsym`), sorted by address,
/// one per address: a global name is preferred to a weak one, to a local one, then a
/// name without a leading underscore, then the shorter.
fn function_symbols(obj: &object::File<'_>) -> Vec<ElfSym> {
    sorted_symbols(obj, SymbolKind::Text)
}

/// Symbols of `kind` of `obj`, as [`function_symbols`] gives those of functions.
fn sorted_symbols(obj: &object::File<'_>, kind: SymbolKind) -> Vec<ElfSym> {
    let mut syms = ranked_symbols(obj.symbols(), kind);
    if syms.is_empty() {
        syms = ranked_symbols(obj.dynamic_symbols(), kind);
    }
    syms.sort_by(|a, b| {
        (a.0, a.2, a.3.starts_with('_'), a.3.len(), &a.3).cmp(&(
            b.0,
            b.2,
            b.3.starts_with('_'),
            b.3.len(),
            &b.3,
        ))
    });
    syms.dedup_by_key(|s| s.0);
    syms.into_iter()
        .map(|(start, size, _, name)| ElfSym {
            start,
            end: start.saturating_add(size),
            name,
        })
        .collect()
}

/// Defined symbols of `kind` as (address, size, rank: 0 global, 1 weak, 2 local, name).
fn ranked_symbols<'d: 'f, 'f>(
    iter: impl Iterator<Item = object::Symbol<'d, 'f>>,
    kind: SymbolKind,
) -> Vec<(u64, u64, u8, String)> {
    let mut out = Vec::new();
    for s in iter {
        if s.kind() != kind || !s.is_definition() || s.address() == 0 {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        if name.is_empty() {
            continue;
        }
        let rank = if s.is_weak() {
            1
        } else if s.is_global() {
            0
        } else {
            2
        };
        out.push((s.address(), s.size(), rank, name.to_owned()));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The debug directories in search order: the configured ones, the sysroot's
/// `/usr/lib/debug`, the system's.
fn debug_dirs(options: &SymbolizerOptions) -> Vec<PathBuf> {
    let mut dirs = options.debug_dirs.clone();
    if let Some(root) = &options.sysroot {
        dirs.push(root.join("usr/lib/debug"));
    }
    dirs.push(PathBuf::from("/usr/lib/debug"));
    dirs
}

/// `.build-id/xx/yyyy.debug` for `id`.
fn build_id_path(id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = id.split_first()?;
    if rest.is_empty() {
        return None;
    }
    Some(PathBuf::from(format!(
        ".build-id/{first:02x}/{}.debug",
        hex(rest)
    )))
}

/// Where a separate debug file for the module recorded as `recorded` (found at
/// `actual`) may be, in search order:
///
/// 1. `DIR/.build-id/xx/yyyy.debug` for each debug directory (the configured ones, the
///    sysroot's `/usr/lib/debug`, `/usr/lib/debug`), if the module has a build-id;
/// 2. with a `.gnu_debuglink` name `N`: `N` beside the file, in its `.debug/`
///    subdirectory, then `DIR/<the module's directory>/N` and `DIR/N` for each debug
///    directory.
pub fn debug_file_candidates(
    recorded: &str,
    actual: &Path,
    build_id: Option<&[u8]>,
    debuglink: Option<&[u8]>,
    options: &SymbolizerOptions,
) -> Vec<PathBuf> {
    let dirs = debug_dirs(options);
    let mut out = Vec::new();
    if let Some(rel) = build_id.and_then(build_id_path) {
        out.extend(dirs.iter().map(|d| d.join(&rel)));
    }
    let name = debuglink
        .and_then(|n| std::str::from_utf8(n).ok())
        .filter(|n| !n.is_empty() && !n.contains('/'));
    if let Some(name) = name {
        if let Some(dir) = actual.parent() {
            out.push(dir.join(name));
            out.push(dir.join(".debug").join(name));
        }
        let module_dir = Path::new(recorded)
            .parent()
            .map(|d| d.to_string_lossy().trim_start_matches('/').to_owned());
        for d in &dirs {
            if let Some(md) = &module_dir {
                out.push(d.join(md).join(name));
            }
            out.push(d.join(name));
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// Where the `.gnu_debugaltlink` file of a debug file at `debug_path` may be.
fn alt_candidates(
    alt_path: &[u8],
    alt_id: &[u8],
    debug_path: &Path,
    options: &SymbolizerOptions,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(rel) = build_id_path(alt_id) {
        out.extend(debug_dirs(options).iter().map(|d| d.join(&rel)));
    }
    if let Ok(p) = std::str::from_utf8(alt_path) {
        let p = Path::new(p);
        if p.is_absolute() {
            if let Some(root) = &options.sysroot {
                out.push(root.join(p.strip_prefix("/").unwrap_or(p)));
            }
            out.push(p.to_owned());
        } else if let Some(dir) = debug_path.parent() {
            out.push(dir.join(p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflate_zlib_checks_the_declared_size() {
        use std::io::Write;
        let text: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&text).expect("compress");
        let packed = z.finish().expect("compress");
        let n = text.len() as u64;
        assert_eq!(inflate_zlib(&packed, n).as_deref(), Some(&text[..]));
        // Declared too short or too long, cut off, garbage, absurd: no data.
        assert!(inflate_zlib(&packed, n - 1).is_none());
        assert!(inflate_zlib(&packed, n + 1).is_none());
        assert!(inflate_zlib(&packed[..packed.len() / 2], n).is_none());
        assert!(inflate_zlib(&[0x78, 0x9c, 0xff, 0xff], 10).is_none());
        assert!(inflate_zlib(&packed, u64::MAX).is_none());
    }

    #[test]
    fn only_mangled_names_are_demangled() {
        assert_eq!(demangle("e"), "e");
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_ZN6shapes8make_boxEi"), "shapes::make_box(int)");
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
    }

    #[test]
    fn debug_file_search_order() {
        let opts = SymbolizerOptions {
            debug_dirs: vec![PathBuf::from("/dbg")],
            sysroot: Some(PathBuf::from("/sys")),
        };
        let c = debug_file_candidates(
            "/usr/lib/libz.so.1",
            Path::new("/sys/usr/lib/libz.so.1"),
            Some(&[0xab, 0xcd, 0xef]),
            Some(b"libz.so.1.debug"),
            &opts,
        );
        let c: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            c,
            [
                "/dbg/.build-id/ab/cdef.debug",
                "/sys/usr/lib/debug/.build-id/ab/cdef.debug",
                "/usr/lib/debug/.build-id/ab/cdef.debug",
                "/sys/usr/lib/libz.so.1.debug",
                "/sys/usr/lib/.debug/libz.so.1.debug",
                "/dbg/usr/lib/libz.so.1.debug",
                "/dbg/libz.so.1.debug",
                "/sys/usr/lib/debug/usr/lib/libz.so.1.debug",
                "/sys/usr/lib/debug/libz.so.1.debug",
                "/usr/lib/debug/usr/lib/libz.so.1.debug",
                "/usr/lib/debug/libz.so.1.debug",
            ]
        );
        // No build-id, a debuglink with a slash (refused): nothing to try.
        assert!(debug_file_candidates(
            "/a/b",
            Path::new("/a/b"),
            None,
            Some(b"../x"),
            &SymbolizerOptions::default()
        )
        .is_empty());
    }

    #[test]
    fn unreadable_modules_give_raw_frames() {
        let dir = std::env::temp_dir().join(format!("heaptape-sym-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.so");
        std::fs::write(&junk, b"\x7fELF\x02\x01\x01garbage that is not an ELF file").unwrap();
        let mut m = ModuleMap::new();
        m.load(
            0,
            junk.display().to_string(),
            vec![],
            0x1000,
            vec![heaptape_format::Segment {
                start: 0x1000,
                len: 0x1000,
                file_offset: 0,
                prot: 5,
            }],
        );
        let s = ElfSymbolizer::new(SymbolizerOptions::default());
        s.prefetch([(&m, 0x1010)]);
        let f = s.symbolize(&m, 0x1010, true);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].function, None);
        assert_eq!(f[0].module_offset, Some(0x10));
        assert!(s.warnings().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
