//! The HTML report (`heaptape report`): one self-contained page (every script and style
//! inline, no network) with each process's memory over time (live heap, what the program
//! mapped itself, anonymous RSS), where
//! dragging over the chart selects a time window and the page ranks the call sites by
//! how much their live bytes grew in it and draws them as a flame graph; the leak
//! summary and loss records with stacks; bad frees; growth suspects with sparklines;
//! descriptors and mappings left open; the RSS verdict.
//!
//! The page is the analysis's JSON report cut to what it shows (the worst loss records
//! and the largest entries of each ranked list, [`RANKED`] of each, the RSS samples
//! thinned to [`MAX_SAMPLES`], no module list; the previous images of a process whole),
//! built that way rather than trimmed afterwards, embedded in `html/report.html`, whose
//! script renders it: its size does not grow with the number of events.

use std::io::{self, Write};

use super::limits::Limits;
use super::schema::StackMaker;
use crate::Analysis;

/// Entries kept of each ranked list (loss records, call sites, growth suspects, ...).
pub const RANKED: usize = 50;
/// RSS samples kept per process (evenly thinned beyond).
pub const MAX_SAMPLES: usize = 2000;

/// What the page keeps of each process's last image.
const PAGE: Limits = Limits {
    ranked: RANKED,
    samples: MAX_SAMPLES,
    worst_losses_first: true,
    modules: false,
};

const TEMPLATE: &str = include_str!("html/report.html");
const DATA_MARK: &str = "/*HEAPTAPE_DATA*/";

/// Writes the page of `a`.
pub fn write_html(a: &Analysis, out: &mut dyn Write) -> io::Result<()> {
    let data = super::json::analysis(a, a.symbolizer(), &PAGE, StackMaker::shared());
    // Inside <script>, "</" would end the element: JSON allows "<\/" for it.
    let json = serde_json::to_string(&data)
        .map_err(io::Error::from)?
        .replace("</", "<\\/");
    let (head, tail) = TEMPLATE
        .split_once(DATA_MARK)
        .expect("the template holds the data mark");
    out.write_all(head.as_bytes())?;
    out.write_all(json.as_bytes())?;
    out.write_all(tail.as_bytes())
}
