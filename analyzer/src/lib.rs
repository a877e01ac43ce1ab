//! heaptape's offline analyzer.
//!
//! The recorder writes what happened; this crate works out what it means. [`analyze`]
//! streams a trace through the [`Replay`] state machine (decoding chunks on every core,
//! replaying in file order) and returns an [`Analysis`]: for every process of the
//! recorded tree, valgrind-style totals, what was live at exit, the heap peak, temporary
//! allocations, per-call-site aggregates and invalid or mismatched frees, plus the stack
//! trie and module maps that symbolization needs. [`Analysis::json_report`] (typed by
//! [`schema`]) and [`Analysis::render_text`] turn it into the `heaptape analyze`
//! report.
//!
//! Layout (each folder's `mod.rs` says more; lower layers never import higher ones):
//!
//! * foundations: `hash` (fast maps), `stacks` (the stack trie, [`StackTable`]),
//!   `modules` (module maps, [`ModuleMap`], and which paths are the C library or the
//!   loader), `symbolize` (the [`Symbolizer`] seam and [`ElfSymbolizer`]), `units`
//!   (figures in words), `progress` (the progress bar), `platform` (the only `unsafe`
//!   code: a prefetch hint and a read-only file map);
//! * analyses kept per image: `callsites` (per-call-site aggregates, [`SiteTable`];
//!   grouping, ranking and growth of call sites) and `checks` (leaks, bad frees,
//!   descriptors and mappings, the memory timeline);
//! * `replay`: the [`Replay`] state machine and its public model ([`Process`],
//!   [`Image`], [`Totals`], ...): per-record rules (`step`), process lifecycle, the
//!   accounting, snapshots, and the batch pipeline (chunk preparation, the shard thread,
//!   run summaries on the pool) fed by `source`;
//! * `report`: the text and JSON reports (the JSON documents' types in [`schema`]),
//!   their sections, frames in words (`report::frames`), and the [`flamegraph`] and
//!   [`diff`] outputs.
//!
//! `docs/ANALYZER.md` describes the semantics in prose.
#![deny(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use heaptape_format::{Header, ReadError, StackId, TraceReader, Truncation};

mod callsites;
mod checks;
mod hash;
mod modules;
mod platform;
mod progress;
mod replay;
mod report;
mod stacks;
mod symbolize;
mod units;

pub use callsites::{SiteStats, SiteTable};
pub use checks::leaks::{
    BlockRef, BlockVerdict, Count, GraphStats, Heuristic, HeuristicMatches, HeuristicSource,
    LeakReport, LeakSummary, LiveBlock, LossRecord, NoHeuristicData, SnapshotGraph, NO_SNAPSHOT,
};
pub use checks::leaks::{FailOn, HeuristicSet, LeakCheck, LeakKind, PointerKind};
pub use checks::retention::{
    Held, Hop, Retainer, Retention, RetentionTree, RootName, SharedBlock, SiteRetention,
};
pub use checks::snapshots::{EarlierSnapshot, LostBetween, SnapshotHistory, SnapshotTime};
pub use checks::{
    BadFreeBlock, Finding, FindingKind, Findings, GrowingSite, Mapping, Occurrence, OpenFd,
    Resources, Suppression, SuppressionError, Suppressions, Timeline, TimelinePoint, Verdict,
    VerdictKind, DEFAULT_SUPPRESSIONS,
};
pub use modules::{Module, ModuleHit, ModuleMap};
pub use replay::{
    Anomalies, Figures, Image, ImageEnd, Process, Replay, ReplayOutcome, Totals, FREED_HISTORY,
    INTERNAL_FREE_FUNCTIONS,
};
pub use report::frames::symbolize_stack;
pub use report::{colour, diff, flamegraph, html, pprof, schema, speedscope};
pub use stacks::{StackNodeError, StackTable};
use symbolize::embedded::EmbeddedSymbols;
pub use symbolize::{
    embed_symbols, embed_symbols_of, embed_symbols_with, first_program_frame, is_runtime_frame,
    DataSymbol, ElfSymbolizer, EmbedError, EmbedSummary, Frame, NoSymbols, RawSymbolizer,
    Symbolizer, SymbolizerOptions,
};

