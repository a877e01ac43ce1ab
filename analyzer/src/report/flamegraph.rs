//! Flamegraphs of a trace (`heaptape flamegraph`), drawn by inferno.
//!
//! Each call stack of each process image contributes one *folded* line: its frames,
//! outermost first, joined by `;`, and the stack's value of the chosen [`Metric`].
//! A frame is named by its function (inlined calls are frames of their own), else
//! `module+0xoffset`, else its address. When the trace holds more than one process
//! image, every line starts with a frame naming the process (`pid 42: ./server`), so
//! the graph splits by process first. Lines with the same frames are added up; lines
//! whose value is 0 are left out.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use std::collections::HashMap;

use heaptape_format::StackId;

use super::frames::{folded_name, frames_of, symbolize_stack};
use super::retention::root_words;
use crate::callsites::ranking::runtime_prefix;
use crate::callsites::SiteStats;
use crate::checks::leaks::LeakKind;
use crate::checks::retention::{RetentionTree, RootName};
use crate::replay::{Image, Process};
use crate::symbolize::first_program_frame;
use crate::symbolize::{Frame, Symbolizer};
use crate::Analysis;

/// What the widths of a flamegraph measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Metric {
    /// Bytes leaked, as LSan counts them: definitely and indirectly lost at the exit
    /// snapshot (by the allocation stack of each block).
    #[default]
    Leaked,
    /// Bytes still allocated when the image ended, reachable or not.
    InUseAtExit,
    /// Bytes allocated over the whole run.
    AllocatedBytes,
    /// Allocation calls.
    Allocations,
    /// Bytes live at the moment of the image's heap peak.
    Peak,
    /// Temporary allocations (freed by their thread before its next allocation).
    Temporary,
    /// Bytes retained at the last snapshot, by root and dominator-tree path: each
    /// frame is a root (a global, a thread's frame...) or the allocation site of the
    /// blocks it holds, so a frame's width is what would be freed if it let go.
    Retained,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 7] = [
        Metric::Leaked,
        Metric::InUseAtExit,
        Metric::AllocatedBytes,
        Metric::Allocations,
        Metric::Peak,
        Metric::Temporary,
        Metric::Retained,
    ];

    /// The command-line name: `leaked`, `in-use-at-exit`, `allocated-bytes`,
    /// `allocations`, `peak`, `temporary`, `retained`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Leaked => "leaked",
            Metric::InUseAtExit => "in-use-at-exit",
            Metric::AllocatedBytes => "allocated-bytes",
            Metric::Allocations => "allocations",
            Metric::Peak => "peak",
            Metric::Temporary => "temporary",
            Metric::Retained => "retained",
        }
    }

    /// The metric named `name` (see [`Metric::name`]).
    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// A site's value in image `img`, counted as every report counts it
    /// ([`Image::site_figures`]: an image replaced by exec discarded its heap). Not for
    /// [`Metric::Leaked`], which comes from the leak check's loss records, nor
    /// [`Metric::Retained`], from its pointer graph (0 here).
    pub fn value(self, img: &Image, s: &SiteStats) -> u64 {
        let f = img.site_figures(s, 0);
        match self {
            Metric::Leaked | Metric::Retained => 0,
            Metric::InUseAtExit => f.in_use_at_exit_bytes,
            Metric::AllocatedBytes => f.allocated_bytes,
            Metric::Allocations => f.allocations,
            Metric::Peak => f.peak_bytes,
            Metric::Temporary => s.temporary_allocations,
        }
    }

    /// The graph's title: what widths mean.
    pub fn title(self) -> &'static str {
        match self {
            Metric::Leaked => {
                "Bytes leaked (definitely and indirectly lost at exit), by allocation stack"
            }
            Metric::InUseAtExit => "Bytes still allocated at exit (in use), by call stack",
            Metric::AllocatedBytes => "Bytes allocated over the run, by call stack",
            Metric::Allocations => "Allocation calls, by call stack",
            Metric::Peak => "Bytes live at the heap peak, by call stack",
            Metric::Temporary => {
                "Temporary allocations (freed before the thread's next allocation), by call stack"
            }
            Metric::Retained => {
                "Bytes retained at the last snapshot, by root and dominator-tree path"
            }
        }
    }

    /// The unit of the widths: `bytes` or `allocations`.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Leaked
            | Metric::InUseAtExit
            | Metric::AllocatedBytes
            | Metric::Peak
            | Metric::Retained => "bytes",
            Metric::Allocations | Metric::Temporary => "allocations",
        }
    }
}

