//! Findings: what locktrace reports, as typed values built from the
//! detector's verdicts (`build`, `blocking`), then written by one printer
//! per format (`text`, `json`) through the [`sink::Reporter`] (names from
//! traced processes escaped for text by `escape`); the end-of-run
//! [`summary::Summary`]. `replay` reads a JSON capture back for `locktrace
//! report`, which also draws findings as graphs (`dot`) and writes them as one
//! HTML page (`html`).

pub mod blocking;
pub mod build;
pub mod class_waits;
pub mod dot;
pub mod escape;
pub mod findings;
pub mod fingerprint;
pub mod graph;
pub mod html;
pub mod json;
pub mod oneline;
pub mod replay;
pub mod sink;
pub mod summary;
pub mod text;
pub mod walltime;

#[cfg(test)]
pub(crate) mod tests;

pub use build::finding;
pub use findings::*;
pub use sink::{Format, Reporter};
pub use summary::Summary;
