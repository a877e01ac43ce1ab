//! The JSON report (`heaptape analyze --json`), built as a [`schema::Report`]: the
//! document's shape (every key, its type and meaning) is fixed there; this file fills
//! it from an [`Analysis`]. A process object carries the keys of the image it ended
//! with; the images it exec'd away from are under `previous_images`. The image's
//! call-site and resource keys come from [`super::callsites`] and [`super::resources`].

use std::cmp::Reverse;

use super::callsites::{allocation_rate, CallSiteSections};
use super::frames::json_stack;
use super::json_count as count;
use super::limits::Limits;
use super::names::{end_name, origin_name};
use super::resources::ResourceSections;
use super::schema::{self, StackMaker};
use crate::checks::leaks::{Heuristic, LeakKind, LeakReport, LossRecord};
use crate::checks::Finding;
use crate::replay::{Image, Process, Totals};
use crate::symbolize::Symbolizer;
use crate::units::addr;
use crate::Analysis;

/// The whole document, each process's last image cut to `limits`, its stacks made
/// by `stacks` (the tables of shared ones are the document's).
pub fn analysis(
    a: &Analysis,
    sym: &dyn Symbolizer,
    limits: &Limits,
    stacks: StackMaker,
) -> schema::Report {
    let h = &a.header;
    let trace = schema::Trace {
        command: h.command.clone(),
        complete: a.truncation.is_none(),
        duration_ns: a.last_ts,
        host: h.host.clone(),
        kernel: h.kernel.clone(),
        page_size: h.page_size,
        pid: h.pid,
        records: a.records,
        stack_nodes: a.stacks.len(),
        start_time_unix_ns: h.start_time_unix_ns,
        tool_version: h.tool_version.clone(),
        truncation: a.truncation.as_ref().map(|t| schema::Truncation {
            offset: t.offset,
            reason: t.reason.clone(),
        }),
    };
    // Read before the processes are built and symbolized, as the document always was.
    let warnings = a.warning().into_iter().collect();
    let processes = a
        .processes
        .iter()
        .map(|p| process(a, p, sym, limits, &stacks))
        .collect();
    let mut doc = schema::Report::new(processes, trace, warnings);
    (doc.frames, doc.stacks) = stacks.into_tables();
    doc
}

fn process(
    a: &Analysis,
    p: &Process,
    sym: &dyn Symbolizer,
    limits: &Limits,
    stacks: &StackMaker,
) -> schema::Process {
    let last = image(a, p.image(), sym, limits, stacks);
    let previous = p
        .previous_images()
        .iter()
        .map(|i| image(a, i, sym, &Limits::ALL, stacks))
        .collect();
    let mut out = schema::Process::new(
        last,
        p.pid,
        p.parent_pid,
        p.origin.map(origin_name),
        exit(p),
        previous,
    );
    if !limits.modules {
        out.modules = None;
    }
    out
}

fn exit(p: &Process) -> Option<schema::Exit> {
    use heaptape_format::ExitStatus;
    p.exit.map(|e| match e {
        ExitStatus::Code(c) => schema::Exit::Code(c),
        ExitStatus::Signal(s) => schema::Exit::Signal(s),
        ExitStatus::Detached => schema::Exit::Detached(true),
    })
}

fn image(
    a: &Analysis,
    img: &Image,
    sym: &dyn Symbolizer,
    limits: &Limits,
    stacks: &StackMaker,
) -> schema::Image {
    let report = img.leaks.report();
    // Each listed root and shared block costs a path search: lists of the whole
    // dominator tree would cost more than the rest of the document.
    let retention = super::retention::summary(
        a,
        img,
        sym,
        limits.ranked.min(super::retention::JSON_LIST_MAX),
    );
    let loss_records =
        report.map_or_else(Vec::new, |r| loss_records(a, img, r, sym, limits, stacks));
    let invalid_frees = img
        .findings
        .list()
        .iter()
        .take(limits.ranked)
        .map(|f| finding(a, img, f, sym, stacks))
        .collect();
    let modules = img
        .modules
        .modules()
        .iter()
        .map(|m| schema::Module {
            base: addr(m.base),
            build_id: hex(&m.build_id),
            loaded_ns: m.loaded_ts,
            path: m.path.clone(),
            unloaded_ns: m.unloaded_ts,
        })
        .collect();
    let ResourceSections {
        fd_leaks,
        mmap_leaks,
        timeline,
        timeline_verdict,
    } = super::resources::json(a, img, sym, limits, stacks);
    let CallSiteSections {
        call_site_depth,
        sites_at_peak,
        growth_bucket_ns,
        growth,
        sites_live_at_exit,
    } = super::callsites::json(a, img, sym, limits, stacks);
    schema::Image {
        call_site_depth,
        command: img.command.clone(),
        end_ns: img.end_ts,
        ended_by: end_name(img.end),
        fd_leaks,
        growth,
        growth_bucket_ns,
        invalid_frees,
        leaks: report.map(leaks),
        leaks_unavailable: img.leaks.unavailable_reason().map(str::to_string),
        loss_records,
        mmap_leaks,
        lost_between: super::snapshots::json_lost(a, img, sym, limits, stacks),
        modules,
        snapshots: super::snapshots::json(img, sym, retention.as_ref()),
        retention: retention.map(|r| super::retention::json(a, img, &r, sym, stacks)),
        sites_at_peak,
        sites_live_at_exit,
        start_ns: img.start_ts,
        timeline,
        timeline_verdict,
        totals: totals(&img.totals, allocation_rate(img)),
    }
}

