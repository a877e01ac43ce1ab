//! Snapshots over time: the leak classes and largest roots of each snapshot of an image
//! taken before its last (`record --snapshot-every`, SIGUSR2 to the recorder), and, for
//! each block lost at the last one, the two snapshots between which it became
//! unreachable.
//!
//! A block is identified by its address and allocation time. Once unreachable, a block
//! stays so (nothing can find it again), so the snapshot where a block was first seen
//! lost is kept while it stays lost; the snapshot before that one (or the block's
//! allocation, when later) is the last time it was known reachable.

use heaptape_format::{SnapshotTrigger, StackId, Timestamp};

use super::leaks::{LeakKind, LeakReport, LeakSummary, LossRecord};
use super::retention::{Retention, RetentionTree};
use crate::hash::FastMap;
use crate::modules::ModuleMap;
use crate::stacks::StackTable;
use crate::symbolize::Symbolizer;

/// Roots kept per earlier snapshot.
const ROOTS_PER_SNAPSHOT: usize = 3;

/// When a snapshot was taken and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotTime {
    /// When it began.
    pub ts: Timestamp,
    /// What asked for it (`None` in traces before format 4).
    pub trigger: Option<SnapshotTrigger>,
    /// How long the process was stopped for it, in nanoseconds (`None` before format
    /// 4).
    pub pause_ns: Option<u64>,
}

/// A snapshot before an image's last one, reduced to what reports show of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlierSnapshot {
    /// When.
    pub time: SnapshotTime,
    /// Its leak classes (no heuristic tallies), suppressions applied once the replay
    /// ends.
    pub summary: LeakSummary,
    /// Its loss records (what the suppressions are matched against).
    pub(crate) loss_records: Vec<LossRecord>,
    /// Who held its memory: its largest roots only.
    pub retention: Retention,
}

/// A block lost at the last snapshot and when it became unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostBetween {
    /// The block's address.
    pub address: u64,
    /// Its size.
    pub size: u64,
    /// Where it was allocated.
    pub stack: StackId,
    /// When it was allocated.
    pub allocated: Timestamp,
    /// The last time it was known reachable: the snapshot before the one where it was
    /// first found lost, or its allocation when that came later.
    pub reachable: Timestamp,
    /// The snapshot where it was first found lost.
    pub lost: Timestamp,
}

/// An image's snapshots over time (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct SnapshotHistory {
    /// Every complete snapshot, in order; the last is the image's leak check.
    pub times: Vec<SnapshotTime>,
    /// The snapshots before the last.
    pub earlier: Vec<EarlierSnapshot>,
    /// Lost blocks of the last snapshot, (address, allocation time) -> the index of
    /// the snapshot where each was first found lost.
    lost_since: FastMap<(u64, Timestamp), u32>,
}

impl SnapshotHistory {
    /// Notes a new complete snapshot taken at `time`, classified as `report`.
    /// `previous`, the image's last snapshot until now, is reduced to an
    /// [`EarlierSnapshot`] (its roots named with `stacks`, `modules` and `sym`).
    pub(crate) fn push(
        &mut self,
        time: SnapshotTime,
        report: &LeakReport,
        previous: Option<LeakReport>,
        stacks: &StackTable,
        modules: &ModuleMap,
        sym: &dyn Symbolizer,
    ) {
        if let (Some(prev), Some(&prev_time)) = (previous, self.times.last()) {
            let retention =
                RetentionTree::new(&prev, stacks, modules, sym).summary(ROOTS_PER_SNAPSHOT);
            self.earlier.push(EarlierSnapshot {
                time: prev_time,
                summary: prev.summary,
                loss_records: prev.loss_records,
                retention,
            });
        }
        let k = self.times.len() as u32;
        self.times.push(time);
        let mut next = FastMap::default();
        for v in report.verdicts() {
            if matches!(v.kind, LeakKind::DefinitelyLost | LeakKind::IndirectlyLost) {
                let key = (v.block.address, v.block.ts);
                next.insert(key, self.lost_since.get(&key).copied().unwrap_or(k));
            }
        }
        self.lost_since = next;
    }

    /// Applies the suppressions marked on the earlier snapshots' loss records (by
    /// `which`) to their summaries.
    pub(crate) fn suppress(&mut self, mut which: impl FnMut(&LossRecord) -> Option<usize>) {
        for e in &mut self.earlier {
            for r in &mut e.loss_records {
                r.suppressed = which(r);
            }
            e.summary = LeakSummary::of_records(&e.loss_records);
        }
    }

    /// For every definitely lost block of `last` (the image's last snapshot), when it
    /// became unreachable; empty with fewer than two snapshots. In address order.
    pub fn lost_between(&self, last: &LeakReport) -> Vec<LostBetween> {
        if self.times.len() < 2 {
            return Vec::new();
        }
        last.verdicts()
            .filter(|v| v.kind == LeakKind::DefinitelyLost)
            .map(|v| {
                let b = v.block;
                let k = self
                    .lost_since
                    .get(&(b.address, b.ts))
                    .copied()
                    .unwrap_or(self.times.len() as u32 - 1) as usize;
                let before = k.checked_sub(1).map_or(0, |i| self.times[i].ts);
                LostBetween {
                    address: b.address,
                    size: b.size,
                    stack: b.stack,
                    allocated: b.ts,
                    reachable: before.max(b.ts),
                    lost: self.times[k].ts,
                }
            })
            .collect()
    }
}
