//! Applying suppressions to a classified snapshot: each loss record's stack is
//! symbolized and matched, and the matching ones are taken out of the summary.

use super::Suppressions;
use crate::checks::leaks::LeakReport;
use crate::modules::ModuleMap;
use crate::stacks::StackTable;
use crate::symbolize::Symbolizer;

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
    report.suppress(|record| {
        let frames: Vec<_> = stacks
            .iter(record.stack)
            .flat_map(|address| symbolizer.symbolize(modules, address, true))
            .collect();
        list.find(record.kind, record.func, &frames)
    });
}
