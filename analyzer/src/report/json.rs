//! The JSON report (`heaptape analyze --json`).
//!
//! The document is a contract with scripts and CI jobs, so its shape is fixed here in one
//! place: every key is always present (with `null` when unknown), counts are numbers,
//! addresses are `"0x…"` strings (JSON numbers lose precision past 2^53), times are
//! nanoseconds since the trace started. A process object carries the figures of the
//! image it ended with; the images it exec'd away from are under `previous_images`.

use serde_json::{json, Value};

use super::frames::{json_list, symbolize_stack};
use super::names::{end_name, origin_name};
use crate::checks::leaks::{Count, Heuristic, LeakReport, LossRecord};
use crate::checks::Finding;
use crate::replay::{Image, Process, Totals};
use crate::symbolize::Symbolizer;
use crate::units::addr;
use crate::Analysis;

/// The whole document.
pub fn analysis(a: &Analysis, sym: &dyn Symbolizer) -> Value {
    let h = &a.header;
    json!({
        "trace": {
            "tool_version": h.tool_version,
            "command": h.command,
            "pid": h.pid,
            "host": h.host,
            "kernel": h.kernel,
            "start_time_unix_ns": h.start_time_unix_ns,
            "page_size": h.page_size,
            "complete": a.truncation.is_none(),
            "truncation": a.truncation.as_ref().map(|t| json!({
                "offset": t.offset,
                "reason": t.reason,
            })),
            "records": a.records,
            "stack_nodes": a.stacks.len(),
            "duration_ns": a.last_ts,
        },
        "warnings": a.warning().into_iter().collect::<Vec<_>>(),
        "processes": a.processes.iter().map(|p| process(a, p, sym)).collect::<Vec<_>>(),
    })
}

fn process(a: &Analysis, p: &Process, sym: &dyn Symbolizer) -> Value {
    let mut v = json!({
        "pid": p.pid,
        "parent_pid": p.parent_pid,
        "origin": p.origin.map(origin_name),
        "exit": exit(p),
    });
    let obj = v.as_object_mut().expect("built as an object");
    if let Value::Object(img) = image(a, p.image(), sym) {
        obj.extend(img);
    }
    obj.insert(
        "previous_images".into(),
        p.previous_images()
            .iter()
            .map(|i| image(a, i, sym))
            .collect(),
    );
    v
}

fn exit(p: &Process) -> Value {
    use heaptape_format::ExitStatus;
    match p.exit {
        Some(ExitStatus::Code(c)) => json!({ "code": c }),
        Some(ExitStatus::Signal(s)) => json!({ "signal": s }),
        Some(ExitStatus::Detached) => json!({ "detached": true }),
        None => Value::Null,
    }
}

fn image(a: &Analysis, img: &Image, sym: &dyn Symbolizer) -> Value {
    let mut v = json!({
        "command": img.command,
        "start_ns": img.start_ts,
        "end_ns": img.end_ts,
        "ended_by": end_name(img.end),
        "totals": totals(&img.totals),
        "sites_live_at_exit": img
            .sites
            .top_by_live(a.options.top)
            .into_iter()
            .map(|(stack, s)| json!({
                "stack": stack,
                "live_at_exit_bytes": s.live_bytes,
                "live_at_exit_blocks": s.live_blocks,
                "allocations": s.allocations,
                "allocated_bytes": s.allocated_bytes,
                "frees": s.frees,
                "temporary_allocations": s.temporary_allocations,
                "inherited_blocks": s.inherited_blocks,
                "inherited_bytes": s.inherited_bytes,
                "peak_bytes": s.peak_bytes,
                "peak_blocks": s.peak_blocks,
                "frames": json_list(&symbolize_stack(&a.stacks, &img.modules, stack, sym)),
            }))
            .collect::<Vec<_>>(),
        "leaks": img.leaks.report().map(leaks),
        "leaks_unavailable": img.leaks.unavailable_reason(),
        "loss_records": img.leaks.report().map_or_else(Vec::new, |r| {
            let n = r.loss_records.len();
            r.loss_records
                .iter()
                .map(|lr| loss_record(a, img, lr, n, sym))
                .collect::<Vec<_>>()
        }),
        "invalid_frees": img
            .findings
            .list()
            .iter()
            .map(|f| finding(a, img, f, sym))
            .collect::<Vec<_>>(),
        "modules": img.modules.modules().iter().map(|m| json!({
            "path": m.path,
            "build_id": hex(&m.build_id),
            "base": addr(m.base),
            "loaded_ns": m.loaded_ts,
            "unloaded_ns": m.unloaded_ts,
        })).collect::<Vec<_>>(),
    });
    if let Value::Object(o) = &mut v {
        o.extend(super::resources::json(a, img, sym));
        super::callsites::json(a, img, sym, o);
    }
    v
}

