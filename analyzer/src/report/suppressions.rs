//! `--gen-suppressions`: one suppression in valgrind's format per loss record no
//! suppression hides, for every image of every process, each after a `#` comment that
//! names its record, so the output is a suppression file as it is.

use std::collections::HashSet;
use std::io::{self, Write};

use super::frames::symbolize_stack;
use super::text::loss_record_blocks;
use crate::checks::suppressions::generate;
use crate::symbolize::Symbolizer;
use crate::Analysis;

/// Writes the suppressions of `a`'s loss records, frames described by `sym`. A
/// suppression already written for another record (another process's, or the same
/// stack in another image) is not repeated.
pub fn write(a: &Analysis, out: &mut dyn Write, sym: &dyn Symbolizer) -> io::Result<()> {
    let mut seen = HashSet::new();
    for (p, img) in a.images() {
        let Some(r) = img.leaks.report() else {
            continue;
        };
        let n = r.loss_records.len();
        for lr in r.reported_records() {
            let frames = symbolize_stack(&a.stacks, &img.modules, lr.stack, sym);
            let text = generate(lr.kind, lr.func, &frames);
            if !seen.insert(text.clone()) {
                continue;
            }
            writeln!(
                out,
                "# process {}: {} bytes in {}",
                p.pid,
                lr.bytes,
                loss_record_blocks(lr, n)
            )?;
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}
