//! heaptape's offline analyzer.
//!
//! The recorder writes what happened; this crate works out what it means. [`analyze`]
//! streams a trace through the [`Replay`] state machine (decoding chunks on every core,
//! replaying in file order) and returns an [`Analysis`]: for every process of the
//! recorded tree, valgrind-style totals, what was live at exit, the heap peak, temporary
//! allocations, per-call-site aggregates and invalid or mismatched frees, plus the stack
//! trie and module maps that symbolization needs. [`Analysis::to_json`] and
//! [`Analysis::render_text`] turn it into the `heaptape analyze` report.
//!
//! Layout: [`replay`] (processes, threads, images, accounting) over `heap` (live
//! blocks of one address space), [`sites`] (per-call-site aggregates), [`findings`]
//! (bad frees), [`stacks`] (the stack trie) and [`modules`] (module maps); [`report`]
//! renders, asking a [`Symbolizer`] to describe addresses; `source` feeds the replay.
//! `docs/ANALYZER.md` describes the semantics in prose.

use std::io::Read;
use std::path::Path;

use heaptape_format::{Header, ReadError, StackId, TraceReader, Truncation};

pub mod findings;
mod hash;
mod heap;
pub mod modules;
pub mod replay;
pub mod report;
pub mod sites;
mod source;
pub mod stacks;
pub mod symbolize;

pub use findings::{Finding, FindingKind, Findings, Occurrence};
pub use heap::FREED_HISTORY;
pub use modules::{Module, ModuleHit, ModuleMap};
pub use replay::{Anomalies, Image, ImageEnd, Process, Replay, ReplayOutcome, Totals};
pub use sites::{SiteStats, SiteTable};
pub use stacks::StackTable;
pub use symbolize::{Frame, RawSymbolizer, Symbolizer};

/// Options of an analysis and of its reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalyzeOptions {
    /// Number of entries in each ranked section (call sites, ...).
    pub top: usize,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions { top: 10 }
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
}

/// Replays the trace at `path`.
pub fn analyze(path: &Path, opts: &AnalyzeOptions) -> Result<Analysis, AnalyzeError> {
    analyze_reader(TraceReader::open(path)?, opts)
}

/// Replays a trace from an already opened reader (a file, or bytes in memory).
pub fn analyze_reader<R: Read + Send>(
    reader: TraceReader<R>,
    opts: &AnalyzeOptions,
) -> Result<Analysis, AnalyzeError> {
    let header = reader.header().clone();
    let mut replay = Replay::new(&header);
    let end = source::stream(reader, |records| {
        for rec in records {
            replay.apply(rec);
        }
    })?;
    let outcome = replay.finish();
    let truncation = end.truncation.or_else(|| {
        (!outcome.complete).then(|| Truncation {
            offset: end.offset,
            reason: "no end record; the recorder did not finish".into(),
        })
    });
    Ok(Analysis {
        header,
        processes: outcome.processes,
        stacks: outcome.stacks,
        anomalies: outcome.anomalies,
        truncation,
        records: outcome.records,
        last_ts: outcome.last_ts,
        options: opts.clone(),
    })
}

impl Analysis {
    /// Everything the user should know about the trace itself (truncation, oddities),
    /// as one line; `None` for a complete, well-formed trace.
    pub fn warning(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(t) = &self.truncation {
            parts.push(t.to_string());
        }
        parts.extend(self.anomalies.messages());
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The return addresses of stack `id`, innermost first.
    pub fn stack_frames(&self, id: StackId) -> Vec<u64> {
        self.stacks.frames(id)
    }

    /// The process with `pid` (the last one, should the pid have been reused).
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.iter().rev().find(|p| p.pid == pid)
    }

    /// The JSON report, with raw frames.
    pub fn to_json(&self) -> serde_json::Value {
        self.to_json_with(&RawSymbolizer)
    }

    /// The JSON report, frames described by `symbolizer`.
    pub fn to_json_with(&self, symbolizer: &dyn Symbolizer) -> serde_json::Value {
        report::json::analysis(self, symbolizer)
    }

    /// The text report, with raw frames.
    pub fn render_text(
        &self,
        out: &mut dyn std::io::Write,
        opts: &AnalyzeOptions,
    ) -> std::io::Result<()> {
        self.render_text_with(out, opts, &RawSymbolizer)
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
