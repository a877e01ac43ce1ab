//! Taking suppressed loss records out of the LEAK SUMMARY, as memcheck does: their
//! blocks leave their class (and its heuristic tallies) for `suppressed`. Loss records
//! keep their numbers.

use std::collections::HashSet;

use heaptape_format::{AllocFn, StackId};

use super::model::{LeakKind, LeakReport, LossRecord};

impl LeakReport {
    /// Marks each loss record with the suppression `which` finds for it (see
    /// [`LossRecord::suppressed`]) and moves the blocks of the suppressed ones to
    /// [`LeakSummary::suppressed`](super::LeakSummary::suppressed). Meant to be called
    /// once, on a fresh classification.
    pub(crate) fn suppress(&mut self, mut which: impl FnMut(&LossRecord) -> Option<usize>) {
        let mut hidden: HashSet<(LeakKind, StackId, AllocFn)> = HashSet::new();
        for r in &mut self.loss_records {
            r.suppressed = which(r);
            if r.suppressed.is_some() {
                hidden.insert((r.kind, r.stack, r.func));
            }
        }
        if hidden.is_empty() {
            return;
        }
        let s = &mut self.summary;
        for (i, b) in self.blocks.iter().enumerate() {
            let kind = self.kinds[i];
            if !hidden.contains(&(kind, b.stack, b.func)) {
                continue;
            }
            let class = s.get_mut(kind);
            class.blocks -= 1;
            class.bytes = class.bytes.saturating_sub(b.size);
            if let Some(c) = s
                .reachable_via_heuristic
                .get_mut(self.heuristic_of[i] as usize)
            {
                c.blocks -= 1;
                c.bytes = c.bytes.saturating_sub(b.size);
            }
            s.suppressed.add(b.size);
        }
    }
}
