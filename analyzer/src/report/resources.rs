//! The report sections of [`crate::checks::resources`] (descriptors and mappings left
//! open) and [`crate::checks::timeline`] (live heap beside RSS, and its verdict), for
//! both renderers.

use std::io::{self, Write};

use heaptape_format::{ExitStatus, StackId};

use super::frames::{json_stack, symbolize_stack, TextStacks};
use super::limits::{thin, Limits};
use super::schema;
use crate::checks::resources::kind_name;
use crate::checks::{TimelinePoint, VerdictKind};
use crate::replay::{Image, ImageEnd, Process};
use crate::symbolize::Symbolizer;
use crate::units::{addr, bytes, num, seconds, sparkline};
use crate::{Analysis, AnalyzeOptions};

/// The resource keys of an image's JSON object.
pub(crate) struct ResourceSections {
    /// `fd_leaks`.
    pub fd_leaks: Vec<schema::FdLeak>,
    /// `mmap_leaks`.
    pub mmap_leaks: Vec<schema::MmapLeak>,
    /// `timeline`.
    pub timeline: Vec<schema::TimelinePoint>,
    /// `timeline_verdict`.
    pub timeline_verdict: schema::Verdict,
}

/// The resource sections of `img`: descriptors and mappings left open (at most
/// `limits.ranked` of each), the timeline (at most about `limits.samples` points) and
/// its verdict.
pub(crate) fn json(
    a: &Analysis,
    img: &Image,
    sym: &dyn Symbolizer,
    limits: &Limits,
    stacks: &schema::StackMaker,
) -> ResourceSections {
    let stack = |id: StackId| stacks.stack(json_stack(&a.stacks, &img.modules, id, sym));
    let r = &img.resources;
    let v = img.timeline.verdict();
    let fd_leaks = r
        .open_fds()
        .into_iter()
        .take(limits.ranked)
        .map(|f| schema::FdLeak {
            duplicate_of: f.duplicate_of,
            fd: f.fd,
            kind: kind_name(f.kind),
            opened_ns: f.ts,
            path: f.detail.clone(),
            stack: stack(f.stack),
            stack_id: f.stack,
            tid: f.tid,
        })
        .collect();
    let mmap_leaks = r
        .own_mappings()
        .into_iter()
        .take(limits.ranked)
        .map(|mp| schema::MmapLeak {
            address: addr(mp.address),
            bytes: mp.len,
            fd: mp.fd,
            flags: mp.flags,
            mapped_ns: mp.ts,
            prot: mp.prot,
            stack: stack(mp.stack),
            stack_id: mp.stack,
        })
        .collect();
    let timeline = thin(img.timeline.points(), limits.samples)
        .into_iter()
        .map(|p| schema::TimelinePoint {
            live_heap_bytes: p.live_heap_bytes,
            mapped_bytes: p.mapped_bytes,
            rss: p.rss,
            rss_anon: p.rss_anon,
            t_ns: p.ts,
        })
        .collect();
    let timeline_verdict = schema::Verdict {
        explanation: v.explanation.clone(),
        heap_growth_bytes: v.heap_growth,
        kind: v.kind.name(),
        rss_anon_growth_bytes: v.rss_anon_growth,
        rss_samples: img.timeline.samples_seen(),
        sites: v
            .sites
            .iter()
            .map(|s| schema::VerdictSite {
                blocks: s.blocks,
                bytes: s.bytes,
                stack: stack(s.stack),
                stack_id: s.stack,
            })
            .collect(),
    };
    ResourceSections {
        fd_leaks,
        mmap_leaks,
        timeline,
        timeline_verdict,
    }
}

/// When the image's resources were last seen: `exit`, `detach`, `exec` or `the end of
/// the trace`.
fn moment(p: &Process, img: &Image) -> &'static str {
    match (img.end, p.exit) {
        (Some(ImageEnd::Exec), _) => "exec",
        (_, Some(ExitStatus::Detached)) => "detach",
        (Some(ImageEnd::Exit), _) => "exit",
        _ => "the end of the trace",
    }
}