/// Options of an analysis and of its reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalyzeOptions {
    /// Number of entries in each ranked section (call sites, ...).
    pub top: usize,
    /// Whether the reports name functions and source lines ([`ElfSymbolizer`], the
    /// default) or only show `module+offset` ([`RawSymbolizer`]).
    pub symbolize: bool,
    /// Extra directories of separate debug files, searched before `/usr/lib/debug`
    /// (see [`SymbolizerOptions::debug_dirs`]).
    pub debug_dirs: Vec<PathBuf>,
    /// The recorded machine's root: module paths are looked up under it first (see
    /// [`SymbolizerOptions::sysroot`]).
    pub sysroot: Option<PathBuf>,
    /// The leak check's interior-pointer heuristics (memcheck's
    /// `--leak-check-heuristics`, all four by default).
    pub leak_heuristics: HeuristicSet,
    /// What makes [`Analysis::failed`] true (`--fail-on`); nothing by default.
    pub fail_on: FailOn,
    /// Group call sites by their innermost this many frames (`--call-site-depth`) in
    /// every per-site section; `None` (the default): one site per distinct stack.
    pub call_site_depth: Option<usize>,
    /// Which reports' frames are symbolized in one parallel batch when the analysis
    /// ends (see [`Prefetch`]).
    pub prefetch: Prefetch,
    /// Loss records hidden by their allocation stack (`--suppressions`): counted as
    /// suppressed, not reported, never failing `fail_on`. By default
    /// [`Suppressions::defaults`], the C and C++ runtimes' own blocks.
    pub suppressions: Suppressions,
    /// Whether text stacks go on below `main` (the C library's start-up frames), as
    /// memcheck's `--show-below-main=yes`; by default they end at `main`.
    pub show_below_main: bool,
}

/// The reports whose frames an analysis symbolizes in one parallel batch when it ends,
/// so that rendering only hits the cache and [`Analysis::warnings`] already names the
/// modules whose files were rejected. Frames of other outputs are symbolized as they
/// are asked for. Finding the frames renders the report once without symbols: the JSON
/// document of a real program holds thousands of loss records, so a caller that prints
/// only the text report says so (cc1plus: 0.7 GB and 2.2 s for both, see
/// docs/PERFORMANCE.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefetch {
    /// The text report's and the JSON report's.
    #[default]
    Both,
    /// The text report's only.
    Text,
    /// The JSON report's only.
    Json,
    /// None.
    Nothing,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            top: 10,
            symbolize: true,
            debug_dirs: Vec::new(),
            sysroot: None,
            leak_heuristics: HeuristicSet::ALL,
            fail_on: FailOn::default(),
            call_site_depth: None,
            prefetch: Prefetch::Both,
            suppressions: Suppressions::defaults(),
            show_below_main: false,
        }
    }
}

/// Why a trace could not be analyzed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// The trace could not be read: an I/O error, not a heaptape trace, or a damaged
    /// structure (the message names its byte offset).
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// The result of replaying a trace.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// The trace's header.
    pub header: Header,
    /// Every process of the trace, in order of appearance.
    pub processes: Vec<Process>,
    /// The stack trie.
    pub stacks: StackTable,
    /// Oddities of the trace itself.
    pub anomalies: Anomalies,
    /// Where the trace stops short, if it does (the analysis covers what precedes).
    pub truncation: Option<Truncation>,
    /// Records replayed.
    pub records: u64,
    /// The latest timestamp in the trace (nanoseconds since its start).
    pub last_ts: u64,
    /// The options the analysis was made with (the JSON report's ranking depth).
    pub options: AnalyzeOptions,
    /// The symbolizer of the reports, when `options.symbolize` is set.
    pub symbolizer: Option<Arc<ElfSymbolizer>>,
}

/// Replays the trace at `path`.
pub fn analyze(path: &Path, opts: &AnalyzeOptions) -> Result<Analysis, AnalyzeError> {
    let reader = TraceReader::open(path)?;
    analyze_stream(reader, opts, None, embedded_symbols(path))
}

/// The symbols embedded at the end of the trace at `path`, read before the replay so
/// that the symbolizer never loads the files of the modules they cover (see
/// [`heaptape_format::trailing_symbols`]). `None` when there are none, or when that
/// read fails: the replay then meets the damage itself, and reports it.
fn embedded_symbols(path: &Path) -> Option<Arc<EmbeddedSymbols>> {
    let symbols = heaptape_format::trailing_symbols(path).ok()?;
    (!symbols.is_empty()).then(|| Arc::new(EmbeddedSymbols::new(symbols)))
}

