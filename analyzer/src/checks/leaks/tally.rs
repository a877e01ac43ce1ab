//! Tallying classified blocks: the LEAK SUMMARY and memcheck's loss records (blocks of
//! one class allocated at one place, numbered in memcheck's order).

use std::collections::HashMap;

use heaptape_format::{AllocFn, StackId};
use rayon::prelude::*;

use super::model::{LeakKind, LeakSummary, LiveBlock, LossRecord};

type RecordKey = (LeakKind, StackId, AllocFn);

#[derive(Default, Clone, Copy)]
struct Acc {
    blocks: u64,
    bytes: u64,
    indirect: u64,
}

/// The summary and the loss records (largest first) of `blocks` (in address order)
/// with their classes, indirect bytes and heuristic credits.
pub(super) fn tally(
    blocks: &[LiveBlock],
    kinds: &[LeakKind],
    indirect: &[u64],
    heuristic_of: &[u8],
) -> (LeakSummary, Vec<LossRecord>) {
    let (summary, groups) = (0..blocks.len())
        .into_par_iter()
        .fold(
            || (LeakSummary::default(), HashMap::<RecordKey, Acc>::new()),
            |(mut s, mut g), i| {
                let b = &blocks[i];
                let kind = kinds[i];
                s.get_mut(kind).add(b.size);
                if let Some(c) = s.reachable_via_heuristic.get_mut(heuristic_of[i] as usize) {
                    c.add(b.size);
                }
                let a = g.entry((kind, b.stack, b.func)).or_default();
                a.blocks += 1;
                a.bytes = a.bytes.saturating_add(b.size);
                a.indirect = a.indirect.saturating_add(indirect[i]);
                (s, g)
            },
        )
        .reduce(
            || (LeakSummary::default(), HashMap::new()),
            |(mut s1, mut g1), (s2, g2)| {
                for k in LeakKind::ALL {
                    let c = s2.get(k);
                    let t = s1.get_mut(k);
                    t.blocks += c.blocks;
                    t.bytes = t.bytes.saturating_add(c.bytes);
                }
                for (t, c) in s1
                    .reachable_via_heuristic
                    .iter_mut()
                    .zip(s2.reachable_via_heuristic)
                {
                    t.blocks += c.blocks;
                    t.bytes = t.bytes.saturating_add(c.bytes);
                }
                for (k, a) in g2 {
                    let t = g1.entry(k).or_default();
                    t.blocks += a.blocks;
                    t.bytes = t.bytes.saturating_add(a.bytes);
                    t.indirect = t.indirect.saturating_add(a.indirect);
                }
                (s1, g1)
            },
        );
    let mut records: Vec<LossRecord> = groups
        .into_iter()
        .map(|((kind, stack, func), a)| LossRecord {
            number: 0,
            kind,
            stack,
            func,
            blocks: a.blocks,
            bytes: a.bytes,
            indirect_bytes: a.indirect,
            suppressed: None,
        })
        .collect();
    // memcheck's order: total size, then class, then block count, then context.
    records.sort_by_key(|r| {
        (
            r.bytes.saturating_add(r.indirect_bytes),
            r.kind,
            r.blocks,
            r.stack,
            r.func,
        )
    });
    for (i, r) in records.iter_mut().enumerate() {
        r.number = i + 1;
    }
    records.reverse();
    (summary, records)
}
