//! locktrace: the collector. Data flow, one module per stage:
//! `load` (eBPF object, probes) -> `ingest` (ring buffer -> `model` types)
//! -> `graph` (lock-order graph, cycles) -> `report` (findings, sinks),
//! with `maps`/`unwind`/`symbolize` turning raw addresses into frames, and
//! `waitfor` (who waits for whom, from /proc) -> `blocking` (deadlocks,
//! hangs).

pub mod blocking;
pub mod classes;
pub mod cli;
pub mod graph;
pub mod ingest;
pub mod launch;
pub mod load;
pub mod maps;
pub mod model;
pub mod placement;
pub mod preflight;
pub mod python;
pub mod pythons;
pub mod report;
pub mod session;
pub mod symbolize;
pub mod targets;
pub mod unwind;
pub mod waitfor;