/// [`analyze`], with a progress bar on stderr (bytes read out of the file's size) when
/// stderr is a terminal and the analysis takes longer than half a second; nothing is
/// written to stderr otherwise.
pub fn analyze_with_progress(path: &Path, opts: &AnalyzeOptions) -> Result<Analysis, AnalyzeError> {
    let reader = TraceReader::open(path)?;
    let progress = std::fs::metadata(path)
        .ok()
        .and_then(|m| progress::Progress::stderr(m.len()));
    let analysis = analyze_stream(reader, opts, progress.as_ref(), embedded_symbols(path));
    if let Some(p) = &progress {
        p.finish();
    }
    analysis
}

/// Replays a trace from an already opened reader (a file, or bytes in memory).
pub fn analyze_reader<R: Read + Send>(
    reader: TraceReader<R>,
    opts: &AnalyzeOptions,
) -> Result<Analysis, AnalyzeError> {
    analyze_stream(reader, opts, None, None)
}

/// Replays `reader`'s trace. `embedded`: its embedded symbols when they were read
/// beforehand (otherwise the replay collects them, and they are used when it ends).
fn analyze_stream<R: Read + Send>(
    reader: TraceReader<R>,
    opts: &AnalyzeOptions,
    progress: Option<&progress::Progress>,
    embedded: Option<Arc<EmbeddedSymbols>>,
) -> Result<Analysis, AnalyzeError> {
    let header = reader.header().clone();
    let mut replay = Replay::new(&header);
    replay.set_leak_heuristics(opts.leak_heuristics);
    let symbolizer = opts.symbolize.then(|| {
        Arc::new(ElfSymbolizer::new(SymbolizerOptions {
            debug_dirs: opts.debug_dirs.clone(),
            sysroot: opts.sysroot.clone(),
        }))
    });
    if let Some(s) = &symbolizer {
        if let Some(e) = &embedded {
            s.set_embedded(e.clone());
        }
        replay.set_symbolizer(s.clone());
    }
    replay.set_keep_symbols(embedded.is_none());
    let shards = replay.shards();
    let end = replay::source::stream(reader, progress, shards, |chunk, spent| {
        replay.apply_prepared(chunk);
        replay.take_spent(spent);
    })?;
    let mut outcome = replay.finish();
    let embedded = embedded.or_else(|| {
        let symbols = std::mem::take(&mut outcome.symbols);
        (!symbols.is_empty()).then(|| Arc::new(EmbeddedSymbols::new(symbols)))
    });
    if let (Some(s), Some(e)) = (&symbolizer, &embedded) {
        if !s.has_embedded() {
            s.set_embedded(e.clone());
        }
    }
    suppress(&mut outcome, opts, symbolizer.as_ref(), embedded.as_ref());
    let truncation = end.truncation.or_else(|| {
        (!outcome.complete).then(|| Truncation {
            offset: end.offset,
            reason: "no end record; the recorder did not finish".into(),
        })
    });
    let analysis = Analysis {
        header,
        processes: outcome.processes,
        stacks: outcome.stacks,
        anomalies: outcome.anomalies,
        truncation,
        records: outcome.records,
        last_ts: outcome.last_ts,
        options: opts.clone(),
        symbolizer,
    };
    analysis.prefetch_symbols();
    Ok(analysis)
}

