//! The text report (`heaptape analyze`): one block per process, worded after valgrind's
//! heap summary so that its users recognise the figures at a glance.

use std::io::{self, Write};

use super::frames::{symbolize_stack, TextStacks};
use super::names::{describe_exit, origin_name};
use crate::checks::leaks::{Heuristic, LeakCheck, LeakKind, LossRecord};
use crate::replay::{Image, ImageEnd, Process};
use crate::symbolize::Symbolizer;
use crate::units::{bytes_in_blocks, num, seconds};
use crate::{Analysis, AnalyzeOptions};

/// Writes the whole report.
pub fn render(
    a: &Analysis,
    out: &mut dyn Write,
    opts: &AnalyzeOptions,
    sym: &dyn Symbolizer,
) -> io::Result<()> {
    let h = &a.header;
    writeln!(
        out,
        "heaptape trace of `{}` (pid {}), recorded by {} on {} (kernel {})",
        command_line(&h.command),
        h.pid,
        h.tool_version,
        h.host,
        h.kernel
    )?;
    if a.truncation.is_some() {
        writeln!(
            out,
            "warning: the trace is incomplete; figures cover what was recorded"
        )?;
    }
    if a.processes.is_empty() {
        writeln!(out, "\nno process in the trace")?;
    }
    let stacks = TextStacks::new(opts.show_below_main);
    for p in &a.processes {
        writeln!(out)?;
        process(a, p, out, opts, sym, &stacks)?;
    }
    Ok(())
}

fn process(
    a: &Analysis,
    p: &Process,
    out: &mut dyn Write,
    opts: &AnalyzeOptions,
    sym: &dyn Symbolizer,
    stacks: &TextStacks,
) -> io::Result<()> {
    let img = p.image();
    let mut origin = String::new();
    if let Some(o) = p.origin {
        origin.push_str(origin_name(o));
        if let Some(pp) = p.parent_pid {
            origin.push_str(&format!(" of {pp}"));
        }
        origin.push_str(", ");
    }
    writeln!(
        out,
        "== process {}: {} ({}{}, after {})",
        p.pid,
        command_line(&img.command),
        origin,
        describe_exit(p.exit, img.end),
        seconds(img.end_ts.saturating_sub(img.start_ts))
    )?;
    for prev in p.previous_images() {
        let how = match prev.end {
            Some(ImageEnd::Exec) => "replaced by exec",
            _ => "ended",
        };
        writeln!(
            out,
            "   earlier image `{}`, {how} at {}: {} allocs, {} frees, {} bytes allocated; {} discarded",
            command_line(&prev.command),
            seconds(prev.end_ts),
            num(prev.totals.allocations),
            num(prev.totals.frees),
            num(prev.totals.allocated_bytes),
            bytes_in_blocks(prev.totals.live_at_exit_bytes, prev.totals.live_at_exit_blocks),
        )?;
    }
    image(a, img, out, opts, sym, stacks)?;
    super::resources::text(a, p, out, opts, sym, stacks)
}

fn image(
    a: &Analysis,
    img: &Image,
    out: &mut dyn Write,
    opts: &AnalyzeOptions,
    sym: &dyn Symbolizer,
    stacks: &TextStacks,
) -> io::Result<()> {
    leak_summary(a, img, out, opts, sym, stacks)?;
    super::bad_frees::text(a, img, out, opts, sym, stacks)?;
    let t = &img.totals;
    writeln!(
        out,
        "   total heap usage: {} allocs, {} frees, {} bytes allocated",
        num(t.allocations),
        num(t.frees),
        num(t.allocated_bytes)
    )?;
    writeln!(
        out,
        "   in use at exit: {}",
        bytes_in_blocks(t.live_at_exit_bytes, t.live_at_exit_blocks)
    )?;
    match t.peak_ts {
        Some(ts) => writeln!(
            out,
            "   peak heap usage: {}, at {}",
            bytes_in_blocks(t.peak_live_bytes, t.peak_live_blocks),
            seconds(ts)
        )?,
        None => writeln!(out, "   peak heap usage: 0 bytes in 0 blocks")?,
    }
    write!(
        out,
        "   temporary allocations: {}",
        num(t.temporary_allocations)
    )?;
    if t.allocations > 0 {
        write!(
            out,
            " ({:.1}% of allocations)",
            t.temporary_allocations as f64 * 100.0 / t.allocations as f64
        )?;
    }
    writeln!(out)?;
    if t.failed_allocations > 0 {
        writeln!(out, "   failed allocations: {}", num(t.failed_allocations))?;
    }
    if t.inherited_blocks > 0 {
        writeln!(
            out,
            "   inherited at fork: {}",
            bytes_in_blocks(t.inherited_bytes, t.inherited_blocks)
        )?;
    }
    if t.untracked_frees > 0 {
        writeln!(
            out,
            "   untracked frees: {} (of blocks allocated before the recorder attached)",
            num(t.untracked_frees)
        )?;
    }
    if t.allocator_internal_frees > 0 {
        writeln!(
            out,
            "   allocator-internal frees: {} (the C library's own bookkeeping, not counted)",
            num(t.allocator_internal_frees)
        )?;
    }
    super::callsites::text(a, img, out, opts, sym, stacks)?;
    let retention = super::retention::summary(a, img, sym, opts.top);
    super::snapshots::text(a, img, out, opts.top, sym, retention.as_ref())?;
    match &retention {
        Some(r) => super::retention::text(a, img, r, out, sym, stacks),
        None => Ok(()),
    }
}

