//! The snapshot's interior-pointer verdicts: reads, in the stopped process, the words
//! memcheck's heuristics look at, and has [`heaptape_format::heuristics`] (where the
//! rules live) evaluate them.

use std::collections::HashMap;

use heaptape_format::heuristics::{evaluate, interior_targets, BlockIndex, TargetWords};
use heaptape_format::Record;

use super::{read_all, PAGE};
use crate::procfs::maps::MapEntry;
use crate::sys::{self, Tid};

/// Evaluates memcheck's interior-pointer heuristics for every distinct (block, offset)
/// that an interior pointer of this snapshot targets, and appends a
/// [`Record::SnapshotHeuristic`] for each match. Only the verdicts go into the trace; the
/// words they are computed from stay in the process.
pub(super) fn evaluate_targets(
    pid: Tid,
    index: &BlockIndex,
    maps: &[MapEntry],
    out: &mut Vec<Record>,
) {
    let targets = interior_targets(index, out);
    if targets.is_empty() {
        return;
    }
    // Read each block's first two words and the word at the target (when aligned).
    let mut ranges = Vec::with_capacity(targets.len() * 2);
    for t in &targets {
        ranges.push((t.block, t.head_len()));
        if t.reads_target_word() {
            ranges.push((t.block + t.offset, 8));
        } else {
            ranges.push((t.block, 0));
        }
    }
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut buf = vec![0u8; total];
    let nonempty: Vec<(u64, usize)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
    read_all(pid, &nonempty, &mut buf);
    let mut vtables: HashMap<u64, bool> = HashMap::new();
    let mut off_in_buf = 0;
    for (i, t) in targets.iter().enumerate() {
        let head_len = ranges[2 * i].1;
        let word_len = ranges[2 * i + 1].1;
        let word = |k: usize| -> Option<u64> {
            if k * 8 + 8 > head_len {
                return None;
            }
            let b = buf.get(off_in_buf + k * 8..off_in_buf + k * 8 + 8)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        let head = [word(0), word(1)];
        let at_target = (word_len == 8).then(|| {
            let b = &buf[off_in_buf + head_len..off_in_buf + head_len + 8];
            u64::from_le_bytes(b.try_into().expect("8 bytes"))
        });
        off_in_buf += head_len + word_len;
        let matched = evaluate(t, &TargetWords { head, at_target }, |a| {
            is_vtable(pid, a, maps, &mut vtables)
        });
        if matched != 0 {
            out.push(Record::SnapshotHeuristic {
                pid: pid as u32,
                address: t.block,
                offset: t.offset,
                matched,
            });
        }
    }
}

/// memcheck's vtable test: the address lies in a readable file-backed mapping and at
/// least 2 of the first 20 words there point into executable file-backed mappings.
fn is_vtable(pid: Tid, addr: u64, maps: &[MapEntry], cache: &mut HashMap<u64, bool>) -> bool {
    if addr % 8 != 0 || addr < PAGE {
        return false;
    }
    if let Some(&v) = cache.get(&addr) {
        return v;
    }
    let file_map = |a: u64, exec: bool| {
        maps.iter()
            .any(|m| m.contains(a) && m.read && m.is_file_backed() && (!exec || m.exec))
    };
    let mut verdict = false;
    if file_map(addr, false) {
        let mut words = [0u8; 160];
        let n = sys::read_memory(pid, addr, &mut words).unwrap_or(0);
        let code = words[..n & !7]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .filter(|&w| w != 0 && file_map(w, true))
            .count();
        verdict = code >= 2;
    }
    cache.insert(addr, verdict);
    verdict
}