/// Applies `opts.suppressions` to every classified image of `outcome`. Their stacks are
/// described by the analysis's symbolizer, or (symbolization off) by one made for them:
/// suppressions name functions whether reports do or not.
fn suppress(
    outcome: &mut ReplayOutcome,
    opts: &AnalyzeOptions,
    sym: Option<&Arc<ElfSymbolizer>>,
    embedded: Option<&Arc<EmbeddedSymbols>>,
) {
    let has_records = |i: &Image| {
        i.leaks.report().is_some_and(|r| !r.loss_records.is_empty())
            || !i.snapshots.earlier.is_empty()
    };
    let images = || outcome.processes.iter().flat_map(|p| p.images.iter());
    if opts.suppressions.is_empty() || !images().any(has_records) {
        return;
    }
    let own;
    let sym = match sym {
        Some(s) => s.as_ref(),
        None => {
            own = ElfSymbolizer::new(SymbolizerOptions {
                debug_dirs: opts.debug_dirs.clone(),
                sysroot: opts.sysroot.clone(),
            });
            if let Some(e) = embedded {
                own.set_embedded(e.clone());
            }
            &own
        }
    };
    // Every frame of every loss record, in one parallel batch.
    sym.prefetch(images().flat_map(|img| {
        let stacks = &outcome.stacks;
        img.leaks
            .report()
            .into_iter()
            .flat_map(|r| r.loss_records.iter())
            .flat_map(move |lr| stacks.iter(lr.stack).map(move |a| (&img.modules, a)))
    }));
    let stacks = &outcome.stacks;
    for img in outcome
        .processes
        .iter_mut()
        .flat_map(|p| p.images.iter_mut())
    {
        if let LeakCheck::Done(report) = &mut img.leaks {
            checks::suppressions::apply(report, &opts.suppressions, &img.modules, stacks, sym);
        }
        if !img.snapshots.earlier.is_empty() {
            let which =
                checks::suppressions::matcher(&opts.suppressions, &img.modules, stacks, sym);
            img.snapshots.suppress(which);
        }
    }
}

/// A symbolizer that only notes which addresses a report asks about, and of which
/// module map (by its address: the maps are those of the analysis's images).
#[derive(Default)]
struct Collector {
    wanted: Mutex<Vec<(usize, u64)>>,
}

impl Symbolizer for Collector {
    fn symbolize(&self, modules: &ModuleMap, address: u64, return_address: bool) -> Vec<Frame> {
        self.wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((modules as *const ModuleMap as usize, address));
        RawSymbolizer.symbolize(modules, address, return_address)
    }
}

impl Analysis {
    /// Every program image of the trace with its process, processes in order of
    /// appearance, each one's images in order (what the per-stack outputs walk).
    pub fn images(&self) -> impl Iterator<Item = (&Process, &Image)> {
        self.processes
            .iter()
            .flat_map(|p| p.images.iter().map(move |i| (p, i)))
    }

    /// Symbolizes, in one parallel batch, every frame the reports named by
    /// [`AnalyzeOptions::prefetch`] will print (so that rendering only hits the cache, and
    /// [`Analysis::warnings`] already names the modules whose files were rejected).
    fn prefetch_symbols(&self) {
        let Some(sym) = &self.symbolizer else {
            return;
        };
        let collector = Collector::default();
        let (text, json) = match self.options.prefetch {
            Prefetch::Both => (true, true),
            Prefetch::Text => (true, false),
            Prefetch::Json => (false, true),
            Prefetch::Nothing => return,
        };
        if text {
            let _ = self.render_text_with(&mut std::io::sink(), &self.options, &collector);
        }
        if json {
            // Stacks shared as they are made: the document is built only to see which
            // frames it names, and must not hold each loss record's frames.
            let _ = report::json::analysis(
                self,
                &collector,
                &report::limits::Limits::ALL,
                schema::StackMaker::shared(),
            );
        }
        let maps: hash::FastMap<usize, &ModuleMap> = self
            .processes
            .iter()
            .flat_map(|p| p.images.iter())
            .map(|i| (&i.modules as *const ModuleMap as usize, &i.modules))
            .collect();
        let wanted = collector
            .wanted
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        sym.prefetch(
            wanted
                .into_iter()
                .filter_map(|(map, address)| maps.get(&map).map(|m| (*m, address))),
        );
    }

    /// Everything the user should know about the trace itself (truncation, oddities)
    /// and about its symbolization (modules whose file was rejected), one sentence per
    /// item; empty for a complete, well-formed trace whose files all matched.
    pub fn warnings(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if let Some(t) = &self.truncation {
            parts.push(t.to_string());
        }
        parts.extend(self.anomalies.messages());
        if let Some(s) = &self.symbolizer {
            parts.extend(s.warnings());
        }
        parts
    }

