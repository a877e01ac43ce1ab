//! The seam between reports and symbolization.
//!
//! Reports print stacks; what a frame looks like depends on how much is known about the
//! binaries. Reports therefore never format addresses themselves: they ask a
//! [`Symbolizer`] to describe each address, given the module map of the process image
//! the stack belongs to. [`RawSymbolizer`] needs nothing but the trace and describes a
//! frame as its address and `module+offset`; a DWARF/ELF symbolizer can replace it
//! without touching the report code.

use std::fmt;

use crate::modules::ModuleMap;

/// One described frame. A symbolizer may return several for one address when calls were
/// inlined (innermost first); all of them carry the same `address`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The address from the stack.
    pub address: u64,
    /// Path of the module containing it, if known.
    pub module: Option<String>,
    /// The address relative to the module's load bias (its link-time address).
    pub module_offset: Option<u64>,
    /// Function name, if known.
    pub function: Option<String>,
    /// Source file, if known.
    pub file: Option<String>,
    /// Source line, if known.
    pub line: Option<u32>,
}

impl fmt::Display for Frame {
    /// `0x4011d6: main (app.c:12)`, `0x4011d6: app+0x11d6`, or `0x4011d6: ???`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}: ", self.address)?;
        match (&self.function, &self.module) {
            (Some(func), _) => {
                f.write_str(func)?;
                match (&self.file, self.line) {
                    (Some(file), Some(line)) => write!(f, " ({file}:{line})"),
                    (Some(file), None) => write!(f, " ({file})"),
                    _ => match (&self.module, self.module_offset) {
                        (Some(m), Some(off)) => write!(f, " ({}+{off:#x})", file_name(m)),
                        _ => Ok(()),
                    },
                }
            }
            (None, Some(m)) => match self.module_offset {
                Some(off) => write!(f, "{}+{off:#x}", file_name(m)),
                None => f.write_str(file_name(m)),
            },
            (None, None) => f.write_str("???"),
        }
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Describes addresses for reports (see the module docs).
pub trait Symbolizer {
    /// Describes `address` in the image whose modules are `modules`. `return_address`
    /// is true for every frame but the innermost: those addresses point just after a
    /// call instruction, so a line lookup should use `address - 1`.
    fn symbolize(&self, modules: &ModuleMap, address: u64, return_address: bool) -> Vec<Frame>;
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
            file: Some("app.c".into()),
            line: Some(3),
            ..Frame::default()
        };
        assert_eq!(named.to_string(), "0x10: main (app.c:3)");
    }
}
