//! An image's snapshots over time (see `checks::snapshots`): the leak classes and the
//! largest root at each snapshot, and when the blocks lost at the last one became
//! unreachable, in the text report and the JSON document.

use std::io::{self, Write};

use super::frames::{describe, json_stack, symbolize_stack};
use super::json_count as count;
use super::limits::Limits;
use super::retention::root_words;
use super::schema::{self, StackMaker};
use crate::checks::leaks::{Count, LeakSummary};
use crate::checks::retention::Retention;
use crate::checks::snapshots::{LostBetween, SnapshotTime};
use crate::replay::Image;
use crate::symbolize::{first_program_frame, Symbolizer};
use crate::units::{addr, bytes_in_blocks, duration, num, seconds};
use crate::Analysis;

/// Each snapshot of `img`, oldest first, with its summary and retention (the last one
/// from the image's leak check and `last_retention`).
fn each<'a>(
    img: &'a Image,
    last_retention: Option<&'a Retention>,
) -> Vec<(SnapshotTime, LeakSummary, Option<&'a Retention>)> {
    let mut all: Vec<_> = img
        .snapshots
        .earlier
        .iter()
        .map(|e| (e.time, e.summary, Some(&e.retention)))
        .collect();
    if let (Some(r), Some(&t)) = (img.leaks.report(), img.snapshots.times.last()) {
        all.push((t, r.summary, last_retention));
    }
    all
}

fn when(t: &SnapshotTime) -> String {
    let mut s = seconds(t.ts);
    match (t.trigger, t.pause_ns) {
        (Some(trigger), Some(p)) => {
            s.push_str(&format!(" ({}, paused {})", trigger.name(), duration(p)))
        }
        (Some(trigger), None) => s.push_str(&format!(" ({})", trigger.name())),
        _ => {}
    }
    s
}

/// The text section: only for an image with more than one snapshot.
pub(crate) fn text(
    a: &Analysis,
    img: &Image,
    out: &mut dyn Write,
    top: usize,
    sym: &dyn Symbolizer,
    last_retention: Option<&Retention>,
) -> io::Result<()> {
    if img.snapshots.earlier.is_empty() {
        return Ok(());
    }
    let all = each(img, last_retention);
    writeln!(out, "   snapshots ({}), leak classes at each:", all.len())?;
    for (t, s, r) in &all {
        let c = |c: Count| bytes_in_blocks(c.bytes, c.blocks);
        write!(
            out,
            "     {}: definitely lost {}, indirectly lost {}, possibly lost {}, still \
             reachable {}",
            when(t),
            c(s.definitely_lost),
            c(s.indirectly_lost),
            c(s.possibly_lost),
            c(s.still_reachable)
        )?;
        match r.and_then(|r| r.roots.first()) {
            Some(root) => writeln!(
                out,
                "; most held by {} ({} bytes)",
                root_words(img, &root.root, sym),
                num(root.retained.bytes)
            )?,
            None => writeln!(out)?,
        }
    }
    let Some(last) = img.leaks.report() else {
        return Ok(());
    };
    let lost = img.snapshots.lost_between(last);
    if lost.is_empty() {
        return Ok(());
    }
    // Grouped by allocation stack and bracket.
    let mut groups: Vec<((u32, u64, u64), Count)> = Vec::new();
    for l in &lost {
        let key = (l.stack, l.reachable, l.lost);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, c)) => c.add(l.size),
            None => {
                let mut c = Count::default();
                c.add(l.size);
                groups.push((key, c));
            }
        }
    }
    groups.sort_by_key(|g| (g.0 .1, g.0 .2, g.0 .0));
    writeln!(
        out,
        "   definitely lost blocks, by when they became unreachable:"
    )?;
    for ((stack, from, to), c) in groups.iter().take(top.max(1)) {
        let frames = symbolize_stack(&a.stacks, &img.modules, *stack, sym);
        let site = frames
            .get(first_program_frame(&frames))
            .map_or_else(|| "an unknown place".to_string(), describe);
        writeln!(
            out,
            "     {} between {} and {}, allocated at {site}",
            bytes_in_blocks(c.bytes, c.blocks),
            seconds(*from),
            seconds(*to)
        )?;
    }
    if groups.len() > top.max(1) {
        writeln!(
            out,
            "     ... and {} more groups",
            groups.len() - top.max(1)
        )?;
    }
    Ok(())
}

/// The JSON list of snapshots, oldest first (empty without a complete one).
pub(crate) fn json(
    img: &Image,
    sym: &dyn Symbolizer,
    last_retention: Option<&Retention>,
) -> Vec<schema::Snapshot> {
    each(img, last_retention)
        .into_iter()
        .map(|(t, s, r)| schema::Snapshot {
            leaks: schema::SnapshotLeaks {
                definitely_lost: count(s.definitely_lost),
                indirectly_lost: count(s.indirectly_lost),
                possibly_lost: count(s.possibly_lost),
                still_reachable: count(s.still_reachable),
                suppressed: count(s.suppressed),
            },
            pause_ns: t.pause_ns,
            roots: r.map_or_else(Vec::new, |r| {
                r.roots
                    .iter()
                    .take(3)
                    .map(|root| schema::SnapshotRoot {
                        description: root_words(img, &root.root, sym),
                        kind: root.root.kind(),
                        retained: count(root.retained),
                    })
                    .collect()
            }),
            time_ns: t.ts,
            trigger: t.trigger.map(|t| t.name()),
        })
        .collect()
}

/// The JSON list of the definitely lost blocks of the last snapshot and when each
/// became unreachable (empty with fewer than two snapshots).
pub(crate) fn json_lost(
    a: &Analysis,
    img: &Image,
    sym: &dyn Symbolizer,
    limits: &Limits,
    stacks: &StackMaker,
) -> Vec<schema::LostBetween> {
    let Some(last) = img.leaks.report() else {
        return Vec::new();
    };
    let mut lost: Vec<LostBetween> = img.snapshots.lost_between(last);
    lost.sort_by_key(|l| (l.lost, l.allocated, l.address));
    lost.truncate(limits.ranked);
    lost.into_iter()
        .map(|l| schema::LostBetween {
            address: addr(l.address),
            allocated_ns: l.allocated,
            lost_ns: l.lost,
            reachable_ns: l.reachable,
            size: l.size,
            stack: stacks.stack(json_stack(&a.stacks, &img.modules, l.stack, sym)),
            stack_id: l.stack,
        })
        .collect()
}
