//! The per-call-site sections of both renderers, which [`crate::callsites`] computes:
//! allocation rate, the sites holding memory at the peak, the sites live at exit
//! (grouped by `--call-site-depth`) and growth by call site.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::frames::{frames_of, json_list, write_stack};
use crate::callsites::ranking::{call_sites, growth, top_at_peak, top_by_live, CallSite};
use crate::replay::Image;
use crate::symbolize::Symbolizer;
use crate::units::{bytes, bytes_in_blocks, duration, num, rate, signed_bytes, sparkline};
use crate::{Analysis, AnalyzeOptions};

/// Characters of a sparkline in the text report.
const SPARK_WIDTH: usize = 32;

/// The JSON keys of an image: `call_site_depth`, `sites_at_peak`, `growth_bucket_ns`,
/// `growth`, `sites_live_at_exit` (grouped), and `totals.allocation_rate_per_sec`
/// (merged into `totals`, which `base` already holds).
pub fn json(a: &Analysis, img: &Image, sym: &dyn Symbolizer, base: &mut Map<String, Value>) {
    let top = a.options.top;
    let sites = call_sites(&a.stacks, &img.sites, a.options.call_site_depth);
    let frames = |c: &CallSite| json_list(&frames_of(c.addresses(&a.stacks), &img.modules, sym));
    if let Some(Value::Object(t)) = base.get_mut("totals") {
        t.insert(
            "allocation_rate_per_sec".into(),
            json!(allocation_rate(img)),
        );
    }
    base.insert(
        "call_site_depth".into(),
        json!(a.options.call_site_depth.filter(|&d| d > 0)),
    );
    base.insert(
        "sites_at_peak".into(),
        top_at_peak(&sites, top)
            .into_iter()
            .map(|c| {
                json!({
                    "stack": frames(c),
                    "stack_id": c.stack,
                    "stacks": c.stacks,
                    "peak_bytes": c.stats.peak_bytes,
                    "peak_blocks": c.stats.peak_blocks,
                })
            })
            .collect(),
    );
    base.insert("growth_bucket_ns".into(), json!(img.sites.bucket_ns()));
    base.insert(
        "growth".into(),
        growth(&img.sites, &sites)
            .into_iter()
            .take(top)
            .map(|g| {
                let c = &sites[g.site];
                json!({
                    "stack": frames(c),
                    "stack_id": c.stack,
                    "stacks": c.stacks,
                    "live_bytes_start": g.live_bytes_start,
                    "live_bytes_end": g.live_bytes_end,
                    "peak_live_bytes": g.peak_live_bytes,
                    "slope_bytes_per_sec": g.fit.slope_bytes_per_sec,
                    "r2": g.fit.r2,
                    "monotonicity": g.fit.monotonicity,
                    "score": g.fit.score,
                    "suspect": g.fit.suspect(),
                    "window_buckets": g.fit.window,
                    "teardown_excluded": g.fit.teardown_excluded,
                    "series": c.stats.series(),
                })
            })
            .collect(),
    );
    base.insert(
        "sites_live_at_exit".into(),
        top_by_live(&sites, top)
            .into_iter()
            .map(|c| {
                let s = &c.stats;
                json!({
                    "stack": c.stack,
                    "stacks": c.stacks,
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
                    "frames": frames(c),
                })
            })
            .collect(),
    );
}

/// The text sections of an image: allocation rate, top sites at the peak, top sites
/// live at exit, growth by call site with sparklines.
pub fn text(
    a: &Analysis,
    img: &Image,
    out: &mut dyn Write,
    opts: &AnalyzeOptions,
    sym: &dyn Symbolizer,
) -> io::Result<()> {
    let sites = call_sites(&a.stacks, &img.sites, opts.call_site_depth);
    if let Some(r) = allocation_rate(img) {
        writeln!(out, "   allocation rate: {} allocs/s", rate(r))?;
    }
    let peak = top_at_peak(&sites, opts.top);
    if !peak.is_empty() {
        writeln!(out, "   top call sites at the heap peak:")?;
        for (rank, c) in peak.iter().enumerate() {
            writeln!(
                out,
                "   #{}: {} at the peak, stack {}",
                rank + 1,
                bytes_in_blocks(c.stats.peak_bytes, c.stats.peak_blocks),
                c.stack
            )?;
            write_frames(a, img, c, out, sym)?;
        }
    }
    let top = top_by_live(&sites, opts.top);
    if !top.is_empty() {
        writeln!(out, "   top call sites by bytes in use at exit:")?;
        for (rank, c) in top.iter().enumerate() {
            let s = &c.stats;
            writeln!(
                out,
                "   #{}: {} from {} allocs ({} bytes allocated), stack {}",
                rank + 1,
                bytes_in_blocks(s.live_bytes, s.live_blocks),
                num(s.allocations),
                num(s.allocated_bytes),
                c.stack
            )?;
            write_frames(a, img, c, out, sym)?;
        }
    }
    let g: Vec<_> = growth(&img.sites, &sites)
        .into_iter()
        .filter(|x| x.fit.suspect())
        .collect();
    if !g.is_empty() {
        writeln!(
            out,
            "   growing call sites (leak suspects; {} buckets of {}):",
            g.first().map_or(0, |x| sites[x.site].stats.series().len()),
            duration(img.sites.bucket_ns())
        )?;
        for (rank, x) in g.iter().take(opts.top).enumerate() {
            let c = &sites[x.site];
            writeln!(
                out,
                "   #{}: {} peak {}, at exit {}, {}/s, r2 {:.2}, monotonicity {:.2}{}, stack {}",
                rank + 1,
                sparkline(c.stats.series(), SPARK_WIDTH),
                bytes(x.peak_live_bytes),
                bytes(x.live_bytes_end),
                signed_bytes(x.fit.slope_bytes_per_sec),
                x.fit.r2,
                x.fit.monotonicity,
                if x.fit.teardown_excluded {
                    ", freed at the end"
                } else {
                    ""
                },
                c.stack
            )?;
            write_frames(a, img, c, out, sym)?;
        }
    }
    Ok(())
}

fn write_frames(
    a: &Analysis,
    img: &Image,
    c: &CallSite,
    out: &mut dyn Write,
    sym: &dyn Symbolizer,
) -> io::Result<()> {
    write_stack(out, &frames_of(c.addresses(&a.stacks), &img.modules, sym))
}

/// Allocations per second over the image's lifetime (`None` for a zero-length one).
fn allocation_rate(image: &Image) -> Option<f64> {
    let ns = image.end_ts.saturating_sub(image.start_ts);
    (ns > 0).then(|| image.totals.allocations as f64 * 1e9 / ns as f64)
}