    /// [`Analysis::warnings`] as one line; `None` when there are none.
    pub fn warning(&self) -> Option<String> {
        let parts = self.warnings();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The symbolizer the reports use: the analysis's [`ElfSymbolizer`], or
    /// [`RawSymbolizer`] when symbolization is off.
    pub fn symbolizer(&self) -> &dyn Symbolizer {
        match &self.symbolizer {
            Some(s) => s.as_ref(),
            None => &RawSymbolizer,
        }
    }

    /// Why the analysis fails under [`AnalyzeOptions::fail_on`], one sentence per
    /// process and reason; empty when it passes. Each process's last image counts. A
    /// process whose leaks could not be classified fails when any leak class is
    /// selected: without a snapshot nothing proves it leak-free.
    pub fn failures(&self) -> Vec<String> {
        let f = self.options.fail_on;
        let mut out = Vec::new();
        for p in &self.processes {
            let img = p.image();
            if f.any_leak_kind() {
                match &img.leaks {
                    LeakCheck::Done(r) => {
                        for kind in LeakKind::ALL.into_iter().filter(|&k| f.kind(k)) {
                            let c = r.summary.get(kind);
                            if c.blocks > 0 {
                                out.push(format!(
                                    "process {}: {} bytes in {} blocks are {}",
                                    p.pid, c.bytes, c.blocks, kind
                                ));
                            }
                        }
                    }
                    LeakCheck::Unavailable(reason) => out.push(format!(
                        "process {}: leaks could not be classified: {reason}",
                        p.pid
                    )),
                }
            }
            if f.invalid_free && !img.findings.is_empty() {
                let n: u64 = img.findings.list().iter().map(|x| x.count).sum();
                out.push(format!(
                    "process {}: {n} invalid, double or mismatched free(s)",
                    p.pid
                ));
            }
        }
        out
    }

    /// Whether the analysis fails under [`AnalyzeOptions::fail_on`] (the CLI then
    /// exits with status 1); see [`Analysis::failures`].
    pub fn failed(&self) -> bool {
        !self.failures().is_empty()
    }

    /// The return addresses of stack `id`, innermost first.
    pub fn stack_frames(&self, id: StackId) -> Vec<u64> {
        self.stacks.frames(id)
    }

    /// The process with `pid` (the last one, should the pid have been reused).
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.iter().rev().find(|p| p.pid == pid)
    }

    /// The JSON report (`heaptape analyze --json`), frames described by
    /// [`Analysis::symbolizer`].
    pub fn json_report(&self) -> schema::Report {
        self.json_report_with(self.symbolizer())
    }

    /// The JSON report, frames described by `symbolizer`.
    pub fn json_report_with(&self, symbolizer: &dyn Symbolizer) -> schema::Report {
        report::json::analysis(
            self,
            symbolizer,
            &report::limits::Limits::ALL,
            schema::StackMaker::inline(),
        )
    }

    /// The document `heaptape analyze --json` writes: [`Analysis::json_report`] with at
    /// most `top` entries in each ranked list (all of them for `None`), its stacks
    /// shared as it is built (`schema::StackMaker`).
    pub fn json_document(&self, top: Option<usize>) -> schema::Report {
        let limits = report::limits::Limits {
            ranked: top.unwrap_or(usize::MAX),
            ..report::limits::Limits::ALL
        };
        report::json::analysis(
            self,
            self.symbolizer(),
            &limits,
            schema::StackMaker::shared(),
        )
    }

    /// [`Analysis::json_report`] as a JSON value (for indexing by key).
    pub fn to_json(&self) -> serde_json::Value {
        self.to_json_with(self.symbolizer())
    }

    /// [`Analysis::json_report_with`] as a JSON value.
    pub fn to_json_with(&self, symbolizer: &dyn Symbolizer) -> serde_json::Value {
        serde_json::to_value(self.json_report_with(symbolizer))
            .expect("the report serializes: its maps have string keys")
    }

    /// The text report, frames described by [`Analysis::symbolizer`].
    pub fn render_text(
        &self,
        out: &mut dyn std::io::Write,
        opts: &AnalyzeOptions,
    ) -> std::io::Result<()> {
        self.render_text_with(out, opts, self.symbolizer())
    }

    /// One suppression in valgrind's format per loss record no suppression hides
    /// (`--gen-suppressions`), each after a `#` comment naming the record: a
    /// suppression file that hides them all.
    pub fn write_suppressions(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        report::suppressions::write(self, out, self.symbolizer())
    }

    /// The text report, frames described by `symbolizer`.
    pub fn render_text_with(
        &self,
        out: &mut dyn std::io::Write,
        opts: &AnalyzeOptions,
        symbolizer: &dyn Symbolizer,
    ) -> std::io::Result<()> {
        report::text::render(self, out, opts, symbolizer)
    }
}
