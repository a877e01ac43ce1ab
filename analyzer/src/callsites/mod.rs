//! Call-site analyses: what each allocation stack did in an image, kept by the replay
//! ([`table`]: counts, live and peak figures, and a growth series per site, updated in
//! O(1) per event), and what the reports make of it: sites grouped by their innermost
//! frames and ranked ([`ranking`]), and growth by call site ([`growth`]: the bucket
//! clock, the series' fit and which sites look like leaks).

pub(crate) mod growth;
pub(crate) mod ranking;
pub(crate) mod table;

pub use table::{SiteStats, SiteTable};

pub(crate) use growth::Clock;
pub(crate) use table::{SiteSummary, Stretch};
