//! Reading the ELF files mapped into the tracee.
//!
//! The recorder must find, in every module the tracee loads, the allocator
//! entry points to break on (`malloc`, `free`, `operator new`, ...), the
//! dynamic linker's `_dl_debug_state` hook that announces `dlopen`/`dlclose`,
//! the `PT_LOAD` segments that say where the module lands in memory, and the
//! `.eh_frame`/`.eh_frame_hdr` unwind tables that the unwinder reads on every
//! allocation. [`ElfModule`] parses a file (or a memory image, for the vDSO)
//! once with `object`, keeps the file mapped (or the bytes, for an image read from
//! memory) in an [`Arc`] so that unwind sections can be handed to the unwinder
//! without copying, and answers all of these
//! questions with link-time addresses ("SVMAs"); the caller adds the load
//! bias computed by [`ElfModule::load_bias`].
//!
//! Nothing here talks to the tracee: inputs are files, byte buffers and the
//! parsed `/proc/PID/maps` of [`crate::procfs::maps`].

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use heaptape_format::Segment;
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Sym};
use object::{Endianness, Object, ObjectSection};

use super::catalogue::{ranked_spec, resource_call, HookSymbol, ResourceHook};
use super::PAGE_SIZE;
use crate::procfs::maps::MapEntry;
use crate::sys::MappedFile;

/// Errors from reading an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed ELF file.
    #[error("parsing ELF {name}: {source}")]
    Parse {
        /// The module name.
        name: String,
        /// The cause.
        source: object::Error,
    },
    /// A well-formed ELF file that is not for x86_64 Linux (64-bit).
    #[error("{name}: unsupported ELF ({what})")]
    Unsupported {
        /// The module name.
        name: String,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// A module's bytes: its file, mapped, or an image held in memory.
#[derive(Debug)]
pub enum ModuleBytes {
    /// A file mapped read-only: pages are read as they are used.
    Mapped(MappedFile),
    /// Bytes held in memory (the vDSO read from the tracee, a decompressed section).
    Owned(Box<[u8]>),
}

impl Deref for ModuleBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ModuleBytes::Mapped(m) => m,
            ModuleBytes::Owned(b) => b,
        }
    }
}

/// A byte range of a shared buffer: how section data is handed to the
/// unwinder without copying it out of the file image.
#[derive(Clone, Debug)]
pub struct SectionBytes {
    data: Arc<ModuleBytes>,
    range: Range<usize>,
}

impl SectionBytes {
    /// A slice of `data`; `None` if `range` is out of bounds.
    pub fn new(data: Arc<ModuleBytes>, range: Range<usize>) -> Option<Self> {
        if range.start > range.end || range.end > data.len() {
            return None;
        }
        Some(Self { data, range })
    }
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // In bounds by construction.
        &self.data[self.range.clone()]
    }
}

/// A `PT_LOAD` program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Link-time virtual address (`p_vaddr`).
    pub vaddr: u64,
    /// Size in memory (`p_memsz`).
    pub memsz: u64,
    /// Offset in the file (`p_offset`).
    pub offset: u64,
    /// Size in the file (`p_filesz`).
    pub filesz: u64,
    /// `p_flags`: `PF_X` = 1, `PF_W` = 2, `PF_R` = 4.
    pub flags: u32,
}

impl LoadSegment {
    /// Protection bits in the trace format's encoding (1 = read, 2 = write,
    /// 4 = execute), converted from `p_flags`.
    pub fn prot(&self) -> u8 {
        let mut prot = 0;
        if self.flags & elf::PF_R.0 != 0 {
            prot |= 1;
        }
        if self.flags & elf::PF_W.0 != 0 {
            prot |= 2;
        }
        if self.flags & elf::PF_X.0 != 0 {
            prot |= 4;
        }
        prot
    }

    /// Whether the segment is executable.
    pub fn is_exec(&self) -> bool {
        self.flags & elf::PF_X.0 != 0
    }
}

