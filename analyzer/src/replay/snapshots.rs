//! Reachability snapshots: a snapshot's records (`SnapshotBegin`, roots, blocks,
//! heuristic verdicts, `SnapshotEnd`) build the pointer graph over the heap's live
//! blocks at its start, and its end classifies it (see [`crate::checks::leaks`]) into
//! the image's [`LeakCheck`].

use heaptape_format::{SnapshotTrigger, Timestamp};

use super::heap::ImageId;
use super::Replay;
use crate::checks::leaks::{HeuristicMatches, LeakCheck, LiveBlock, SnapshotGraph};
use crate::checks::snapshots::SnapshotTime;
use crate::symbolize::{RawSymbolizer, Symbolizer};

/// A snapshot between its begin and end records.
#[derive(Debug)]
pub(super) struct PendingSnapshot {
    pub(super) image: ImageId,
    /// When it began.
    pub(super) ts: Timestamp,
    pub(super) graph: SnapshotGraph,
    /// The recorder's heuristic verdicts (`SnapshotHeuristic` records).
    pub(super) heuristics: HeuristicMatches,
    /// What asked for it and the pause (a `SnapshotInfo` record; none before format
    /// version 4).
    pub(super) info: Option<(SnapshotTrigger, u64)>,
}

impl Replay {
    /// A snapshot of `pid` begins: its graph covers the heap's live blocks now.
    pub(super) fn snapshot_begin(&mut self, ts: Timestamp, pid: u32) {
        let Some(&p) = self.by_pid.get(&pid) else {
            return;
        };
        let img = self.procs[p].current();
        let heap = self.images[img].heap;
        let pending = match self.heaps.get(heap).and_then(Option::as_ref) {
            Some(heap) if !self.procs[p].ended => PendingSnapshot {
                image: img,
                ts,
                // A heap shared with another live process (a vfork child and its
                // parent): the snapshot covers the blocks this image allocated (a vfork
                // child that only execs or exits owns none); the others are its
                // sharer's, classified by the sharer's own snapshot.
                graph: SnapshotGraph::new(
                    heap.live
                        .iter()
                        .filter(|(_, b)| heap.users <= 1 || b.owner == img)
                        .map(|(address, b)| LiveBlock {
                            address,
                            size: b.size,
                            stack: b.stack,
                            func: b.func,
                            ts: b.ts,
                        })
                        .collect(),
                ),
                heuristics: HeuristicMatches::new(),
                info: None,
            },
            _ => {
                self.snapshot_lost(
                    img,
                    "the snapshot was recorded after the process ended, when its heap \
                     was no longer known",
                );
                return;
            }
        };
        if let Some(old) = self.snapshots.insert(pid, pending) {
            self.snapshot_lost(
                old.image,
                "the snapshot was cut off (another snapshot began before it ended)",
            );
        }
    }

    /// A snapshot of `pid` is complete: classify it.
    pub(super) fn snapshot_end(&mut self, pid: u32, blocks: u64) {
        let Some(pending) = self.snapshots.remove(&pid) else {
            return;
        };
        if blocks != pending.graph.block_count() as u64 {
            self.anomalies.snapshot_block_mismatches += 1;
        }
        let report = match pending
            .graph
            .classify(&pending.heuristics, self.leak_heuristics)
        {
            Ok(report) => report,
            Err(reason) => {
                self.images[pending.image].leaks = LeakCheck::Unavailable(reason);
                return;
            }
        };
        let time = SnapshotTime {
            ts: pending.ts,
            trigger: pending.info.map(|i| i.0),
            pause_ns: pending.info.map(|i| i.1),
        };
        let image = &mut self.images[pending.image];
        let previous = std::mem::replace(&mut image.leaks, LeakCheck::Done(Box::new(report)));
        let LeakCheck::Done(report) = &image.leaks else {
            unreachable!("just set")
        };
        let sym: &dyn Symbolizer = match &self.symbolizer {
            Some(s) => s.as_ref(),
            None => &RawSymbolizer,
        };
        image.snapshots.push(
            time,
            report,
            match previous {
                LeakCheck::Done(prev) => Some(*prev),
                LeakCheck::Unavailable(_) => None,
            },
            &self.stacks,
            &image.modules,
            sym,
        );
    }

    /// Notes why a snapshot of `img` came to nothing, unless an earlier one succeeded.
    pub(super) fn snapshot_lost(&mut self, img: ImageId, reason: &str) {
        let leaks = &mut self.images[img].leaks;
        if leaks.report().is_none() {
            *leaks = LeakCheck::Unavailable(reason.into());
        }
    }
}
