//! locktrace: the collector. One record's journey, one folder per stage:
//! `kernel` (ring buffer -> decoded records) -> `enrich` (stacks unwound,
//! Python frames resolved, once) -> detection (`tracer_analysis::Detector`,
//! pure: events in, verdicts out) -> `report` (findings built and symbolized
//! once, then written by one printer per format). `host` reads `/proc` and
//! the perf side-band for every stage; `session` runs the loop; `agent`
//! runs it as a service.

pub mod agent;
pub mod budget;
pub mod cli;
pub mod enrich;
pub mod host;
pub mod kernel;
pub mod python;
pub mod report;
pub mod reuse;
pub mod session;
pub mod symbolize;