/// The totals object: valgrind's counts and the replay's extras.
pub fn totals(t: &Totals) -> Value {
    json!({
        "allocations": t.allocations,
        "frees": t.frees,
        "allocated_bytes": t.allocated_bytes,
        "live_at_exit_blocks": t.live_at_exit_blocks,
        "live_at_exit_bytes": t.live_at_exit_bytes,
        "peak_live_bytes": t.peak_live_bytes,
        "peak_live_blocks": t.peak_live_blocks,
        "peak_live_ns": t.peak_ts,
        "temporary_allocations": t.temporary_allocations,
        "failed_allocations": t.failed_allocations,
        "inherited_blocks": t.inherited_blocks,
        "inherited_bytes": t.inherited_bytes,
        "untracked_frees": t.untracked_frees,
        "allocator_internal_frees": t.allocator_internal_frees,
    })
}

/// An invalid, double or mismatched free: `stack` is where it happened,
/// `alloc_stack` where the block was allocated and `free_stack` where it was freed
/// before (a double free); the `*_stack_id`s are the trie ids of the same stacks.
fn finding(a: &Analysis, img: &Image, f: &Finding, sym: &dyn Symbolizer) -> Value {
    let stack = |id: Option<heaptape_format::StackId>| {
        id.map(|id| json_list(&symbolize_stack(&a.stacks, &img.modules, id, sym)))
    };
    json!({
        "kind": f.kind.name(),
        "count": f.count,
        "address": addr(f.first.address),
        "size": f.first.size,
        "tid": f.first.tid,
        "ts_ns": f.first.ts,
        "function": f.free_fn.name(),
        "alloc_function": f.alloc_fn.map(|x| x.name()),
        "stack": stack(Some(f.free_stack)),
        "alloc_stack": stack(f.alloc_stack),
        "free_stack": stack(f.previous_free_stack),
        "stack_id": f.free_stack,
        "alloc_stack_id": f.alloc_stack,
        "free_stack_id": f.previous_free_stack,
    })
}

fn count(c: Count) -> Value {
    json!({ "blocks": c.blocks, "bytes": c.bytes })
}

/// The leak summary of a classified snapshot.
fn leaks(r: &LeakReport) -> Value {
    let s = &r.summary;
    json!({
        "definitely_lost": count(s.definitely_lost),
        "indirectly_lost": count(s.indirectly_lost),
        "possibly_lost": count(s.possibly_lost),
        "still_reachable": count(s.still_reachable),
        "reachable_via_heuristic": Heuristic::ALL
            .iter()
            .zip(s.reachable_via_heuristic)
            .map(|(h, c)| (h.name().to_string(), count(c)))
            .collect::<serde_json::Map<_, _>>(),
        "heuristics": r.heuristics.iter().map(Heuristic::name).collect::<Vec<_>>(),
        "snapshot": {
            "blocks": r.stats.blocks,
            "root_pointers": r.stats.root_pointers,
            "block_pointers": r.stats.block_pointers,
            "stray_pointers": r.stats.stray_pointers,
            "unknown_source_pointers": r.stats.unknown_source_pointers,
        },
    })
}

/// One loss record; `stack` starts at the allocator's caller.
fn loss_record(
    a: &Analysis,
    img: &Image,
    lr: &LossRecord,
    of: usize,
    sym: &dyn Symbolizer,
) -> Value {
    json!({
        "kind": lr.kind.name(),
        "number": lr.number,
        "of": of,
        "blocks": lr.blocks,
        "bytes": lr.bytes,
        "indirect_bytes": lr.indirect_bytes,
        "allocator": lr.func.name(),
        "stack": json_list(&symbolize_stack(&a.stacks, &img.modules, lr.stack, sym)),
        "stack_id": lr.stack,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
