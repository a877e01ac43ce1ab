//! Per-process module maps: which executable or library an address belongs to.
//!
//! Stacks in a trace are raw return addresses. Turning them into function names, or even
//! into `libfoo.so+0x1234`, needs to know which file was mapped where in that process,
//! and the answer differs between processes and changes at `execve` and `dlclose`. The
//! replay therefore keeps one map per process image, fed by `ModuleLoad` and
//! `ModuleUnload` records, and hands it to the [`Symbolizer`](crate::Symbolizer) together
//! with each address.
//!
//! Unloaded modules are kept (marked with the time they went away): a leak allocated from
//! a library that was later `dlclose`d still deserves a module name.
//!
//! Which paths name the C library and the dynamic loader ([`is_libc_path`],
//! [`is_loader_path`]) is decided here too, for the replay (the C library's own frees)
//! and the resource check (mappings the libraries made) alike.

use std::collections::BTreeMap;

use heaptape_format::{Segment, Timestamp};

/// One mapped executable, shared library or pseudo module (`[vdso]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Path of the file, or the pseudo name.
    pub path: String,
    /// GNU build-id (empty if the file has none).
    pub build_id: Vec<u8>,
    /// Load bias: runtime address minus link-time address.
    pub base: u64,
    /// The mapped segments.
    pub segments: Vec<Segment>,
    /// When it was mapped.
    pub loaded_ts: Timestamp,
    /// When it was unmapped, if it was.
    pub unloaded_ts: Option<Timestamp>,
}

impl Module {
    /// Whether `address` falls in one of the module's segments.
    pub fn contains(&self, address: u64) -> bool {
        self.segments
            .iter()
            .any(|s| address >= s.start && address - s.start < s.len)
    }

    /// The module's file name without its directories (`/lib/libc.so.6` → `libc.so.6`).
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// An address resolved to a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleHit<'a> {
    /// The module.
    pub module: &'a Module,
    /// The link-time address: `address - base`, what a symbol table or DWARF lookup in
    /// the module's file expects.
    pub link_address: u64,
}

/// The modules of one process image (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct ModuleMap {
    modules: Vec<Module>,
    /// Segment start → (segment end, index in `modules`), for mapped modules only.
    index: BTreeMap<u64, (u64, usize)>,
}

impl ModuleMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a module was mapped. A second load of the same path at the same
    /// base while the first is still mapped refreshes it instead of adding a copy.
    pub fn load(
        &mut self,
        ts: Timestamp,
        path: String,
        build_id: Vec<u8>,
        base: u64,
        segments: Vec<Segment>,
    ) {
        if let Some(i) = self.mapped_position(base, &path) {
            self.unindex(i);
            self.modules[i].unloaded_ts = Some(ts);
        }
        let idx = self.modules.len();
        for s in &segments {
            let end = s.start.saturating_add(s.len);
            if end > s.start {
                self.remove_overlaps(s.start, end);
                self.index.insert(s.start, (end, idx));
            }
        }
        self.modules.push(Module {
            path,
            build_id,
            base,
            segments,
            loaded_ts: ts,
            unloaded_ts: None,
        });
    }

    /// Records that the module loaded at `base` from `path` was unmapped. Returns
    /// whether such a module was mapped.
    pub fn unload(&mut self, ts: Timestamp, base: u64, path: &str) -> bool {
        match self.mapped_position(base, path) {
            Some(i) => {
                self.unindex(i);
                self.modules[i].unloaded_ts = Some(ts);
                true
            }
            None => false,
        }
    }

    fn mapped_position(&self, base: u64, path: &str) -> Option<usize> {
        self.modules
            .iter()
            .rposition(|m| m.unloaded_ts.is_none() && m.base == base && m.path == path)
    }

    fn unindex(&mut self, i: usize) {
        self.index.retain(|_, (_, idx)| *idx != i);
    }

    /// Drops index entries that overlap `[start, end)`: a new mapping replaces whatever
    /// was mapped there before.
    fn remove_overlaps(&mut self, start: u64, end: u64) {
        let doomed: Vec<u64> = self
            .index
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, _)| *s)
            .collect();
        // `take_while` above stops at the first non-overlapping segment; segments of
        // mapped modules do not overlap each other, so none is missed.
        for s in doomed {
            self.index.remove(&s);
        }
    }

    /// The module containing `address`: a mapped one if any, else the most recently
    /// unloaded one that contained it.
    pub fn lookup(&self, address: u64) -> Option<ModuleHit<'_>> {
        let idx = match self.index.range(..=address).next_back() {
            Some((_, (end, idx))) if address < *end => Some(*idx),
            _ => self.modules.iter().rposition(|m| m.contains(address)),
        }?;
        let module = &self.modules[idx];
        Some(ModuleHit {
            module,
            link_address: address.wrapping_sub(module.base),
        })
    }

    /// Every module ever loaded in this image, in load order.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }
}

