//! Making a trace self-contained: [`embed_symbols`] appends to a finished trace the
//! symbols of every address its stacks hold (`heaptape record` does it when the
//! recording ends, unless `--no-symbolize`).
//!
//! Which addresses: every [`Record::StackNode`] address of the trace, in every module
//! instance (a module loaded by some process at some base) whose segments contain it.
//! A node is not tied to a process in the trace (the stack trie is shared), so an
//! address is resolved in each module any process had there: a superset of what the
//! reports ask (a report resolves an address in the module map of the image whose
//! events name the stack), so every frame any report prints is embedded. Pseudo modules
//! (`[vdso]`) have no file and are left out.
//!
//! How: one pass over the trace reading only stack nodes and module loads (chunks
//! decoded on the rayon pool), a sweep of the sorted addresses over the sorted segments,
//! then [`ElfSymbolizer`] resolves each module's addresses from its files (the modules
//! in parallel), exactly as an analysis would, and [`TraceAppender`] writes them as
//! [`Record::Symbols`] records before the trace's end record. Addresses the files say
//! nothing about are listed too, with no frames, so that an analysis never needs the
//! file for them.

use std::path::Path;
use std::sync::Arc;

use heaptape_format::{
    AppendError, ModuleLoad, ReadError, Record, Segment, TraceAppender, TraceReader,
};
use rayon::prelude::*;

use super::embedded::RecordBuilder;
use super::{ElfSymbolizer, Sym, SymbolizerOptions};

/// What [`embed_symbols`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmbedSummary {
    /// Modules whose addresses were looked up.
    pub modules: usize,
    /// (module, address) pairs embedded.
    pub addresses: usize,
    /// Those with at least a function name.
    pub named: usize,
    /// `Symbols` records written.
    pub records: usize,
    /// The trace's length before and after, in bytes.
    pub bytes_before: u64,
    /// See `bytes_before`.
    pub bytes_after: u64,
    /// Whether the trace already held symbols (then nothing was done).
    pub already: bool,
}

/// Why symbols could not be embedded (the trace is then as it was).
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The trace could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The symbols could not be appended.
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// Chunks decoded at once while collecting.
const BATCH: usize = 16;

/// What one pass over the trace finds.
#[derive(Default)]
struct Collected {
    addresses: Vec<u64>,
    modules: Vec<ModuleLoad>,
    has_symbols: bool,
}

impl Collected {
    fn take(&mut self, rec: Record) {
        match rec {
            Record::StackNode { address, .. } => self.addresses.push(address),
            Record::ModuleLoad(m) => self.modules.push(*m),
            Record::Symbols(_) => self.has_symbols = true,
            _ => {}
        }
    }

    fn merge(&mut self, other: Collected) {
        self.addresses.extend(other.addresses);
        self.modules.extend(other.modules);
        self.has_symbols |= other.has_symbols;
    }
}

/// The stack node addresses and module loads of the trace at `path`.
fn collect(path: &Path) -> Result<Collected, ReadError> {
    let mut reader = TraceReader::open(path)?;
    let mut out = Collected::default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let chunk = reader.next_chunk()?;
        let end = chunk.is_none();
        batch.extend(chunk);
        if batch.len() == BATCH || (end && !batch.is_empty()) {
            let parts: Vec<Result<Collected, ReadError>> = batch
                .par_iter()
                .map(|c| {
                    let mut part = Collected::default();
                    c.for_each_record(|r| part.take(r))?;
                    Ok(part)
                })
                .collect();
            for part in parts {
                out.merge(part?);
            }
            for c in batch.drain(..) {
                reader.recycle(c);
            }
        }
        if end {
            break;
        }
    }
    Ok(out)
}

/// A module file as the trace names it: path and build-id.
type ModuleKey = (String, Vec<u8>);

/// For each module (path, build-id), the probes (link-time address minus 1, sorted,
/// distinct) of the `addresses` (sorted) that fall in one of its instances.
fn probes_by_module(addresses: &[u64], modules: &[ModuleLoad]) -> Vec<(ModuleKey, Vec<u64>)> {
    let mut keys: Vec<ModuleKey> = Vec::new();
    let mut key_of = std::collections::HashMap::new();
    // (segment start, end, module key index, load bias), one per distinct instance.
    let mut seen = std::collections::HashSet::new();
    let mut intervals: Vec<(u64, u64, usize, u64)> = Vec::new();
    for m in modules {
        if m.path.is_empty() || m.path.starts_with('[') {
            continue;
        }
        let segments: Vec<&Segment> = m.segments.iter().filter(|s| s.len > 0).collect();
        let instance = (
            m.path.as_str(),
            m.build_id.as_slice(),
            m.base,
            segments
                .iter()
                .map(|s| (s.start, s.len))
                .collect::<Vec<_>>(),
        );
        if !seen.insert(instance) {
            continue;
        }
        let k = *key_of
            .entry((m.path.as_str(), m.build_id.as_slice()))
            .or_insert_with(|| {
                keys.push((m.path.clone(), m.build_id.clone()));
                keys.len() - 1
            });
        for s in segments {
            intervals.push((s.start, s.start.saturating_add(s.len), k, m.base));
        }
    }
    intervals.sort_unstable();
    let mut probes: Vec<Vec<u64>> = vec![Vec::new(); keys.len()];
    // Sweep: `active` holds the intervals that started at or before the address and
    // have not ended before it.
    let mut next = 0;
    let mut active: Vec<(u64, u64, usize, u64)> = Vec::new();
    for &a in addresses {
        while next < intervals.len() && intervals[next].0 <= a {
            active.push(intervals[next]);
            next += 1;
        }
        active.retain(|iv| iv.1 > a);
        for &(_, _, k, base) in &active {
            probes[k].push(a.wrapping_sub(base).wrapping_sub(1));
        }
    }
    keys.into_iter()
        .zip(probes)
        .filter(|(_, p)| !p.is_empty())
        .map(|(k, mut p)| {
            p.sort_unstable();
            p.dedup();
            (k, p)
        })
        .collect()
}

