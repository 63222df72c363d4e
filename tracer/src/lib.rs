//! locktrace: the collector. Data flow, one module per stage:
//! `load` (eBPF object, probes) -> `ingest` (ring buffer -> `model` types)
//! -> `graph` (lock-order graph, cycles) -> `report` (findings, sinks),
//! with `maps`/`unwind`/`symbolize` turning raw addresses into frames.

pub mod model;
pub mod graph;
pub mod report;
pub mod cli;
pub mod ingest;
pub mod launch;
pub mod load;
pub mod preflight;
pub mod session;
pub mod placement;
pub mod maps;
pub mod unwind;
pub mod symbolize;
