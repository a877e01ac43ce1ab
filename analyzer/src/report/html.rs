//! The HTML report (`heaptape report`): one self-contained page (every script and style
//! inline, no network) with each process's memory over time (live heap, what the program
//! mapped itself, anonymous RSS), where
//! dragging over the chart selects a time window and the page ranks the call sites by
//! how much their live bytes grew in it and draws them as a flame graph; the leak
//! summary and loss records with stacks; bad frees; growth suspects with sparklines;
//! descriptors and mappings left open; the RSS verdict.
//!
//! The page is the analysis's JSON report, trimmed to what it shows (the largest
//! [`RANKED`] entries of each list, the RSS samples thinned to [`MAX_SAMPLES`]), embedded
//! in `html/report.html`, whose script renders it: its size does not grow with the
//! number of events.

use std::io::{self, Write};

use serde_json::Value;

use crate::Analysis;

/// Entries kept of each ranked list (loss records, call sites, growth suspects, ...).
pub const RANKED: usize = 50;
/// RSS samples kept per process (evenly thinned beyond).
pub const MAX_SAMPLES: usize = 2000;

const TEMPLATE: &str = include_str!("html/report.html");
const DATA_MARK: &str = "/*HEAPTAPE_DATA*/";

/// Writes the page of `a`.
pub fn write_html(a: &Analysis, out: &mut dyn Write) -> io::Result<()> {
    let data = page_data(a.to_json());
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

/// The JSON report trimmed to what the page shows.
fn page_data(mut report: Value) -> Value {
    if let Some(procs) = report["processes"].as_array_mut() {
        for p in procs {
            // Losses first (definite, indirect, possible, then reachable), larger first.
            if let Some(v) = p["loss_records"].as_array_mut() {
                let rank = |r: &Value| match r["kind"].as_str() {
                    Some("definitely_lost") => 0,
                    Some("indirectly_lost") => 1,
                    Some("possibly_lost") => 2,
                    _ => 3,
                };
                v.sort_by_key(|r| (rank(r), std::cmp::Reverse(r["bytes"].as_u64().unwrap_or(0))));
            }
            for list in [
                "loss_records",
                "sites_live_at_exit",
                "sites_at_peak",
                "growth",
                "invalid_frees",
                "fd_leaks",
                "mmap_leaks",
            ] {
                if let Some(v) = p[list].as_array_mut() {
                    v.truncate(RANKED);
                }
            }
            if let Some(t) = p["timeline"].as_array_mut() {
                if t.len() > MAX_SAMPLES {
                    let step = t.len().div_ceil(MAX_SAMPLES);
                    let last = t.last().cloned();
                    let thinned: Vec<Value> = t.iter().step_by(step).cloned().collect();
                    *t = thinned;
                    t.extend(last);
                }
            }
            if let Some(o) = p.as_object_mut() {
                o.remove("modules");
            }
        }
    }
    report
}
