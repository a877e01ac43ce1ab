//! The per-call-site sections of both renderers, which [`crate::callsites`] computes:
//! allocation rate, the sites holding memory at the peak, the sites live at exit
//! (grouped by `--call-site-depth`) and growth by call site.

use std::io::{self, Write};

use super::frames::{frames_of, json_frames, TextStacks};
use super::limits::Limits;
use super::schema;
use crate::callsites::ranking::{call_sites, growth, top_at_peak, top_by_live, CallSite};
use crate::replay::Image;
use crate::symbolize::Symbolizer;
use crate::units::{bytes, bytes_in_blocks, duration, num, rate, signed_bytes, sparkline};
use crate::{Analysis, AnalyzeOptions};

/// Characters of a sparkline in the text report.
const SPARK_WIDTH: usize = 32;

/// The call-site keys of an image's JSON object (its `totals` carry
/// [`allocation_rate`] too).
pub(crate) struct CallSiteSections {
    /// `call_site_depth`.
    pub call_site_depth: Option<usize>,
    /// `sites_at_peak`.
    pub sites_at_peak: Vec<schema::SiteAtPeak>,
    /// `growth_bucket_ns`.
    pub growth_bucket_ns: u64,
    /// `growth`.
    pub growth: Vec<schema::GrowthSite>,
    /// `sites_live_at_exit` (grouped by `--call-site-depth`).
    pub sites_live_at_exit: Vec<schema::SiteLiveAtExit>,
}

/// The call-site sections of `img`: the `--top` sites of each list, at most
/// `limits.ranked` of them.
pub(crate) fn json(
    a: &Analysis,
    img: &Image,
    sym: &dyn Symbolizer,
    limits: &Limits,
    stacks: &schema::StackMaker,
) -> CallSiteSections {
    let top = a.options.top;
    let sites = image_call_sites(a, img, sym);
    let frames = |c: &CallSite| {
        stacks.stack(json_frames(frames_of(
            c.addresses(&a.stacks),
            &img.modules,
            sym,
        )))
    };
    let sites_at_peak = top_at_peak(&sites, top)
        .into_iter()
        .take(limits.ranked)
        .map(|c| schema::SiteAtPeak {
            peak_blocks: c.stats.peak_blocks,
            peak_bytes: c.stats.peak_bytes,
            stack: frames(c),
            stack_id: c.stack,
            stacks: c.stacks,
        })
        .collect();
    let growth = growth(&img.sites, &sites)
        .into_iter()
        .take(top.min(limits.ranked))
        .map(|g| {
            let c = &sites[g.site];
            schema::GrowthSite {
                live_bytes_end: g.live_bytes_end,
                live_bytes_start: g.live_bytes_start,
                monotonicity: g.fit.monotonicity,
                peak_live_bytes: g.peak_live_bytes,
                r2: g.fit.r2,
                score: g.fit.score,
                series: c.stats.series().to_vec(),
                slope_bytes_per_sec: g.fit.slope_bytes_per_sec,
                stack: frames(c),
                stack_id: c.stack,
                stacks: c.stacks,
                suspect: g.fit.suspect(),
                teardown_excluded: g.fit.teardown_excluded,
                window_buckets: g.fit.window,
            }
        })
        .collect();
    let sites_live_at_exit = top_by_live(&sites, top)
        .into_iter()
        .take(limits.ranked)
        .map(|c| {
            let s = &c.stats;
            schema::SiteLiveAtExit {
                allocated_bytes: s.allocated_bytes,
                allocations: s.allocations,
                stack: frames(c),
                frees: s.frees,
                inherited_blocks: s.inherited_blocks,
                inherited_bytes: s.inherited_bytes,
                live_at_exit_blocks: s.live_blocks,
                live_at_exit_bytes: s.live_bytes,
                peak_blocks: s.peak_blocks,
                peak_bytes: s.peak_bytes,
                stack_id: c.stack,
                stacks: c.stacks,
                temporary_allocations: s.temporary_allocations,
            }
        })
        .collect();
    CallSiteSections {
        call_site_depth: a.options.call_site_depth.filter(|&d| d > 0),
        sites_at_peak,
        growth_bucket_ns: img.sites.bucket_ns(),
        growth,
        sites_live_at_exit,
    }
}

/// The text sections of an image: allocation rate, top sites at the peak, top sites
/// live at exit, growth by call site with sparklines.
pub fn text(
    a: &Analysis,
    img: &Image,
    out: &mut dyn Write,
    opts: &AnalyzeOptions,
    sym: &dyn Symbolizer,
    stacks: &TextStacks,
) -> io::Result<()> {
    let sites = call_sites(
        &a.stacks,
        &img.sites,
        opts.call_site_depth,
        &img.modules,
        sym,
    );
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
            stacks.write(out, &frames_of(c.addresses(&a.stacks), &img.modules, sym))?;
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
            stacks.write(out, &frames_of(c.addresses(&a.stacks), &img.modules, sym))?;
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
            stacks.write(out, &frames_of(c.addresses(&a.stacks), &img.modules, sym))?;
        }
    }
    Ok(())
}

/// The call sites of `img`, grouped by the analysis's `--call-site-depth`: what every
/// report that lists or draws call sites starts from.
pub(crate) fn image_call_sites(a: &Analysis, img: &Image, sym: &dyn Symbolizer) -> Vec<CallSite> {
    call_sites(
        &a.stacks,
        &img.sites,
        a.options.call_site_depth,
        &img.modules,
        sym,
    )
}

/// Allocations per second over the image's lifetime (`None` for a zero-length one).
pub(crate) fn allocation_rate(image: &Image) -> Option<f64> {
    let ns = image.end_ts.saturating_sub(image.start_ts);
    (ns > 0).then(|| image.totals.allocations as f64 * 1e9 / ns as f64)
}