/// A section's link-time address range and where its bytes are in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionRange {
    /// Link-time address range.
    pub svma: Range<u64>,
    /// Byte range in the file image.
    pub file: Range<usize>,
}

/// A function symbol, for [`ElfModule::symbolize`].
#[derive(Clone, Debug)]
struct FuncSym {
    addr: u64,
    size: u64,
    name: String,
}

/// A parsed ELF module: its identity, load segments, unwind sections and
/// symbol-derived facts, with the file image kept in memory.
#[derive(Debug)]
pub struct ElfModule {
    name: String,
    data: Arc<ModuleBytes>,
    build_id: Option<Vec<u8>>,
    is_dyn: bool,
    entry: u64,
    segments: Vec<LoadSegment>,
    text: Option<SectionRange>,
    eh_frame: Option<SectionRange>,
    eh_frame_hdr: Option<SectionRange>,
    got: Option<Range<u64>>,
    relro: Option<Range<u64>>,
    debug_frame: Option<Arc<ModuleBytes>>,
    symbols: OnceLock<Vec<FuncSym>>,
}

/// Parse the file image; every other method re-parses from `data` when it
/// needs the symbol tables (cheap: `object` parses lazily).
fn parse<'d>(name: &str, data: &'d [u8]) -> Result<ElfFile64<'d, Endianness>, ElfError> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(|source| ElfError::Parse {
        name: name.to_string(),
        source,
    })?;
    let endian = file.endian();
    if file.elf_header().e_machine(endian) != elf::EM_X86_64 {
        return Err(ElfError::Unsupported {
            name: name.to_string(),
            what: "not x86_64",
        });
    }
    Ok(file)
}

fn section_range(file: &ElfFile64<'_, Endianness>, name: &str) -> Option<SectionRange> {
    let section = file.section_by_name(name)?;
    let (offset, size) = section.file_range()?;
    if size == 0 {
        return None;
    }
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    if end > file.data().len() {
        return None;
    }
    let addr = section.address();
    Some(SectionRange {
        svma: addr..addr.checked_add(size)?,
        file: start..end,
    })
}

/// Read a DWARF EH pointer at `pos` in `bytes` (whose first byte has address
/// `addr`), for the `eh_frame_ptr` of `.eh_frame_hdr`.
fn read_eh_pointer(bytes: &[u8], pos: usize, addr: u64, encoding: u8) -> Option<u64> {
    let field = |n: usize| bytes.get(pos..pos.checked_add(n)?);
    let value: i128 = match encoding & 0x0f {
        0x00 => i128::from(u64::from_le_bytes(field(8)?.try_into().ok()?)),
        0x03 => i128::from(u32::from_le_bytes(field(4)?.try_into().ok()?)),
        0x04 => i128::from(u64::from_le_bytes(field(8)?.try_into().ok()?)),
        0x0b => i128::from(i32::from_le_bytes(field(4)?.try_into().ok()?)),
        0x0c => i128::from(i64::from_le_bytes(field(8)?.try_into().ok()?)),
        _ => return None,
    };
    let base: i128 = match encoding & 0x70 {
        0x00 => 0,
        0x10 => i128::from(addr) + pos as i128,
        _ => return None,
    };
    u64::try_from(base + value).ok()
}

