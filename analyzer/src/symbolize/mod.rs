//! The seam between reports and symbolization.
//!
//! Reports print stacks; what a frame looks like depends on how much is known about the
//! binaries. Reports therefore never format addresses themselves: they ask a
//! [`Symbolizer`] to describe each address, given the module map of the process image
//! the stack belongs to. [`RawSymbolizer`] needs nothing but the trace and describes a
//! frame as its address and `module+offset`; [`ElfSymbolizer`] adds function names,
//! source lines and inlined frames from the modules' ELF files and DWARF, or from the
//! symbols the trace embeds (`embedded`), which [`embed_symbols`] appends to a trace
//! when it is recorded (`embed`).

use crate::modules::ModuleMap;

mod elf;
mod embed;
pub(crate) mod embedded;
mod runtime;

pub use elf::{ElfSymbolizer, SymbolizerOptions};
pub use embed::{embed_symbols, embed_symbols_of, embed_symbols_with, EmbedError, EmbedSummary};
pub use runtime::{first_program_frame, is_runtime_frame};

/// One described frame. A symbolizer may return several for one address when calls were
/// inlined (innermost first); all of them carry the same `address`. Its `Display` (memcheck's
/// wording) and every other way reports put it in words are in `report::frames`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The address from the stack.
    pub address: u64,
    /// Path of the module containing it, if known.
    pub module: Option<String>,
    /// The address relative to the module's load bias (its link-time address).
    pub module_offset: Option<u64>,
    /// Function name, if known (demangled).
    pub function: Option<String>,
    /// The function's name as the object file spells it (a mangled C++ or Rust
    /// name), when that differs from `function`: what valgrind's suppressions name.
    pub mangled: Option<String>,
    /// Source file, if known.
    pub file: Option<String>,
    /// Source line, if known.
    pub line: Option<u32>,
    /// Whether this frame is a call that the compiler inlined into the next frame (all
    /// frames of one address but the last, outermost one).
    pub inlined: bool,
    /// Why a frame in a known module has no function name, when the symbolizer knows
    /// (`None` for a named frame, or when no symbols were asked for).
    pub no_symbols: Option<NoSymbols>,
}

/// Why a frame in a module has no function name: what the reports say beside it, so
/// that the user knows what to install or point at (`--debug-dir`, `--sysroot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSymbols {
    /// The module's file is not where it was recorded (deleted, or recorded on
    /// another machine) and the trace embeds no symbols for the address.
    FileMissing,
    /// The file at the module's path is another build than the one recorded.
    Rebuilt,
    /// The file could not be read as ELF.
    Unreadable,
    /// The file has no symbol table beyond its dynamic symbols and no DWARF, and no
    /// separate debug file was found for it.
    Stripped,
    /// The module has symbols, but none covers the address.
    NoSymbolHere,
    /// The trace embeds the module's symbols, and the recorder found none for the
    /// address; the module's file here does not say why (it is gone, or another
    /// build, or it has symbols). A stripped file of the recorded build without a
    /// debug file gives [`NoSymbols::Stripped`] instead (its section headers are read,
    /// not its symbols).
    NoneWhenRecorded,
}

impl std::fmt::Display for NoSymbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoSymbols::FileMissing => "no symbols: file not found",
            NoSymbols::Rebuilt => "no symbols: the file was rebuilt since (build-id differs)",
            NoSymbols::Unreadable => "no symbols: the file is not readable ELF",
            NoSymbols::Stripped => "no symbols: stripped, no debug file found",
            NoSymbols::NoSymbolHere => "no symbol covers the address",
            NoSymbols::NoneWhenRecorded => "no symbols when recorded",
        })
    }
}

/// A global or static variable an address lies in ([`Symbolizer::data_symbol`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSymbol {
    /// Its name, demangled.
    pub name: String,
    /// How far into it the address is.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// Describes addresses for reports (see the module docs).
pub trait Symbolizer {
    /// Describes `address` in the image whose modules are `modules`. `return_address`
    /// says that the address points just after a call instruction (true of every frame
    /// of a recorded stack, the innermost included: it is where the allocator returns
    /// to), so a line lookup should use `address - 1`; the frames still report
    /// `address`.
    fn symbolize(&self, modules: &ModuleMap, address: u64, return_address: bool) -> Vec<Frame>;

    /// A hint that reports will ask about addresses in this module (the replay gives
    /// it when a recorded stack first passes through the module): a symbolizer may
    /// start loading the module's debug info in the background, so that it is ready
    /// when the replay ends. The default does nothing.
    fn preload(&self, path: &str, build_id: &[u8]) {
        let _ = (path, build_id);
    }

    /// The data symbol (a global or static variable) that `address` lies in, in the
    /// image whose modules are `modules`: memcheck's "Address 0x… is 16 bytes inside
    /// data symbol "table"". The default knows none.
    fn data_symbol(&self, modules: &ModuleMap, address: u64) -> Option<DataSymbol> {
        let _ = (modules, address);
        None
    }
}

/// One resolved frame of a module, independent of where the module was loaded: what
/// [`ElfSymbolizer`] finds in a module's files, and what a trace's embedded symbols
/// hold ([`heaptape_format::SymbolFrame`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sym {
    pub(crate) function: Option<String>,
    /// The function's raw (mangled) name when it differs from `function`.
    pub(crate) mangled: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    pub(crate) inlined: bool,
}

/// A symbolizer that only knows the module map: address and `module+offset`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawSymbolizer;

impl Symbolizer for RawSymbolizer {
    fn symbolize(&self, modules: &ModuleMap, address: u64, _return_address: bool) -> Vec<Frame> {
        let hit = modules.lookup(address);
        vec![Frame {
            address,
            module: hit.map(|h| h.module.path.clone()),
            module_offset: hit.map(|h| h.link_address),
            ..Frame::default()
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaptape_format::Segment;

    #[test]
    fn raw_frames_name_the_module() {
        let mut m = ModuleMap::new();
        m.load(
            0,
            "/usr/lib/libz.so.1".into(),
            vec![],
            0x7000,
            vec![Segment {
                start: 0x7000,
                len: 0x1000,
                file_offset: 0,
                prot: 5,
            }],
        );
        let f = RawSymbolizer.symbolize(&m, 0x7123, true);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].to_string(), "0x7123: libz.so.1+0x123");
        let f = RawSymbolizer.symbolize(&m, 0x9000, false);
        assert_eq!(f[0].to_string(), "0x9000: ???");
        let named = Frame {
            address: 0x10,
            function: Some("main".into()),
            file: Some("/src/app.c".into()),
            line: Some(3),
            ..Frame::default()
        };
        assert_eq!(named.to_string(), "0x10: main (app.c:3)");
        let symbol_only = Frame {
            address: 0x10,
            module: Some("/lib/libc.so.6".into()),
            module_offset: Some(0x10),
            function: Some("free".into()),
            ..Frame::default()
        };
        assert_eq!(symbol_only.to_string(), "0x10: free (in libc.so.6)");
    }
}