/// Appends to the finished trace at `path` the symbols (functions, files, lines,
/// inlined frames) of every address its stacks hold, resolved from the modules' files
/// as `options` says (see the module docs). Reads the trace to find the addresses; a
/// trace that already holds symbols is left as it is. Fails, leaving the trace as it
/// was, when it cannot be read, is incomplete (no end record) or cannot be written.
pub fn embed_symbols(path: &Path, options: &SymbolizerOptions) -> Result<EmbedSummary, EmbedError> {
    let collected = collect(path)?;
    if collected.has_symbols {
        let bytes = std::fs::metadata(path).map_err(ReadError::from)?.len();
        return Ok(EmbedSummary {
            bytes_before: bytes,
            bytes_after: bytes,
            already: true,
            ..EmbedSummary::default()
        });
    }
    embed_symbols_of(path, options, collected.addresses, &collected.modules)
}

/// [`embed_symbols`] for a trace whose stack node addresses and module loads are
/// known (the recorder gathers them as it writes them: nothing is read but the trace's
/// last chunk). The trace must not hold symbols yet.
pub fn embed_symbols_of(
    path: &Path,
    options: &SymbolizerOptions,
    addresses: Vec<u64>,
    modules: &[ModuleLoad],
) -> Result<EmbedSummary, EmbedError> {
    embed_symbols_with(
        path,
        &ElfSymbolizer::new(options.clone()),
        addresses,
        modules,
    )
}

/// [`embed_symbols_of`] with `symbolizer`, whose modules may be loaded already
/// ([`ElfSymbolizer::load_now`]: `heaptape record` loads them while the program runs).
pub fn embed_symbols_with(
    path: &Path,
    symbolizer: &ElfSymbolizer,
    mut addresses: Vec<u64>,
    modules: &[ModuleLoad],
) -> Result<EmbedSummary, EmbedError> {
    let bytes_before = std::fs::metadata(path).map_err(ReadError::from)?.len();
    addresses.sort_unstable();
    addresses.dedup();
    let wanted = probes_by_module(&addresses, modules);
    drop(addresses);
    // Largest modules first, so that the longest resolution starts at once.
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(wanted[i].1.len()));
    let mut resolved: Vec<(usize, Vec<Arc<[Sym]>>)> = order
        .into_par_iter()
        .map(|i| {
            let ((p, id), probes) = &wanted[i];
            (i, symbolizer.resolve_module(p, id, probes))
        })
        .collect();
    resolved.sort_by_key(|(i, _)| *i);
    let mut summary = EmbedSummary {
        modules: wanted.len(),
        bytes_before,
        ..EmbedSummary::default()
    };
    let mut appender = TraceAppender::open(path)?;
    for ((key, probes), (_, syms)) in wanted.iter().zip(resolved) {
        let mut builder = RecordBuilder::new(&key.0, &key.1);
        for (&probe, frames) in probes.iter().zip(&syms) {
            builder.push(probe, frames);
            summary.addresses += 1;
            summary.named += usize::from(frames.iter().any(|f| f.function.is_some()));
        }
        for record in builder.finish() {
            appender
                .write(&Record::Symbols(Box::new(record)))
                .map_err(AppendError::from)?;
            summary.records += 1;
        }
    }
    summary.bytes_after = appender.finish()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(path: &str, base: u64, segs: &[(u64, u64)]) -> ModuleLoad {
        ModuleLoad {
            ts: 0,
            pid: 1,
            path: path.into(),
            build_id: vec![7],
            base,
            segments: segs
                .iter()
                .map(|&(start, len)| Segment {
                    start,
                    len,
                    file_offset: 0,
                    prot: 5,
                })
                .collect(),
        }
    }

    #[test]
    fn addresses_go_to_every_module_instance_holding_them() {
        let modules = [
            load("/bin/a", 0x1000, &[(0x1000, 0x100), (0x2000, 0x100)]),
            // The same instance again (a fork child's copy): counted once.
            load("/bin/a", 0x1000, &[(0x1000, 0x100), (0x2000, 0x100)]),
            // Another process: another module over the same range, and /bin/a elsewhere.
            load("/bin/b", 0x1000, &[(0x1000, 0x80)]),
            load("/bin/a", 0x9000, &[(0x9000, 0x100)]),
            load("[vdso]", 0x5000, &[(0x5000, 0x1000)]),
        ];
        let addresses = [0x1010, 0x1090, 0x2008, 0x5010, 0x9010, 0xa000];
        let got = probes_by_module(&addresses, &modules);
        assert_eq!(
            got,
            vec![
                (("/bin/a".into(), vec![7]), vec![0xf, 0x8f, 0x1007]),
                (("/bin/b".into(), vec![7]), vec![0xf]),
            ]
        );
    }
}