/// The totals object: valgrind's counts, the replay's extras and the allocation rate.
fn totals(t: &Totals, allocation_rate_per_sec: Option<f64>) -> schema::Totals {
    schema::Totals {
        allocated_bytes: t.allocated_bytes,
        allocation_rate_per_sec,
        allocations: t.allocations,
        allocator_internal_frees: t.allocator_internal_frees,
        failed_allocations: t.failed_allocations,
        frees: t.frees,
        inherited_blocks: t.inherited_blocks,
        inherited_bytes: t.inherited_bytes,
        live_at_exit_blocks: t.live_at_exit_blocks,
        live_at_exit_bytes: t.live_at_exit_bytes,
        peak_live_blocks: t.peak_live_blocks,
        peak_live_bytes: t.peak_live_bytes,
        peak_live_ns: t.peak_ts,
        temporary_allocations: t.temporary_allocations,
        untracked_frees: t.untracked_frees,
    }
}

/// An invalid, double or mismatched free (see [`schema::InvalidFree`]).
fn finding(
    a: &Analysis,
    img: &Image,
    f: &Finding,
    sym: &dyn Symbolizer,
    stacks: &StackMaker,
) -> schema::InvalidFree {
    let stack = |id| stacks.stack(json_stack(&a.stacks, &img.modules, id, sym));
    schema::InvalidFree {
        address: addr(f.first.address),
        alloc_function: f.alloc_fn.map(|x| x.name()),
        alloc_stack: f.alloc_stack.map(stack),
        alloc_stack_id: f.alloc_stack,
        block: f.first.block.map(|b| schema::BadFreeBlock {
            address: addr(b.address),
            offset: b.offset,
            size: b.size,
        }),
        count: f.count,
        description: super::bad_frees::address_sentence(f, img, sym),
        free_stack: f.previous_free_stack.map(stack),
        free_stack_id: f.previous_free_stack,
        function: f.free_fn.name(),
        kind: f.kind.name(),
        size: f.first.size,
        stack: stack(f.free_stack),
        stack_id: f.free_stack,
        tid: f.first.tid,
        ts_ns: f.first.ts,
    }
}

/// The leak summary of a classified snapshot.
fn leaks(r: &LeakReport) -> schema::LeakSummary {
    let s = &r.summary;
    schema::LeakSummary {
        definitely_lost: count(s.definitely_lost),
        heuristics: r.heuristics.iter().map(Heuristic::name).collect(),
        indirectly_lost: count(s.indirectly_lost),
        possibly_lost: count(s.possibly_lost),
        reachable_via_heuristic: Heuristic::ALL
            .iter()
            .zip(s.reachable_via_heuristic)
            .map(|(h, c)| (h.name(), count(c)))
            .collect(),
        snapshot: schema::SnapshotStats {
            block_pointers: r.stats.block_pointers,
            blocks: r.stats.blocks,
            root_pointers: r.stats.root_pointers,
            stray_pointers: r.stats.stray_pointers,
            unknown_source_pointers: r.stats.unknown_source_pointers,
        },
        still_reachable: count(s.still_reachable),
        suppressed: count(s.suppressed),
    }
}

/// The loss records of a classified snapshot, in report order (largest first) or, when
/// `limits` say so, worst first; at most `limits.ranked` of them.
fn loss_records(
    a: &Analysis,
    img: &Image,
    r: &LeakReport,
    sym: &dyn Symbolizer,
    limits: &Limits,
    stacks: &StackMaker,
) -> Vec<schema::LossRecord> {
    let of = r.loss_records.len();
    // Numbered among all records; the suppressed ones are not listed.
    let mut kept: Vec<&LossRecord> = r.reported_records().collect();
    if limits.worst_losses_first {
        let severity = |k: LeakKind| LeakKind::ALL.iter().position(|&x| x == k);
        kept.sort_by_key(|lr| (severity(lr.kind), Reverse(lr.bytes)));
    }
    kept.truncate(limits.ranked);
    kept.into_iter()
        .map(|lr| loss_record(a, img, lr, of, sym, stacks))
        .collect()
}

/// One loss record; `stack` starts at the allocator's caller.
fn loss_record(
    a: &Analysis,
    img: &Image,
    lr: &LossRecord,
    of: usize,
    sym: &dyn Symbolizer,
    stacks: &StackMaker,
) -> schema::LossRecord {
    schema::LossRecord {
        allocator: lr.func.name(),
        blocks: lr.blocks,
        bytes: lr.bytes,
        indirect_bytes: lr.indirect_bytes,
        kind: lr.kind.name(),
        number: lr.number,
        of,
        stack: stacks.stack(json_stack(&a.stacks, &img.modules, lr.stack, sym)),
        stack_id: lr.stack,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
