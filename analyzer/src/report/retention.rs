//! "Who holds the memory": the retention of an image's last snapshot (see
//! `checks::retention`) in the text report and the JSON document.

use std::io::{self, Write};

use super::frames::{describe, frames_of, json_frames, json_stack, symbolize_stack, TextStacks};
use super::json_count as count;
use super::schema::{self, StackMaker};
use crate::checks::leaks::{LiveBlock, PointerKind};
use crate::checks::retention::{Held, Hop, Retention, RetentionTree, RootName};
use crate::replay::Image;
use crate::symbolize::{first_program_frame, Symbolizer};
use crate::units::{addr, bytes_in_blocks, num};
use crate::Analysis;

/// The most entries a JSON document's retention lists hold (`--top` may ask for fewer).
pub(crate) const JSON_LIST_MAX: usize = 100;

/// The retention summary of `img`'s last snapshot, `top` entries per list; `None`
/// without a snapshot.
pub(crate) fn summary(
    a: &Analysis,
    img: &Image,
    sym: &dyn Symbolizer,
    top: usize,
) -> Option<Retention> {
    let r = img.leaks.report()?;
    Some(RetentionTree::new(r, &a.stacks, &img.modules, sym).summary(top))
}

/// A root in words: ``global `cache` (in app)``, `thread 1236 (worker), frame #2:
/// worker_loop (list.c:30)`, `registers of thread 1236 (worker)`...
pub(crate) fn root_words(img: &Image, root: &RootName, sym: &dyn Symbolizer) -> String {
    let thread = |tid: u32, name: &str| {
        if name.is_empty() {
            format!("thread {tid}")
        } else {
            format!("thread {tid} ({name})")
        }
    };
    match root {
        RootName::Global { module, name, .. } => {
            format!("global `{name}` (in {})", base_name(module))
        }
        RootName::ModuleData { module } => {
            format!("data of {} (no symbol names it)", base_name(module))
        }
        RootName::Frame {
            tid,
            thread: name,
            depth,
            pc,
        } => {
            let frames = sym.symbolize(&img.modules, *pc, true);
            let function = frames.last().map_or_else(|| addr(*pc), describe);
            format!("{}, frame #{depth}: {function}", thread(*tid, name))
        }
        RootName::Stack { tid, thread: name } => format!("stack of {}", thread(*tid, name)),
        RootName::Registers { tid, thread: name } => {
            format!("registers of {}", thread(*tid, name))
        }
        RootName::Tls { tid, thread: name } => {
            format!("thread-local storage of {}", thread(*tid, name))
        }
        RootName::Anonymous { start, len } => format!(
            "anonymous mapping {}-{}",
            addr(*start),
            addr(start.saturating_add(*len))
        ),
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A block in words: `64 bytes from make_node (list.c:12)`.
fn block_words(a: &Analysis, img: &Image, b: &LiveBlock, sym: &dyn Symbolizer) -> String {
    let frames = symbolize_stack(&a.stacks, &img.modules, b.stack, sym);
    let site = frames
        .get(first_program_frame(&frames))
        .map_or_else(|| "an unknown place".to_string(), describe);
    format!("{} bytes from {site}", num(b.size))
}

fn via_words(via: PointerKind) -> String {
    match via {
        PointerKind::Start => String::new(),
        PointerKind::Interior {
            offset,
            heuristic: false,
        } => format!("(interior pointer, +{offset}) "),
        PointerKind::Interior {
            offset,
            heuristic: true,
        } => format!("(interior pointer, +{offset}, accepted by a heuristic) "),
    }
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        String::new()
    } else {
        format!(" ({:.1}%)", part as f64 * 100.0 / whole as f64)
    }
}

/// The text section of `r`, `img`'s [`summary`].
pub(crate) fn text(
    a: &Analysis,
    img: &Image,
    r: &Retention,
    out: &mut dyn Write,
    sym: &dyn Symbolizer,
    stacks: &TextStacks,
) -> io::Result<()> {
    if r.reachable.blocks == 0 {
        return Ok(());
    }
    let whole = r.reachable.bytes;
    writeln!(
        out,
        "   who holds the memory (the last snapshot's {} reachable block{}, {} bytes, held \
         by {} root{}):",
        num(r.reachable.blocks),
        if r.reachable.blocks == 1 { "" } else { "s" },
        num(r.reachable.bytes),
        num(r.root_count as u64),
        if r.root_count == 1 { "" } else { "s" }
    )?;
    for (rank, t) in r.roots.iter().enumerate() {
        writeln!(
            out,
            "   #{}: {}{} retained by {}",
            rank + 1,
            bytes_in_blocks(t.retained.bytes, t.retained.blocks),
            share(t.retained.bytes, whole),
            root_words(img, &t.root, sym)
        )?;
        write_held(a, img, out, &t.held, sym)?;
    }
    if r.shared.blocks > 0 {
        writeln!(
            out,
            "   shared by several roots (no one root retains them): {}{}",
            bytes_in_blocks(r.shared.bytes, r.shared.blocks),
            share(r.shared.bytes, whole)
        )?;
    }
    for (rank, b) in r.shared_blocks.iter().enumerate() {
        let Some(last) = b.path.last() else {
            continue;
        };
        writeln!(
            out,
            "   shared #{}: {}{} retained by {}, reached from several roots; nearest: {}",
            rank + 1,
            bytes_in_blocks(b.retained.bytes, b.retained.blocks),
            share(b.retained.bytes, whole),
            block_words(a, img, &last.block, sym),
            b.nearest_root
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |n| root_words(img, n, sym))
        )?;
        write_path(a, img, out, &b.path, sym)?;
        write_held(a, img, out, &b.held, sym)?;
    }
    if !r.sites.is_empty() {
        writeln!(out, "   call sites by retained bytes:")?;
    }
    for (rank, s) in r.sites.iter().enumerate() {
        let held: Vec<String> = s
            .roots
            .iter()
            .map(|(root, bytes)| {
                let who = root
                    .as_ref()
                    .map_or_else(|| "several roots".to_string(), |n| root_words(img, n, sym));
                format!("{who} ({} bytes)", num(*bytes))
            })
            .collect();
        writeln!(
            out,
            "   #{}: {} retained, held by {}, stack {}",
            rank + 1,
            bytes_in_blocks(s.retained.bytes, s.retained.blocks),
            held.join(", "),
            s.stack
        )?;
        stacks.write(out, &symbolize_stack(&a.stacks, &img.modules, s.stack, sym))?;
    }
    Ok(())
}

