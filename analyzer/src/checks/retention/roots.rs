//! Root words in words: which variable, frame, register set or region holds each root
//! pointer of a snapshot ([`RootName`]), grouped so that the words of one variable or
//! one frame are one root of the dominator tree.

use std::cell::RefCell;
use std::ops::Range;

use heaptape_format::{RootKind, StackId};

use crate::checks::leaks::{PointerGraph, RootWord};
use crate::modules::ModuleMap;
use crate::stacks::StackTable;
use crate::symbolize::{DataSymbol, Symbolizer};

/// What holds a root pointer: one root of the dominator tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RootName {
    /// A global or static variable (a data symbol of a module).
    Global {
        /// The module's path.
        module: String,
        /// The symbol's name.
        name: String,
        /// The variable's address in the process.
        address: u64,
    },
    /// The words of a module's writable data that no data symbol covers (one root
    /// per module: a stripped library's statics).
    ModuleData {
        /// The module's path.
        module: String,
    },
    /// A frame of a thread's stack.
    Frame {
        /// The thread.
        tid: u32,
        /// Its name, empty when unknown.
        thread: String,
        /// The frame's depth: 0 is the innermost (where the thread was stopped).
        depth: u32,
        /// The frame's code address, as stack frames hold it (a return address; the
        /// innermost frame's instruction pointer plus one).
        pc: u64,
    },
    /// A thread's stack whose frames were not recorded (traces before format 4).
    Stack {
        /// The thread.
        tid: u32,
        /// Its name, empty when unknown.
        thread: String,
    },
    /// A thread's registers.
    Registers {
        /// The thread.
        tid: u32,
        /// Its name, empty when unknown.
        thread: String,
    },
    /// A thread's thread-local storage.
    Tls {
        /// The thread.
        tid: u32,
        /// Its name, empty when unknown.
        thread: String,
    },
    /// A writable anonymous mapping that holds no heap block.
    Anonymous {
        /// The mapping's start.
        start: u64,
        /// Its length.
        len: u64,
    },
}

impl RootName {
    /// The JSON name of the kind: `global`, `module_data`, `frame`, `stack`,
    /// `registers`, `tls`, `anonymous`.
    pub fn kind(&self) -> &'static str {
        match self {
            RootName::Global { .. } => "global",
            RootName::ModuleData { .. } => "module_data",
            RootName::Frame { .. } => "frame",
            RootName::Stack { .. } => "stack",
            RootName::Registers { .. } => "registers",
            RootName::Tls { .. } => "tls",
            RootName::Anonymous { .. } => "anonymous",
        }
    }

    /// The thread, for the roots that belong to one.
    pub fn thread(&self) -> Option<(u32, &str)> {
        match self {
            RootName::Frame { tid, thread, .. }
            | RootName::Stack { tid, thread }
            | RootName::Registers { tid, thread }
            | RootName::Tls { tid, thread } => Some((*tid, thread)),
            _ => None,
        }
    }
}

/// Names root words (see the module docs).
pub(super) struct RootNamer<'a> {
    graph: &'a PointerGraph,
    modules: &'a ModuleMap,
    sym: &'a dyn Symbolizer,
    /// Per thread of the snapshot: tid, name, frame starts, frame code addresses.
    threads: Vec<ThreadFrames<'a>>,
    /// The data symbol found last: its addresses and name.
    last_symbol: RefCell<Option<(Range<u64>, String)>>,
}

struct ThreadFrames<'a> {
    tid: u32,
    name: &'a str,
    starts: &'a [u64],
    pcs: Vec<u64>,
}

impl<'a> RootNamer<'a> {
    pub(super) fn new(
        graph: &'a PointerGraph,
        stacks: &StackTable,
        modules: &'a ModuleMap,
        sym: &'a dyn Symbolizer,
    ) -> Self {
        let threads = graph
            .threads()
            .iter()
            .map(|t| ThreadFrames {
                tid: t.tid,
                name: &t.name,
                starts: &t.frames,
                pcs: stacks.iter(t.stack as StackId).collect(),
            })
            .collect();
        RootNamer {
            graph,
            modules,
            sym,
            threads,
            last_symbol: RefCell::new(None),
        }
    }

    fn thread_name(&self, tid: u32) -> String {
        self.threads
            .iter()
            .find(|t| t.tid == tid)
            .map_or_else(String::new, |t| t.name.to_string())
    }

    /// The address of root word `w` (its offset in the registers for a register).
    pub(super) fn address(&self, w: RootWord) -> u64 {
        self.graph.regions()[w.region as usize]
            .start
            .wrapping_add(w.offset)
    }

    /// What holds the root word `w`.
    pub(super) fn name(&self, w: RootWord) -> RootName {
        let region = &self.graph.regions()[w.region as usize];
        let address = region.start.wrapping_add(w.offset);
        match &region.kind {
            RootKind::Registers { tid } => RootName::Registers {
                tid: *tid,
                thread: self.thread_name(*tid),
            },
            RootKind::Tls { tid } => RootName::Tls {
                tid: *tid,
                thread: self.thread_name(*tid),
            },
            RootKind::Stack { tid } => {
                let frames = self
                    .threads
                    .iter()
                    .find(|t| t.tid == *tid && !t.starts.is_empty());
                match frames {
                    Some(t) => {
                        let depth = t
                            .starts
                            .partition_point(|&s| s <= address)
                            .saturating_sub(1)
                            .min(t.pcs.len().saturating_sub(1));
                        RootName::Frame {
                            tid: *tid,
                            thread: t.name.to_string(),
                            depth: depth as u32,
                            pc: t.pcs.get(depth).copied().unwrap_or(0),
                        }
                    }
                    None => RootName::Stack {
                        tid: *tid,
                        thread: self.thread_name(*tid),
                    },
                }
            }
            RootKind::ModuleData { path } => {
                self.global(address, path)
                    .unwrap_or_else(|| RootName::ModuleData {
                        module: path.clone(),
                    })
            }
            // A module's .bss beyond its file's last page is mapped anonymous.
            RootKind::Anonymous => match self.modules.lookup(address) {
                Some(hit) => {
                    let module = hit.module.path.clone();
                    self.global(address, &module)
                        .unwrap_or(RootName::ModuleData { module })
                }
                None => RootName::Anonymous {
                    start: region.start,
                    len: region.len,
                },
            },
        }
    }

    /// The global variable of module `module` that `address` lies in, if a data symbol
    /// covers it.
    fn global(&self, address: u64, module: &str) -> Option<RootName> {
        // Root words come in address order: a large array's words all fall in the
        // variable found last.
        let mut last = self.last_symbol.borrow_mut();
        if let Some((range, name)) = &*last {
            if range.contains(&address) {
                return Some(RootName::Global {
                    module: module.to_string(),
                    name: name.clone(),
                    address: range.start,
                });
            }
        }
        let DataSymbol { name, offset, size } = self.sym.data_symbol(self.modules, address)?;
        let start = address.wrapping_sub(offset);
        *last = Some((start..start.saturating_add(size), name.clone()));
        Some(RootName::Global {
            module: module.to_string(),
            name,
            address: start,
        })
    }
}