impl ElfModule {
    /// Map and parse the file at `path`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ElfError> {
        let path = path.as_ref();
        let io = |source| ElfError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let data = MappedFile::new(&file).map_err(io)?;
        Self::parse_bytes(path.display().to_string(), ModuleBytes::Mapped(data))
    }

    /// Parse an ELF image held in memory, e.g. the `[vdso]` mapping read from
    /// the tracee (whose file offsets equal its link-time addresses).
    pub fn from_bytes(name: impl Into<String>, data: Vec<u8>) -> Result<Self, ElfError> {
        Self::parse_bytes(name.into(), ModuleBytes::Owned(data.into_boxed_slice()))
    }

    fn parse_bytes(name: String, data: ModuleBytes) -> Result<Self, ElfError> {
        let data = Arc::new(data);
        let file = parse(&name, &data)?;
        let endian = file.endian();
        let header = file.elf_header();
        let e_type = header.e_type(endian);
        let is_dyn = e_type == elf::ET_DYN;
        if !is_dyn && e_type != elf::ET_EXEC {
            return Err(ElfError::Unsupported {
                name,
                what: "neither ET_EXEC nor ET_DYN",
            });
        }
        let entry = header.e_entry(endian);
        let segments: Vec<LoadSegment> = file
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .map(|ph| LoadSegment {
                vaddr: ph.p_vaddr(endian),
                memsz: ph.p_memsz(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                flags: ph.p_flags(endian).0,
            })
            .collect();
        let relro = file
            .elf_program_headers()
            .iter()
            .find(|ph| ph.p_type(endian) == elf::PT_GNU_RELRO)
            .map(|ph| {
                let start = ph.p_vaddr(endian);
                start..start.saturating_add(ph.p_memsz(endian))
            });
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let text = section_range(&file, ".text");
        let mut eh_frame = section_range(&file, ".eh_frame");
        let mut eh_frame_hdr = section_range(&file, ".eh_frame_hdr");
        let got = section_range(&file, ".got").map(|r| r.svma);
        let debug_frame = file
            .section_by_name(".debug_frame")
            .and_then(|s| s.uncompressed_data().ok())
            .filter(|d| !d.is_empty())
            .map(|d| Arc::new(ModuleBytes::Owned(d.into_owned().into_boxed_slice())));
        drop(file);

        let mut module = Self {
            name,
            data,
            build_id,
            is_dyn,
            entry,
            segments,
            text,
            eh_frame: None,
            eh_frame_hdr: None,
            got,
            relro,
            debug_frame,
            symbols: OnceLock::new(),
        };
        // Files without section headers (e.g. `sstrip`ed) still have
        // PT_GNU_EH_FRAME, which locates .eh_frame_hdr, which points at
        // .eh_frame.
        if eh_frame_hdr.is_none() {
            eh_frame_hdr = module.eh_frame_hdr_from_segment();
        }
        if eh_frame.is_none() {
            if let Some(hdr) = &eh_frame_hdr {
                eh_frame = module.eh_frame_from_hdr(hdr);
            }
        }
        module.eh_frame = eh_frame;
        module.eh_frame_hdr = eh_frame_hdr;
        Ok(module)
    }

    fn eh_frame_hdr_from_segment(&self) -> Option<SectionRange> {
        let file = parse(&self.name, &self.data).ok()?;
        let endian = file.endian();
        let ph = file
            .elf_program_headers()
            .iter()
            .find(|ph| ph.p_type(endian) == elf::PT_GNU_EH_FRAME)?;
        let start = usize::try_from(ph.p_offset(endian)).ok()?;
        let end = start.checked_add(usize::try_from(ph.p_filesz(endian)).ok()?)?;
        if start == end || end > self.data.len() {
            return None;
        }
        let vaddr = ph.p_vaddr(endian);
        Some(SectionRange {
            svma: vaddr..vaddr.checked_add(ph.p_filesz(endian))?,
            file: start..end,
        })
    }

    fn eh_frame_from_hdr(&self, hdr: &SectionRange) -> Option<SectionRange> {
        let bytes = self.data.get(hdr.file.clone())?;
        if bytes.len() < 4 || bytes[0] != 1 {
            return None;
        }
        let eh_frame_addr = read_eh_pointer(bytes, 4, hdr.svma.start, bytes[1])?;
        // Its length is unknown: take the rest of the containing segment's
        // file bytes (the terminator or the index bounds the parse).
        let seg = self.segments.iter().find(|s| {
            s.vaddr <= eh_frame_addr && eh_frame_addr < s.vaddr.saturating_add(s.filesz)
        })?;
        let start = usize::try_from(seg.offset + (eh_frame_addr - seg.vaddr)).ok()?;
        let end = usize::try_from(seg.offset.checked_add(seg.filesz)?).ok()?;
        if start > end || end > self.data.len() {
            return None;
        }
        let len = (end - start) as u64;
        Some(SectionRange {
            svma: eh_frame_addr..eh_frame_addr.checked_add(len)?,
            file: start..end,
        })
    }

    /// The name given at construction (the path for [`ElfModule::from_path`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole file image.
    pub fn data(&self) -> &Arc<ModuleBytes> {
        &self.data
    }

    /// The GNU build-id note's bytes, if present.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// The build id as lowercase hex, if present.
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id
            .as_ref()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether the file is `ET_DYN` (a shared object or a PIE executable),
    /// i.e. whether it can be loaded at a non-zero bias.
    pub fn is_pie(&self) -> bool {
        self.is_dyn
    }

    /// The `e_entry` field (link-time).
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The `PT_LOAD` segments, in program-header order.
    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments
    }

    /// The load bias (runtime address minus link-time address) from the
    /// module's mappings: for a `PT_LOAD` segment whose page-aligned file
    /// offset equals a mapping's offset, `mapping.start - page_down(vaddr)`.
    /// `None` if no mapping matches any segment.
    pub fn load_bias(&self, mappings: &[MapEntry]) -> Option<u64> {
        for seg in &self.segments {
            let offset = seg.offset & !(PAGE_SIZE - 1);
            let vaddr = seg.vaddr & !(PAGE_SIZE - 1);
            if let Some(m) = mappings.iter().find(|m| m.offset == offset) {
                return Some(m.start.wrapping_sub(vaddr));
            }
        }
        None
    }

    /// The `PT_LOAD` segments as trace records at `bias`: the start is the
    /// runtime address of `p_vaddr` (not page-aligned), the length `p_memsz`.
    pub fn format_segments(&self, bias: u64) -> Vec<Segment> {
        self.segments
            .iter()
            .map(|s| Segment {
                start: s.vaddr.wrapping_add(bias),
                len: s.memsz,
                file_offset: s.offset,
                prot: s.prot(),
            })
            .collect()
    }

    /// The link-time address range covered by the `PT_LOAD` segments
    /// (page-aligned at both ends).
    pub fn svma_range(&self) -> Option<Range<u64>> {
        let start = self.segments.iter().map(|s| s.vaddr).min()? & !(PAGE_SIZE - 1);
        let end = self
            .segments
            .iter()
            .map(|s| s.vaddr.saturating_add(s.memsz))
            .max()?;
        Some(start..end.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1))
    }

    /// `len` bytes of the file image at link-time address `vaddr`, when they
    /// are all inside one segment's file bytes (e.g. a function's first
    /// instruction, for [`super::relocate::displaced_copy`]).
    pub fn bytes_at_vaddr(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let seg = self
            .segments
            .iter()
            .find(|s| s.vaddr <= vaddr && vaddr < s.vaddr.saturating_add(s.filesz))?;
        let rel = vaddr - seg.vaddr;
        if rel.checked_add(len as u64)? > seg.filesz {
            return None;
        }
        let start = usize::try_from(seg.offset.checked_add(rel)?).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }

    /// `.text`'s link-time range and bytes.
    pub fn text(&self) -> Option<&SectionRange> {
        self.text.as_ref()
    }

    /// `.eh_frame`'s link-time range and bytes (found through
    /// `PT_GNU_EH_FRAME` when there are no section headers).
    pub fn eh_frame(&self) -> Option<&SectionRange> {
        self.eh_frame.as_ref()
    }

    /// `.eh_frame_hdr`'s link-time range and bytes.
    pub fn eh_frame_hdr(&self) -> Option<&SectionRange> {
        self.eh_frame_hdr.as_ref()
    }

    /// The link-time range of `PT_GNU_RELRO`: data the loader (or a static
    /// executable's start-up code) makes read-only once it is relocated.
    pub fn relro_svma(&self) -> Option<Range<u64>> {
        self.relro.clone()
    }

    /// `.got`'s link-time range (used to resolve GOT-relative CFI pointers).
    pub fn got_svma(&self) -> Option<Range<u64>> {
        self.got.clone()
    }

    /// The bytes of a section range, shared with the file image.
    pub fn section_bytes(&self, range: &SectionRange) -> Option<SectionBytes> {
        SectionBytes::new(self.data.clone(), range.file.clone())
    }

    /// `.debug_frame`, decompressed if needed (only used when there is no
    /// `.eh_frame`).
    pub fn debug_frame(&self) -> Option<SectionBytes> {
        let data = self.debug_frame.clone()?;
        let len = data.len();
        SectionBytes::new(data, 0..len)
    }

    /// Every defined function symbol of `.dynsym` and `.symtab` as
    /// `(name, value, size, is_ifunc)`.
    fn for_each_defined_function(&self, mut f: impl FnMut(&str, u64, u64, bool)) {
        let Ok(file) = parse(&self.name, &self.data) else {
            return;
        };
        let endian = file.endian();
        for table in [file.elf_dynamic_symbol_table(), file.elf_symbol_table()] {
            for sym in table.iter() {
                let st_type = sym.st_type();
                let ifunc = st_type == elf::STT_GNU_IFUNC;
                if !(st_type == elf::STT_FUNC || ifunc) || sym.is_undefined(endian) {
                    continue;
                }
                let value = sym.st_value(endian);
                if value == 0 {
                    continue;
                }
                let Ok(name) = table.symbol_name(endian, sym) else {
                    continue;
                };
                let Ok(name) = std::str::from_utf8(name) else {
                    continue;
                };
                f(name, value, sym.st_size(endian), ifunc);
            }
        }
    }

    /// The allocator entry points this module defines: every defined
    /// `STT_FUNC` symbol of `.dynsym` and `.symtab` (static executables only
    /// have `.symtab`) named like a C allocator function, a C++
    /// `operator new`/`delete`, or a C allocator function behind one of
    /// `prefixes`. One hook per address: aliases (`__libc_malloc` is not a
    /// hook name, but glibc's `aligned_alloc` and `memalign` share an
    /// address) are folded into the preferred name (C names first, then C++
    /// operators, then prefixed names; ties go to the smaller name), the
    /// others listed in [`HookSymbol::aliases`]; when the names of one address belong to
    /// more than one family (malloc's, `new`'s, `new[]`'s), its spec is
    /// [`HookSpec::shared`](super::catalogue::HookSpec::shared). `STT_GNU_IFUNC` symbols are left out (their
    /// address is the resolver, not the allocator): see
    /// [`ElfModule::ifunc_hook_names`]. Sorted by address.
    pub fn hook_symbols(&self, prefixes: &[&str]) -> Vec<HookSymbol> {
        let mut by_addr: HashMap<u64, (usize, HookSymbol)> = HashMap::new();
        self.for_each_defined_function(|name, value, size, ifunc| {
            if ifunc {
                return;
            }
            let Some((rank, spec)) = ranked_spec(name, prefixes) else {
                return;
            };
            match by_addr.get_mut(&value) {
                None => {
                    by_addr.insert(
                        value,
                        (
                            rank,
                            HookSymbol {
                                name: name.to_string(),
                                vaddr: value,
                                size,
                                spec,
                                aliases: Vec::new(),
                            },
                        ),
                    );
                }
                Some((best, hook)) => {
                    if hook.name == name || hook.aliases.iter().any(|a| a == name) {
                        return;
                    }
                    if rank < *best || (rank == *best && name < hook.name.as_str()) {
                        let old = std::mem::replace(&mut hook.name, name.to_string());
                        hook.aliases.push(old);
                        hook.spec = spec;
                        *best = rank;
                    } else {
                        hook.aliases.push(name.to_string());
                    }
                    hook.size = hook.size.max(size);
                }
            }
        });
        let mut hooks: Vec<HookSymbol> = by_addr.into_values().map(|(_, h)| h).collect();
        for h in &mut hooks {
            h.aliases.sort();
            let family = h.spec.func.family();
            h.spec.shared = h
                .aliases
                .iter()
                .any(|a| ranked_spec(a, prefixes).is_some_and(|(_, s)| s.func.family() != family));
        }
        hooks.sort_by(|a, b| a.vaddr.cmp(&b.vaddr).then_with(|| a.name.cmp(&b.name)));
        hooks
    }

    /// The descriptor and mapping functions this module defines (see
    /// `ResourceCall`), one per address.
    pub fn resource_hooks(&self) -> Vec<ResourceHook> {
        let mut by_addr: HashMap<u64, ResourceHook> = HashMap::new();
        self.for_each_defined_function(|name, value, size, ifunc| {
            if ifunc {
                return;
            }
            if let Some(call) = resource_call(name) {
                by_addr.entry(value).or_insert_with(|| ResourceHook {
                    name: name.to_string(),
                    vaddr: value,
                    size,
                    call,
                });
            }
        });
        let mut v: Vec<ResourceHook> = by_addr.into_values().collect();
        v.sort_by_key(|h| h.vaddr);
        v
    }

    /// Names of allocator functions that this module defines only as
    /// `STT_GNU_IFUNC` (not hooked by [`ElfModule::hook_symbols`]; the caller
    /// may warn about them).
    pub fn ifunc_hook_names(&self, prefixes: &[&str]) -> Vec<String> {
        let mut names = Vec::new();
        self.for_each_defined_function(|name, _, _, ifunc| {
            if ifunc && ranked_spec(name, prefixes).is_some() && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        });
        names.sort();
        names
    }

    /// The link-time address of a defined function or object symbol (from
    /// `.dynsym`, then `.symtab`).
    pub fn symbol_address(&self, wanted: &str) -> Option<u64> {
        let file = parse(&self.name, &self.data).ok()?;
        let endian = file.endian();
        for table in [file.elf_dynamic_symbol_table(), file.elf_symbol_table()] {
            for sym in table.iter() {
                if sym.is_undefined(endian) || sym.st_value(endian) == 0 {
                    continue;
                }
                if table.symbol_name(endian, sym).ok() == Some(wanted.as_bytes()) {
                    return Some(sym.st_value(endian));
                }
            }
        }
        None
    }

    /// The link-time address of `_dl_debug_state`, the empty function the
    /// dynamic linker calls after each change to the link map (exported by
    /// `ld-linux-x86-64.so.2`; glibc 2.36 has it at 0x2060 in `.dynsym`).
    /// A breakpoint there tells the recorder when to rescan the maps.
    pub fn dl_debug_state(&self) -> Option<u64> {
        self.symbol_address("_dl_debug_state")
    }

    /// The link-time address of `_r_debug` (the `struct r_debug` whose
    /// `r_state` says whether the link map is being changed).
    pub fn r_debug(&self) -> Option<u64> {
        self.symbol_address("_r_debug")
    }

    /// The function symbol covering link-time address `vaddr`, from
    /// `.symtab` and `.dynsym` (meant for tests and diagnostics; the table is
    /// built on first use).
    pub fn symbolize(&self, vaddr: u64) -> Option<&str> {
        let syms = self.symbols.get_or_init(|| {
            let mut syms = Vec::new();
            self.for_each_defined_function(|name, addr, size, _| {
                syms.push(FuncSym {
                    addr,
                    size,
                    name: name.to_string(),
                });
            });
            // Prefer sized symbols, then the shortest name, at an address.
            syms.sort_by(|a, b| {
                a.addr
                    .cmp(&b.addr)
                    .then(b.size.cmp(&a.size))
                    .then(a.name.len().cmp(&b.name.len()))
            });
            syms.dedup_by_key(|s| s.addr);
            syms
        });
        let i = syms.partition_point(|s| s.addr <= vaddr).checked_sub(1)?;
        let s = &syms[i];
        if vaddr < s.addr.saturating_add(s.size.max(1)) {
            Some(&s.name)
        } else {
            None
        }
    }
}