/// The text sections of a process's last image: descriptors and mappings still open,
/// and the memory timeline.
pub fn text(
    a: &Analysis,
    p: &Process,
    out: &mut dyn Write,
    opts: &AnalyzeOptions,
    sym: &dyn Symbolizer,
    stacks: &TextStacks,
) -> io::Result<()> {
    let img = p.image();
    let when = moment(p, img);
    let stack_lines = |out: &mut dyn Write, id: StackId| -> io::Result<()> {
        stacks.write(out, &symbolize_stack(&a.stacks, &img.modules, id, sym))
    };
    let fds = img.resources.open_fds();
    if !fds.is_empty() {
        writeln!(
            out,
            "   FILE DESCRIPTORS: {} open at {when} (opened by the program)",
            fds.len()
        )?;
        for f in fds.iter().take(opts.top.max(1)) {
            let mut what = f.detail.clone();
            if let Some(old) = f.duplicate_of {
                what.push_str(&format!(" (duplicate of fd {old})"));
            }
            writeln!(out, "   Open file descriptor {}: {what}", f.fd)?;
            stack_lines(out, f.stack)?;
        }
        if fds.len() > opts.top.max(1) {
            writeln!(out, "   ... and {} more", fds.len() - opts.top.max(1))?;
        }
    }
    let maps = img.resources.own_mappings();
    if !maps.is_empty() {
        let total: u64 = maps.iter().map(|m| m.len).sum();
        writeln!(
            out,
            "   MAPPINGS: {} bytes in {} region{} still mapped at {when} (mapped by the program)",
            num(total),
            num(maps.len() as u64),
            if maps.len() == 1 { "" } else { "s" }
        )?;
        for m in maps.iter().take(opts.top.max(1)) {
            writeln!(
                out,
                "   Mapped region {:#x}: {} bytes{}",
                m.address,
                num(m.len),
                if m.fd >= 0 {
                    format!(" of fd {}", m.fd)
                } else {
                    String::new()
                }
            )?;
            stack_lines(out, m.stack)?;
        }
        if maps.len() > opts.top.max(1) {
            writeln!(out, "   ... and {} more", maps.len() - opts.top.max(1))?;
        }
    }
    let points = img.timeline.points();
    if points.is_empty() {
        // No RSS samples: nothing to show or judge.
        return Ok(());
    }
    {
        let (first, last) = (points[0].ts, points[points.len() - 1].ts);
        writeln!(
            out,
            "   memory timeline ({} samples, {} to {}):",
            num(img.timeline.samples_seen()),
            seconds(first),
            seconds(last)
        )?;
        let series = |f: fn(&TimelinePoint) -> u64| -> Vec<u64> { points.iter().map(f).collect() };
        for (label, values) in [
            ("live heap", series(|p| p.live_heap_bytes)),
            ("mapped   ", series(|p| p.mapped_bytes)),
            ("RSS anon ", series(|p| p.rss_anon)),
            ("RSS      ", series(|p| p.rss)),
        ] {
            let max = values.iter().copied().max().unwrap_or(0);
            writeln!(
                out,
                "     {label} {} max {}",
                sparkline(&values, values.len()),
                bytes(max)
            )?;
        }
    }
    let v = img.timeline.verdict();
    writeln!(
        out,
        "   timeline verdict: {}: {}",
        v.kind.name(),
        v.explanation
    )?;
    for (i, s) in v.sites.iter().enumerate() {
        if v.kind == VerdictKind::Mappings {
            writeln!(
                out,
                "   mapping site #{}: {} bytes in {} regions mapped after start-up, still mapped when the growth ended, stack {}",
                i + 1,
                num(s.bytes),
                num(s.blocks),
                s.stack
            )?;
        } else {
            writeln!(
                out,
                "   growing site #{}: {} bytes in {} blocks allocated after start-up, live at {when}, stack {}",
                i + 1,
                num(s.bytes),
                num(s.blocks),
                s.stack
            )?;
        }
        stack_lines(out, s.stack)?;
    }
    Ok(())
}
