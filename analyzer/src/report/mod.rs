//! Rendering an [`Analysis`](crate::Analysis) for people ([`text`]) and programs
//! ([`json`]), plus the other outputs of the CLI: flamegraphs ([`flamegraph`]) and the
//! comparison of two analyses ([`diff`]).
//!
//! Both renderers read the same replay results and describe frames through the same
//! [`Symbolizer`](crate::Symbolizer), so the two reports always agree. Each renderer
//! calls the sections of the checks ([`resources`]: descriptors, mappings, timeline)
//! and of the call-site analyses ([`callsites`]); all of them put frames in words
//! through [`frames`], enums through [`names`], and figures through [`crate::units`].

pub(crate) mod callsites;
pub mod colour;
pub mod diff;
pub mod flamegraph;
pub(crate) mod frames;
pub mod html;
pub(crate) mod json;
pub(crate) mod names;
pub mod pprof;
pub(crate) mod resources;
pub mod speedscope;
pub(crate) mod text;
