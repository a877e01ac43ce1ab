//! The per-call-site sections of both renderers that [`crate::callsites`] and
//! [`crate::growth`] compute: allocation rate, the sites holding memory at the peak, the
//! sites live at exit (grouped by `--call-site-depth`) and growth by call site.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use crate::callsites::{allocation_rate, call_sites, growth, top_at_peak, top_by_live, CallSite};
use crate::growth::sparkline;
use crate::replay::Image;
use crate::symbolize::Symbolizer;
use crate::{Analysis, AnalyzeOptions};

use super::json::frame_list;
use super::text::num;

/// Characters of a sparkline in the text report.
const SPARK_WIDTH: usize = 32;

/// The JSON keys of an image: `call_site_depth`, `sites_at_peak`, `growth_bucket_ns`,
/// `growth`, `sites_live_at_exit` (grouped), and `totals.allocation_rate_per_sec`
/// (merged into `totals`, which `base` already holds).
pub fn json(a: &Analysis, img: &Image, sym: &dyn Symbolizer, base: &mut Map<String, Value>) {
    let top = a.options.top;
    let sites = call_sites(&a.stacks, img, a.options.call_site_depth);
    let frames = |c: &CallSite| frame_list(&c.frames(&a.stacks, img, sym));
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
        growth(img, &sites)
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
    let sites = call_sites(&a.stacks, img, opts.call_site_depth);
    if let Some(rate) = allocation_rate(img) {
        writeln!(out, "   allocation rate: {} allocs/s", rate_str(rate))?;
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
    let g: Vec<_> = growth(img, &sites)
        .into_iter()
        .filter(|x| x.fit.suspect())
        .collect();
    if !g.is_empty() {
        writeln!(
            out,
            "   growing call sites (leak suspects; {} buckets of {}):",
            g.first().map_or(0, |x| sites[x.site].stats.series().len()),
            duration_str(img.sites.bucket_ns())
        )?;
        for (rank, x) in g.iter().take(opts.top).enumerate() {
            let c = &sites[x.site];
            writeln!(
                out,
                "   #{}: {} peak {}, at exit {}, {}/s, r2 {:.2}, monotonicity {:.2}{}, stack {}",
                rank + 1,
                sparkline(c.stats.series(), SPARK_WIDTH),
                bytes_str(x.peak_live_bytes),
                bytes_str(x.live_bytes_end),
                signed_bytes_str(x.fit.slope_bytes_per_sec),
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
    for (i, frame) in c.frames(&a.stacks, img, sym).iter().enumerate() {
        let word = if i == 0 { "at" } else { "by" };
        writeln!(out, "        {word} {frame}")?;
    }
    Ok(())
}

fn bytes_in_blocks(bytes: u64, blocks: u64) -> String {
    format!(
        "{} bytes in {} block{}",
        num(bytes),
        num(blocks),
        if blocks == 1 { "" } else { "s" }
    )
}

fn rate_str(r: f64) -> String {
    if r >= 100.0 {
        num(r.round() as u64)
    } else {
        format!("{r:.2}")
    }
}

/// Bytes with a binary unit: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes_str(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn signed_bytes_str(v: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "+" };
    format!("{sign}{}", bytes_str(v.abs().round() as u64))
}

fn duration_str(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} µs", ns as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes_str(512), "512 B");
        assert_eq!(bytes_str(1536), "1.5 KiB");
        assert_eq!(signed_bytes_str(-2048.0), "-2.0 KiB");
        assert_eq!(duration_str(1 << 20), "1.05 ms");
        assert_eq!(rate_str(1234.4), "1,234");
        assert_eq!(rate_str(2.5), "2.50");
    }
}