/// Whether a module path names the C library (`libc.so.6`, `libc-2.31.so`).
pub fn is_libc_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so") || name.starts_with("libc-")
}

/// Whether a module path names the dynamic loader (`ld-linux-x86-64.so.2`,
/// `ld-2.31.so`).
pub fn is_loader_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("ld-linux") || (name.starts_with("ld-") && name.contains(".so"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, len: u64) -> Segment {
        Segment {
            start,
            len,
            file_offset: 0,
            prot: 5,
        }
    }

    #[test]
    fn lookup_finds_mapped_then_unloaded_modules() {
        let mut m = ModuleMap::new();
        m.load(
            1,
            "/bin/app".into(),
            vec![1],
            0,
            vec![seg(0x400000, 0x1000)],
        );
        m.load(
            2,
            "/lib/libx.so".into(),
            vec![],
            0x7f00_0000_0000,
            vec![seg(0x7f00_0000_0000, 0x2000), seg(0x7f00_0000_4000, 0x1000)],
        );
        let hit = m.lookup(0x400010).unwrap();
        assert_eq!(hit.module.file_name(), "app");
        assert_eq!(hit.link_address, 0x400010);
        let hit = m.lookup(0x7f00_0000_4008).unwrap();
        assert_eq!(hit.module.path, "/lib/libx.so");
        assert_eq!(hit.link_address, 0x4008);
        assert!(m.lookup(0x7f00_0000_3000).is_none());
        assert!(m.unload(9, 0x7f00_0000_0000, "/lib/libx.so"));
        assert!(!m.unload(9, 0x7f00_0000_0000, "/lib/libx.so"));
        let hit = m.lookup(0x7f00_0000_0008).unwrap();
        assert_eq!(hit.module.unloaded_ts, Some(9));
        // A new mapping over the old range wins.
        m.load(
            10,
            "/lib/liby.so".into(),
            vec![],
            0x7f00_0000_0000,
            vec![seg(0x7f00_0000_0000, 0x100)],
        );
        assert_eq!(
            m.lookup(0x7f00_0000_0008).unwrap().module.path,
            "/lib/liby.so"
        );
        assert_eq!(m.modules().len(), 3);
    }

    #[test]
    fn reload_of_same_module_replaces_it() {
        let mut m = ModuleMap::new();
        m.load(1, "/bin/app".into(), vec![], 0, vec![seg(0x1000, 0x1000)]);
        m.load(2, "/bin/app".into(), vec![], 0, vec![seg(0x1000, 0x1000)]);
        assert_eq!(m.modules().len(), 2);
        assert_eq!(m.lookup(0x1800).unwrap().module.loaded_ts, 2);
        assert_eq!(m.modules()[0].unloaded_ts, Some(2));
        // Degenerate segments are ignored rather than trusted.
        m.load(
            3,
            "odd".into(),
            vec![],
            0,
            vec![seg(u64::MAX, 10), seg(5, 0)],
        );
        assert!(m.lookup(5).is_none());
    }
}
