//! The JSON report (`heaptape analyze --json`).
//!
//! The document is a contract with scripts and CI jobs, so its shape is fixed here in one
//! place: every key is always present (with `null` when unknown), counts are numbers,
//! addresses are `"0x…"` strings (JSON numbers lose precision past 2^53), times are
//! nanoseconds since the trace started. A process object carries the figures of the
//! image it ended with; the images it exec'd away from are under `previous_images`.

use serde_json::{json, Value};

use crate::findings::Finding;
use crate::replay::{Image, Process, Totals};
use crate::symbolize::{Frame, Symbolizer};
use crate::Analysis;

use super::{end_name, frames, origin_name};

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
    json!({
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
                "frames": frame_list(&frames(&a.stacks, img, stack, sym)),
            }))
            .collect::<Vec<_>>(),
        "findings": img
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
    })
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

fn finding(a: &Analysis, img: &Image, f: &Finding, sym: &dyn Symbolizer) -> Value {
    json!({
        "kind": f.kind.name(),
        "count": f.count,
        "free_function": f.free_fn.name(),
        "free_stack": f.free_stack,
        "alloc_function": f.alloc_fn.map(|x| x.name()),
        "alloc_stack": f.alloc_stack,
        "previous_free_stack": f.previous_free_stack,
        "address": addr(f.first.address),
        "size": f.first.size,
        "tid": f.first.tid,
        "ts_ns": f.first.ts,
        "frames": frame_list(&frames(&a.stacks, img, f.free_stack, sym)),
    })
}

fn frame_list(frames: &[Frame]) -> Value {
    frames
        .iter()
        .map(|f| {
            json!({
                "address": addr(f.address),
                "module": f.module,
                "offset": f.module_offset.map(addr),
                "function": f.function,
                "file": f.file,
                "line": f.line,
                "inlined": f.inlined,
            })
        })
        .collect()
}

/// An address as a `0x…` string.
pub fn addr(a: u64) -> String {
    format!("{a:#x}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
