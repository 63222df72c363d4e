//! locktrace's detection core: lock identity, lock classes, the lock-order
//! graphs and every detection rule, with no kernel, `/proc` or symbolizer in
//! sight. The collector decodes and enriches the kernel side's records into
//! [`detector::Event`]s, answers the [`host::Host`] questions, and builds
//! findings from the [`detector::Verdict`]s.

pub mod classes;
pub mod detector;
pub mod graph;
pub mod host;
pub mod identity;
pub mod limits;
pub mod model;
pub mod recency;
mod slab;
pub mod waits;

pub use detector::{Detector, Event, Verdict};

/// A hash map for the detector's hot tables, keyed by addresses and small
/// ids: foldhash, several times faster than SipHash on such keys, and still
/// seeded per process (a traced program cannot choose colliding addresses
/// ahead of time).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use host::{GlobalSymbol, Host, InitStack};
