//! Applying suppressions to a classified snapshot: each loss record's stack is
//! symbolized and matched, and the matching ones are taken out of the summary.

use super::Suppressions;
use crate::checks::leaks::{LeakReport, LossRecord};
use crate::hash::FastMap;
use crate::modules::ModuleMap;
use crate::stacks::StackTable;
use crate::symbolize::{Frame, Symbolizer};

/// Marks the loss records of `report` that one of `list` matches, their stacks read in
/// `stacks` and described by `symbolizer` in the image whose modules are `modules`.
pub(crate) fn apply(
    report: &mut LeakReport,
    list: &Suppressions,
    modules: &ModuleMap,
    stacks: &StackTable,
    symbolizer: &dyn Symbolizer,
) {
    if list.is_empty() {
        return;
    }
    report.suppress(matcher(list, modules, stacks, symbolizer));
}

/// The suppression of `list` that hides a loss record, if any, for the records of an
/// image whose modules are `modules`.
pub(crate) fn matcher<'a>(
    list: &'a Suppressions,
    modules: &'a ModuleMap,
    stacks: &'a StackTable,
    symbolizer: &'a dyn Symbolizer,
) -> impl FnMut(&LossRecord) -> Option<usize> + 'a {
    // Each address described once: loss records share most of their frames.
    let mut described: FastMap<u64, Vec<Frame>> = FastMap::default();
    move |record| {
        let addresses: Vec<u64> = stacks.iter(record.stack).collect();
        for &a in &addresses {
            described
                .entry(a)
                .or_insert_with(|| symbolizer.symbolize(modules, a, true));
        }
        let frames = addresses.iter().flat_map(|a| &described[a]);
        list.find_in(record.kind, record.func, frames)
    }
}
