//! Rendering an [`Analysis`](crate::Analysis) for people ([`text`]) and programs
//! ([`json`], which fills the types of [`schema`]), plus the other outputs of the CLI:
//! flamegraphs ([`flamegraph`]), the comparison of two analyses ([`diff`]), the exports
//! and the HTML page (the JSON document cut to [`limits`]).
//!
//! Both renderers read the same replay results and describe frames through the same
//! [`Symbolizer`](crate::Symbolizer), so the two reports always agree. Each renderer
//! calls the sections of the checks ([`resources`]: descriptors, mappings, timeline;
//! [`retention`]: who holds the memory)
//! and of the call-site analyses ([`callsites`]); all of them put frames in words
//! through [`frames`], enums through [`names`], and figures through [`crate::units`].

pub(crate) mod bad_frees;
pub(crate) mod callsites;
pub mod colour;
pub mod diff;
pub mod flamegraph;
pub(crate) mod frames;
pub mod html;
pub(crate) mod json;
pub(crate) mod limits;
pub(crate) mod names;
pub mod pprof;
pub(crate) mod resources;
pub(crate) mod retention;
pub mod schema;
pub(crate) mod snapshots;
pub mod speedscope;
pub(crate) mod suppressions;
pub(crate) mod text;

use crate::checks::leaks::Count;

/// A block and byte count as the JSON documents have it.
pub(crate) fn json_count(c: Count) -> schema::Count {
    schema::Count {
        blocks: c.blocks,
        bytes: c.bytes,
    }
}
