//! The types that flow between the collector's stages:
//! `ingest` (kernel events) -> `graph` (lock-order graph, cycles) -> `report`.
//! Names follow the lockdep design document: a lock *instance* is one lock
//! object; a *dependency* `from -> to` means `to` was requested while `from`
//! was held; a *cycle* of dependencies is a potential deadlock.

use serde::Serialize;

pub use tracer_common::LockKind;

/// A lock instance: the address of a lock object in one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockId {
    pub pid: u32,
    pub addr: u64,
}

/// One edge of the lock-order graph, as observed: `to` was requested while
/// `from` was held, by thread `tid` of process `pid`.
#[derive(Clone, Debug)]
pub struct Dependency {
    pub from: LockId,
    pub to: LockId,
    pub from_kind: LockKind,
    pub to_kind: LockKind,
    pub pid: u32,
    pub tid: u32,
    /// The thread's name (its comm).
    pub thread: String,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) of the request.
    pub timestamp_ns: u64,
    /// Return address into the code that took `from` (one frame: the kernel
    /// side records only the call site of every acquisition, for cost).
    pub held_callsite: u64,
    /// Where `to` was requested: the probe's instruction pointer first (inside
    /// the lock function), then return addresses, innermost first.
    pub stack: Vec<u64>,
    /// The other locks the thread held (besides `from` and `to`), sorted: a
    /// lock held at every occurrence of every edge of a cycle is its gate.
    pub gates: Vec<LockId>,
    /// The kernel's fingerprint of the held locks (its dedup key's `gates`).
    pub gate_key: u64,
    /// The requesting thread's Python frames (innermost first), for a
    /// thread running Python code.
    pub python: Vec<crate::python::PyFrame>,
    /// Every occurrence seen was a wake-up hand-off: `to` was a mutex another
    /// thread waited on a condition with (see `EVENT_HANDOFF`).
    pub handoff: bool,
}

/// A symbolized stack frame. `addr` is the address in the process; for return
/// addresses, file and line describe the call instruction (addr - 1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Frame {
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    /// Path of the mapped file (binary or shared library) holding `addr`.
    pub module: Option<String>,
    pub function: Option<String>,
    /// Offset of `addr` into `function`, or into `module` (file offset) when
    /// the function is unknown.
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

pub fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

/// What the report stage needs from symbolization. Implemented by
/// `symbolize::Symbolizer`; tests use a table-driven fake.
pub trait Resolve {
    /// Symbolize `addrs` of process `pid`. `addrs[0]` is an instruction
    /// pointer when `first_is_ip`, every other address a return address.
    fn frames(&mut self, pid: u32, addrs: &[u64], first_is_ip: bool) -> Vec<Frame>;
    /// The symbol naming a lock object (a global such as `mutex_a`, or
    /// `sym+0x10` inside one), if its address is in a mapped file.
    fn lock_name(&mut self, pid: u32, addr: u64) -> Option<String>;
    /// The process's name (the comm of its main thread).
    fn process_name(&mut self, pid: u32) -> String;
    /// For a lock in memory mapped MAP_SHARED: its identity, as the kernel
    /// gives a shared futex (device, inode, offset), and the mapping's name.
    fn shared_identity(&mut self, _pid: u32, _addr: u64) -> Option<String> {
        None
    }
}