/// memcheck's LEAK SUMMARY (suppressed blocks on their own line), then the largest
/// definitely and possibly lost loss records no suppression hides (the kinds memcheck
/// shows by default), largest first.
fn leak_summary(
    a: &Analysis,
    img: &Image,
    out: &mut dyn Write,
    opts: &AnalyzeOptions,
    sym: &dyn Symbolizer,
    stacks: &TextStacks,
) -> io::Result<()> {
    let r = match &img.leaks {
        LeakCheck::Done(r) => r,
        LeakCheck::Unavailable(reason) => {
            return writeln!(out, "   leak summary: unavailable: {reason}");
        }
    };
    let s = &r.summary;
    writeln!(out, "   LEAK SUMMARY:")?;
    for (label, c) in [
        ("   definitely lost", s.definitely_lost),
        ("   indirectly lost", s.indirectly_lost),
        ("     possibly lost", s.possibly_lost),
        ("   still reachable", s.still_reachable),
    ] {
        writeln!(out, "   {label}: {}", bytes_in_blocks(c.bytes, c.blocks))?;
    }
    if s.reachable_via_heuristic.iter().any(|c| c.blocks > 0) {
        writeln!(
            out,
            "                         of which reachable via heuristic:"
        )?;
        for (h, c) in Heuristic::ALL.iter().zip(s.reachable_via_heuristic) {
            if c.blocks > 0 {
                writeln!(
                    out,
                    "                           {:<19}: {}",
                    h.name(),
                    bytes_in_blocks(c.bytes, c.blocks)
                )?;
            }
        }
    }
    writeln!(
        out,
        "           suppressed: {}",
        bytes_in_blocks(s.suppressed.bytes, s.suppressed.blocks)
    )?;
    // Numbered among all records, suppressed ones included, as memcheck numbers them.
    let n = r.loss_records.len();
    let shown = r
        .reported_records()
        .filter(|lr| matches!(lr.kind, LeakKind::DefinitelyLost | LeakKind::PossiblyLost));
    for lr in shown.take(opts.top) {
        let size = if lr.indirect_bytes > 0 {
            format!(
                "{} ({} direct, {} indirect) bytes",
                num(lr.bytes.saturating_add(lr.indirect_bytes)),
                num(lr.bytes),
                num(lr.indirect_bytes)
            )
        } else {
            format!("{} bytes", num(lr.bytes))
        };
        writeln!(out, "   {size} in {}", loss_record_blocks(lr, n))?;
        stacks.write(
            out,
            &symbolize_stack(&a.stacks, &img.modules, lr.stack, sym),
        )?;
    }
    Ok(())
}

/// memcheck's words for a loss record after its size: "3 blocks are definitely lost in
/// loss record 2 of 5 (malloc)", `n` records in all.
pub(super) fn loss_record_blocks(lr: &LossRecord, n: usize) -> String {
    format!(
        "{} block{} {} {} in loss record {} of {n} ({})",
        num(lr.blocks),
        if lr.blocks == 1 { "" } else { "s" },
        if lr.blocks == 1 { "is" } else { "are" },
        lr.kind,
        lr.number,
        lr.func.name()
    )
}

/// A command line for display; arguments that need it are quoted for a POSIX shell
/// (shlex), so the line can be pasted back.
fn command_line(argv: &[String]) -> String {
    if argv.is_empty() {
        return "(unknown command)".into();
    }
    argv.iter()
        .map(|a| match shlex::try_quote(a) {
            Ok(q) => q.into_owned(),
            // A NUL byte cannot be passed in an argument: shown escaped.
            Err(_) => format!("{a:?}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert_eq!(
            command_line(&["sh".into(), "-c".into(), "echo hi".into(), "it's".into()]),
            "sh -c 'echo hi' \"it's\""
        );
        assert_eq!(command_line(&[]), "(unknown command)");
    }
}