/// The folded stacks of `a` for `metric`: frame names joined by `;`, outermost first,
/// and their summed values, sorted by frames. Call sites are grouped by the analysis's
/// call-site depth.
pub fn folded(a: &Analysis, metric: Metric, sym: &dyn Symbolizer) -> BTreeMap<String, u64> {
    let images: Vec<(&Process, &Image)> = a.images().collect();
    let tagged = images.len() > 1;
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (p, img) in images {
        let root = tagged.then(|| {
            let cmd = img.command.join(" ");
            folded_name(&Frame {
                function: Some(format!("pid {}: {}", p.pid, cmd.trim())),
                ..Frame::default()
            })
        });
        let mut add = |addresses: Vec<u64>, v: u64| {
            if v == 0 {
                return;
            }
            let frames = frames_of(addresses, &img.modules, sym);
            let mut names: Vec<String> = root.iter().cloned().collect();
            if frames.is_empty() {
                names.push("[unknown stack]".into());
            }
            names.extend(frames.iter().rev().map(folded_name));
            let e = out.entry(names.join(";")).or_insert(0);
            *e = e.saturating_add(v);
        };
        if metric == Metric::Leaked {
            // Each lost block by its own allocation stack (an indirectly lost block's
            // record is its own, not its leader's), cut at the call-site depth;
            // suppressed records are not leaks.
            let depth = a.options.call_site_depth.filter(|&d| d > 0);
            for r in img
                .leaks
                .report()
                .into_iter()
                .flat_map(|r| r.reported_records())
            {
                if matches!(r.kind, LeakKind::DefinitelyLost | LeakKind::IndirectlyLost) {
                    let take = depth.map_or(usize::MAX, |d| {
                        d + runtime_prefix(&a.stacks, r.stack, &img.modules, sym)
                    });
                    add(a.stacks.iter(r.stack).take(take).collect(), r.bytes);
                }
            }
            continue;
        }
        if metric == Metric::Retained {
            retained(a, img, sym, root.as_deref(), &mut out);
            continue;
        }
        for site in super::callsites::image_call_sites(a, img, sym) {
            add(site.addresses(&a.stacks), metric.value(img, &site.stats));
        }
    }
    out
}

/// The folded lines of `img`'s retention: the root, then the allocation site (first
/// program frame) of each block on the dominator-tree path, valued at each block's
/// own size.
fn retained(
    a: &Analysis,
    img: &Image,
    sym: &dyn Symbolizer,
    process: Option<&str>,
    out: &mut BTreeMap<String, u64>,
) {
    let Some(report) = img.leaks.report() else {
        return;
    };
    let tree = RetentionTree::new(report, &a.stacks, &img.modules, sym);
    let mut sites: HashMap<StackId, String> = HashMap::new();
    let mut roots: HashMap<RootName, String> = HashMap::new();
    tree.walk(|root, stacks, size| {
        let mut line: Vec<String> = process.iter().map(|p| p.to_string()).collect();
        line.push(match root {
            Some(r) => roots
                .entry(r.clone())
                .or_insert_with(|| folded_label(&root_words(img, r, sym)))
                .clone(),
            None => "[shared by several roots]".into(),
        });
        for &s in stacks {
            line.push(
                sites
                    .entry(s)
                    .or_insert_with(|| {
                        let frames = symbolize_stack(&a.stacks, &img.modules, s, sym);
                        frames
                            .get(first_program_frame(&frames))
                            .map_or_else(|| "[unknown stack]".into(), folded_name)
                    })
                    .clone(),
            );
        }
        let e = out.entry(line.join(";")).or_insert(0);
        *e = e.saturating_add(size);
    });
}

