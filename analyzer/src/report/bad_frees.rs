//! Bad frees in words, memcheck's: the heading of each finding ("Invalid free() /
//! delete / delete[] / realloc()", "Mismatched free() / delete / delete []") and the
//! sentence that says where its address was ("Address 0x… is 8 bytes inside a block of
//! size 64 alloc'd"), shared by the text report, the JSON document (`description`)
//! and, through it, the HTML page; and the text report's section.

use std::io::{self, Write};

use super::frames::{symbolize_stack, TextStacks};
use crate::checks::{Finding, FindingKind};
use crate::replay::Image;
use crate::symbolize::{DataSymbol, Symbolizer};
use crate::units::num;
use crate::{Analysis, AnalyzeOptions};

/// memcheck's heading of the finding's kind.
pub(crate) fn memcheck_heading(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::DoubleFree | FindingKind::InvalidFree => {
            "Invalid free() / delete / delete[] / realloc()"
        }
        FindingKind::MismatchedFree => "Mismatched free() / delete / delete []",
    }
}

/// What heaptape found, after memcheck's heading: "double free by free, 1 time",
/// "operator delete of a block allocated by operator new[], 2 times".
pub(crate) fn summary(f: &Finding) -> String {
    let times = match f.count {
        1 => "1 time".to_string(),
        n => format!("{} times", num(n)),
    };
    match (f.kind, f.alloc_fn) {
        (FindingKind::MismatchedFree, Some(alloc)) => format!(
            "{} of a block allocated by {}, {times}",
            f.free_fn.name(),
            alloc.name()
        ),
        (kind, _) => {
            let what = match kind {
                FindingKind::DoubleFree => "double free",
                FindingKind::InvalidFree => "invalid free",
                FindingKind::MismatchedFree => "mismatched free",
            };
            format!("{what} by {}, {times}", f.free_fn.name())
        }
    }
}

/// Where the (first) released address was, in memcheck's words: inside which block,
/// live ("alloc'd") or freed ("free'd"); else inside which data symbol (a global),
/// else in which module's segment; else "not malloc'd or (recently) free'd" (memcheck,
/// which sees the threads' stacks, says "not stack'd, malloc'd or (recently) free'd";
/// the trace does not show stacks).
pub(crate) fn address_sentence(f: &Finding, img: &Image, sym: &dyn Symbolizer) -> String {
    let address = f.first.address;
    if let Some(b) = f.first.block {
        return format!(
            "Address {address:#x} is {} bytes inside a block of size {} {}",
            num(b.offset),
            num(b.size),
            if b.freed { "free'd" } else { "alloc'd" }
        );
    }
    if let Some(DataSymbol { name, offset, .. }) = sym.data_symbol(&img.modules, address) {
        return format!(
            "Address {address:#x} is {} bytes inside data symbol \"{name}\"",
            num(offset)
        );
    }
    let segment = img.modules.lookup(address).and_then(|hit| {
        let s = hit
            .module
            .segments
            .iter()
            .find(|s| address.wrapping_sub(s.start) < s.len)?;
        Some((hit.module.path.clone(), s.prot))
    });
    match segment {
        Some((path, prot)) => {
            let bit = |b: u8, c: char| if prot & b != 0 { c } else { '-' };
            format!(
                "Address {address:#x} is in a {}{}{} mapped file {path} segment",
                bit(1, 'r'),
                bit(2, 'w'),
                bit(4, 'x')
            )
        }
        None => format!("Address {address:#x} is not malloc'd or (recently) free'd"),
    }
}

/// The text report's section: the counts by kind, then each finding (at most
/// `opts.top`) as memcheck prints an error: heading, the release's stack, where the
/// address was, the earlier free's stack and the block's allocation stack.
pub(crate) fn text(
    a: &Analysis,
    img: &Image,
    out: &mut dyn Write,
    opts: &AnalyzeOptions,
    sym: &dyn Symbolizer,
    stacks: &TextStacks,
) -> io::Result<()> {
    let f = &img.findings;
    if f.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "   bad frees: {} double, {} invalid, {} mismatched",
        num(f.count(FindingKind::DoubleFree)),
        num(f.count(FindingKind::InvalidFree)),
        num(f.count(FindingKind::MismatchedFree))
    )?;
    let frames = |id| symbolize_stack(&a.stacks, &img.modules, id, sym);
    let stack = |out: &mut dyn Write, id| stacks.write(out, &frames(id));
    for finding in f.list().iter().take(opts.top) {
        writeln!(
            out,
            "   {} ({}, stack {})",
            memcheck_heading(finding.kind),
            summary(finding),
            finding.free_stack
        )?;
        stack(out, finding.free_stack)?;
        writeln!(out, "     {}", address_sentence(finding, img, sym))?;
        match (finding.previous_free_stack, finding.alloc_stack) {
            (Some(freed), alloc) => {
                stack(out, freed)?;
                let alloc = alloc.map(frames).unwrap_or_default();
                if !alloc.is_empty() {
                    writeln!(out, "     Block was alloc'd at")?;
                    stacks.write(out, &alloc)?;
                }
            }
            (None, Some(alloc)) => stack(out, alloc)?,
            (None, None) => {}
        }
    }
    Ok(())
}