/// The blocks a root or shared block holds, each with its path.
fn write_held(
    a: &Analysis,
    img: &Image,
    out: &mut dyn Write,
    held: &[Held],
    sym: &dyn Symbolizer,
) -> io::Result<()> {
    for h in held {
        writeln!(
            out,
            "        holds {}:",
            bytes_in_blocks(h.retained.bytes, h.retained.blocks)
        )?;
        write_path(a, img, out, &h.path, sym)?;
    }
    Ok(())
}

fn write_path(
    a: &Analysis,
    img: &Image,
    out: &mut dyn Write,
    path: &[Hop],
    sym: &dyn Symbolizer,
) -> io::Result<()> {
    for hop in path {
        let field = hop
            .field
            .map_or_else(String::new, |f| format!("(word +{f} of the variable) "));
        writeln!(
            out,
            "          -> {field}{}{} at {}",
            via_words(hop.via),
            block_words(a, img, &hop.block, sym),
            addr(hop.block.address)
        )?;
    }
    Ok(())
}

fn json_root(img: &Image, root: &RootName, sym: &dyn Symbolizer) -> schema::Root {
    let mut out = schema::Root {
        address: None,
        depth: None,
        description: root_words(img, root, sym),
        frame: None,
        kind: root.kind(),
        len: None,
        module: None,
        name: None,
        thread: root.thread().map(|(_, n)| n.to_string()),
        tid: root.thread().map(|(t, _)| t),
    };
    match root {
        RootName::Global {
            module,
            name,
            address,
        } => {
            out.address = Some(addr(*address));
            out.module = Some(module.clone());
            out.name = Some(name.clone());
        }
        RootName::ModuleData { module } => {
            out.module = Some(module.clone());
        }
        RootName::Frame { depth, pc, .. } => {
            out.depth = Some(*depth);
            out.frame = json_frames(frames_of([*pc], &img.modules, sym)).pop();
        }
        RootName::Anonymous { start, len } => {
            out.address = Some(addr(*start));
            out.len = Some(*len);
        }
        RootName::Stack { .. } | RootName::Registers { .. } | RootName::Tls { .. } => {}
    }
    out
}

/// The JSON object of `r`, `img`'s [`summary`].
pub(crate) fn json(
    a: &Analysis,
    img: &Image,
    r: &Retention,
    sym: &dyn Symbolizer,
    stacks: &StackMaker,
) -> schema::Retention {
    let hop = |h: &Hop| schema::Hop {
        address: addr(h.block.address),
        field: h.field,
        interior_offset: match h.via {
            PointerKind::Start => None,
            PointerKind::Interior { offset, .. } => Some(offset),
        },
        size: h.block.size,
        stack: stacks.stack(json_stack(&a.stacks, &img.modules, h.block.stack, sym)),
        stack_id: h.block.stack,
        via: match h.via {
            PointerKind::Start => "start",
            PointerKind::Interior {
                heuristic: false, ..
            } => "interior",
            PointerKind::Interior {
                heuristic: true, ..
            } => "heuristic",
        },
    };
    let held = |h: &Held| schema::Held {
        path: h.path.iter().map(hop).collect(),
        retained: count(h.retained),
    };
    schema::Retention {
        reachable: count(r.reachable),
        root_count: r.root_count,
        roots: r
            .roots
            .iter()
            .map(|t| schema::Retainer {
                held: t.held.iter().map(held).collect(),
                retained: count(t.retained),
                root: json_root(img, &t.root, sym),
            })
            .collect(),
        shared: count(r.shared),
        shared_blocks: r
            .shared_blocks
            .iter()
            .map(|b| schema::SharedBlock {
                held: b.held.iter().map(held).collect(),
                nearest_root: b.nearest_root.as_ref().map(|n| json_root(img, n, sym)),
                path: b.path.iter().map(hop).collect(),
                retained: count(b.retained),
            })
            .collect(),
        sites: r
            .sites
            .iter()
            .map(|s| schema::SiteRetention {
                held_by: s
                    .roots
                    .iter()
                    .map(|(root, bytes)| schema::SiteRoot {
                        bytes: *bytes,
                        root: root.as_ref().map(|n| json_root(img, n, sym)),
                    })
                    .collect(),
                retained: count(s.retained),
                stack: stacks.stack(json_stack(&a.stacks, &img.modules, s.stack, sym)),
                stack_id: s.stack,
            })
            .collect(),
    }
}