fn folded_label(s: &str) -> String {
    s.replace([';', '\n', '\r'], ":")
}

/// Writes folded lines (`frames value`), one per stack.
pub fn write_folded(lines: &BTreeMap<String, u64>, out: &mut dyn Write) -> io::Result<()> {
    for (stack, v) in lines {
        writeln!(out, "{stack} {v}")?;
    }
    Ok(())
}

fn options(title: &str, unit: &str) -> inferno::flamegraph::Options<'static> {
    let mut o = inferno::flamegraph::Options::default();
    o.title = title.to_string();
    o.count_name = unit.to_string();
    o.deterministic = true;
    o
}

/// Draws `lines` as an SVG flamegraph titled `title`, widths in `unit`.
pub fn write_svg(
    lines: &BTreeMap<String, u64>,
    title: &str,
    unit: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    if lines.is_empty() {
        return empty_svg(title, &format!("nothing to draw: no {unit}"), out);
    }
    let text: Vec<String> = lines.iter().map(|(s, v)| format!("{s} {v}")).collect();
    let mut o = options(title, unit);
    inferno::flamegraph::from_lines(&mut o, text.iter().map(String::as_str), out)
}

/// Draws a differential flamegraph: widths are `new`'s values, colours show the change
/// from `old` (red: grew, blue: shrank); stacks only in `old` count 0 in `new`.
pub fn write_diff_svg(
    old: &BTreeMap<String, u64>,
    new: &BTreeMap<String, u64>,
    title: &str,
    unit: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return empty_svg(title, &format!("nothing to draw: no {unit}"), out);
    }
    let text: Vec<String> = keys
        .into_iter()
        .map(|k| {
            format!(
                "{k} {} {}",
                old.get(k).copied().unwrap_or(0),
                new.get(k).copied().unwrap_or(0)
            )
        })
        .collect();
    let mut o = options(title, unit);
    inferno::flamegraph::from_lines(&mut o, text.iter().map(String::as_str), out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn empty_svg(title: &str, message: &str, out: &mut dyn Write) -> io::Result<()> {
    write!(
        out,
        concat!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n",
            "<svg version=\"1.1\" width=\"1200\" height=\"80\" xmlns=\"http://www.w3.org/2000/svg\">\n",
            "<text x=\"600\" y=\"24\" text-anchor=\"middle\" font-size=\"17\">{}</text>\n",
            "<text x=\"600\" y=\"56\" text-anchor=\"middle\" font-size=\"12\">{}</text>\n",
            "</svg>\n"
        ),
        xml_escape(title),
        xml_escape(message)
    )
}

/// Writes `contents` to `path` atomically: into a temporary file beside it, then
/// renamed over it, so that a reader never sees half a file and a failure leaves any
/// previous file intact.
pub fn write_atomically(
    path: &Path,
    contents: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = io::BufWriter::new(file);
        contents(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.name()), Some(m));
        }
        assert_eq!(Metric::parse("bogus"), None);
    }

    #[test]
    fn svgs_are_written_even_when_empty() {
        let mut lines = BTreeMap::new();
        let mut out = Vec::new();
        write_svg(&lines, "T <1>", "bytes", &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("T &lt;1&gt;") && s.contains("no bytes"));
        lines.insert("main;f".to_string(), 10);
        lines.insert("main;g".to_string(), 30);
        let mut out = Vec::new();
        write_svg(&lines, "Title", "bytes", &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("Title") && s.contains("g (30 bytes, 75.00%)"),
            "{s}"
        );
        let mut out = Vec::new();
        let mut old = BTreeMap::new();
        old.insert("main;f".to_string(), 20);
        write_diff_svg(&old, &lines, "D", "bytes", &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("<svg"));
    }
}
