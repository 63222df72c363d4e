//! The end-of-run summary: what was seen, what was lost, what it cost.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use tracer_analysis::model::hex;
use tracer_common::Counter;

use crate::report::text::plural;
use crate::symbolize::Resolve;

/// End-of-run statistics.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(tag = "type", rename = "summary")]
pub struct Summary {
    /// Lock operations the probes saw in traced processes (acquisitions and
    /// releases), whether or not they made a new dependency.
    pub events: u64,
    /// Distinct dependencies in the lock-order graph.
    pub dependencies: u64,
    /// Lock instances in the lock-order graph.
    pub locks: u64,
    /// Cycles reported.
    pub cycles: u64,
    /// Events lost (ring buffer full).
    pub lost_events: u64,
    /// Cycle searches cut by the enumeration bounds (some cycles may be
    /// unreported): `LockOrderGraph::truncated_searches`.
    pub truncated_cycle_searches: u64,
    /// Kernel counters by [`Counter::name`]; see [`counters`].
    pub counters: BTreeMap<String, u64>,
    /// The futex words traced threads waited on longest (lock contention),
    /// longest first.
    pub contention: Vec<Contention>,
    /// Exited processes forgotten (their lock instances and dependencies
    /// freed: memory stays bounded under process churn), and the
    /// dependencies that went with them.
    pub forgotten_processes: u64,
    pub forgotten_dependencies: u64,
    /// Lock classes of shared libraries' own code seen nested within
    /// themselves (per-object locks by design): counted, not reported.
    pub library_same_class_nesting: u64,
    /// Cycles made only of wake-up hand-offs (a thread locking the mutex
    /// another waits on a condition with): not reported.
    pub handoff_cycles: u64,
    /// The files with lock probes (each libc on the host, `--binary` files).
    pub probed_files: Vec<String>,
    /// With probes per process (`watch --pid`): processes that got their
    /// probes after they started (children forked while tracing), and the
    /// longest such delay: their lock operations before were not seen.
    pub processes_probed_late: u64,
    pub probe_delay_max_ms: f64,
    pub duration_s: f64,
}

/// Blocking on one futex word: a contended lock (the futex word of a pthread
/// mutex or semaphore is the lock's own address) or another futex-based
/// lock.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Contention {
    pub pid: u32,
    pub comm: String,
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    /// The symbol of the futex word, if it is in a mapped file.
    pub name: Option<String>,
    pub waits: u64,
    pub wait_ns: u64,
}

/// The `n` longest-waited futex words of `stats`, named with `resolve`.
pub fn contention(
    mut stats: Vec<(u32, u64, u64, u64)>,
    resolve: &mut dyn Resolve,
    n: usize,
) -> Vec<Contention> {
    stats.sort_by_key(|s| std::cmp::Reverse(s.3));
    stats
        .into_iter()
        .take(n)
        .map(|(pid, addr, waits, wait_ns)| Contention {
            pid,
            comm: resolve.process_name(pid),
            addr,
            name: resolve.lock_name(pid, addr),
            waits,
            wait_ns,
        })
        .collect()
}

/// The counter map of a [`Summary`].
pub fn counters(values: impl IntoIterator<Item = (Counter, u64)>) -> BTreeMap<String, u64> {
    values
        .into_iter()
        .map(|(c, v)| (c.name().to_string(), v))
        .collect()
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "locktrace: {}, {}, {}, {}, {} in {:.1}s",
            plural(self.events, "event", "events"),
            plural(self.dependencies, "dependency", "dependencies"),
            plural(self.locks, "lock", "locks"),
            plural(self.cycles, "cycle", "cycles"),
            plural(self.lost_events, "lost event", "lost events"),
            self.duration_s,
        )?;
        // Non-zero counters, kernel order first, then any others.
        let known = Counter::ALL.iter().map(|c| c.name());
        let others = self
            .counters
            .keys()
            .map(String::as_str)
            .filter(|k| !Counter::ALL.iter().any(|c| c.name() == *k));
        let shown: Vec<String> = known
            .chain(others)
            .filter(|&k| k != Counter::LostEvents.name())
            .filter_map(|k| match self.counters.get(k) {
                Some(&v) if v != 0 => Some(format!("{k}={v}")),
                _ => None,
            })
            .collect();
        if !shown.is_empty() {
            write!(f, "; {}", shown.join(", "))?;
        }
        if self.truncated_cycle_searches != 0 {
            write!(
                f,
                "; {} (some cycles may be unreported)",
                plural(
                    self.truncated_cycle_searches,
                    "truncated cycle search",
                    "truncated cycle searches"
                )
            )?;
        }
        // One libc is the usual case; more (containers, copies, --binary)
        // are worth naming.
        if self.probed_files.len() > 1 {
            write!(f, "\n  probed: {}", self.probed_files.join(", "))?;
        }
        if self.processes_probed_late > 0 {
            write!(
                f,
                "\n  probed late: {} forked while tracing got the probes up to {:.1} ms after they started (their lock operations before were not seen)",
                plural(self.processes_probed_late, "process", "processes"),
                self.probe_delay_max_ms
            )?;
        }
        for c in &self.contention {
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| format!("futex {:#x}", c.addr));
            write!(
                f,
                "\n  contention: {name} in {} [{}]: {} waited {:.3}s",
                c.comm,
                c.pid,
                plural(c.waits, "wait", "waits"),
                c.wait_ns as f64 / 1e9
            )?;
        }
        Ok(())
    }
}
