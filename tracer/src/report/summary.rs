//! The end-of-run summary: what was seen, what was lost, what it cost.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use std::collections::HashMap;

use tracer_analysis::model::{hex, Frame};
use tracer_common::Counter;

use crate::budget::BudgetStats;
use crate::kernel::maps::FutexWord;
use crate::report::text::plural;
use crate::reuse::ReuseStats;
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
    /// How much of the blocking the order analysis could see.
    pub coverage: Coverage,
    /// Exited processes forgotten (their lock instances and dependencies
    /// freed: memory stays bounded under process churn), and the
    /// dependencies that went with them.
    pub forgotten_processes: u64,
    pub forgotten_dependencies: u64,
    /// Lock classes of shared libraries' own code seen nested within
    /// themselves (per-object locks by design): counted, not reported.
    pub library_same_class_nesting: u64,
    /// Classes of the program nested within themselves in one address
    /// order: noted once each, not warned.
    pub same_class_notes: u64,
    /// Findings of a shape reported already (the same lock classes: the
    /// same bug in another worker or instance): counted, not reported.
    pub repeated_findings: u64,
    /// Findings beyond a process's budget (a storm of cycles): counted.
    pub suppressed_findings: u64,
    /// Dependencies not added because the graph was full (per process or
    /// in total) and evicting made no room: memory stays bounded, the loss
    /// is counted.
    pub dropped_dependencies: u64,
    /// Lock instances evicted from the full graph (the coldest first), and
    /// the dependencies that left with them (the class graph keeps what
    /// they taught).
    #[serde(default)]
    pub evicted_locks: u64,
    #[serde(default)]
    pub evicted_dependencies: u64,
    /// Times a lock's class or init site was not kept, for want of room
    /// (per process or in all): its class is worked out again at each
    /// dependency, and a lost init site only costs class-level findings.
    pub lock_facts_not_kept: u64,
    /// Dependencies kept out because a lock's memory may have been reused
    /// unseen (see `crate::reuse`), and the processes whose frees were
    /// watched.
    pub lock_memory: ReuseStats,
    /// Records still unprocessed when the tracer had to stop (it stops
    /// within a second of a signal, whatever the backlog): counted.
    pub unprocessed_records: u64,
    /// Dependency records dropped before processing: their process had
    /// its share of the records waiting (see `tracer_analysis::limits`).
    pub dropped_records: u64,
    /// Files of traced processes not opened (for symbols, unwind data,
    /// lock names) because the tracer had no file descriptor left:
    /// symbolization degraded, tracing went on.
    pub unopened_files: u64,
    /// Cycles made only of wake-up hand-offs (a thread locking the mutex
    /// another waits on a condition with): not reported.
    pub handoff_cycles: u64,
    /// Processes that pose as CPython but whose memory does not parse as
    /// its (a list that loops, a record past its read budget): their
    /// Python frames are skipped, their lock events count as any.
    pub unparsable_processes: u64,
    /// Reads of a process's memory that blocked in the kernel (a page of a
    /// file system that does not answer): given up, that process's memory
    /// not read again (see `host::remote`).
    pub stalled_memory_reads: u64,
    /// The files with lock probes (each libc on the host, `--binary` files).
    pub probed_files: Vec<String>,
    /// With probes per process (`watch --pid`): processes that got their
    /// probes after they started (children forked while tracing), and the
    /// longest such delay: their lock operations before were not seen.
    pub processes_probed_late: u64,
    pub probe_delay_max_ms: f64,
    /// Traced processes left without probes for a while (links per
    /// process): no file descriptor to spare.
    pub processes_not_probed: u64,
    /// With an overhead budget (`--budget`): how much of the time the lock
    /// traffic was probed, and whether the last slices still learned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStats>,
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
    /// Of `waits`, those made inside a traced lock function for this word
    /// (a lock the order analysis sees).
    pub lock_waits: u64,
}

/// The `n` longest-waited futex words of `stats`, named with `resolve`.
pub fn contention(stats: &[FutexWord], resolve: &mut dyn Resolve, n: usize) -> Vec<Contention> {
    let mut stats = stats.to_vec();
    stats.sort_by_key(|s| std::cmp::Reverse(s.wait_ns));
    stats
        .into_iter()
        .take(n)
        .map(|w| Contention {
            pid: w.pid,
            comm: resolve.process_name(w.pid),
            addr: w.addr,
            name: resolve.lock_name(w.pid, w.addr),
            waits: w.waits,
            wait_ns: w.wait_ns,
            lock_waits: w.lock_waits,
        })
        .collect()
}

/// How much of the blocking seen the order analysis could see: futex waits
/// on words that traced lock functions wait on (`lock_waits`), against all
/// futex waits of traced threads (condition waits left out). Waits on words no traced lock function took
/// are locks of the program's own (InnoDB's latches, Rust's
/// `std::sync::Mutex`, parking_lot...) or joins: "0 findings" says nothing
/// about them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Coverage {
    pub futex_waits: u64,
    pub lock_waits: u64,
    pub untraced_waits: u64,
    /// The untraced futex words waited on longest, with where a thread was
    /// seen blocked on each (its stack, when a scan caught one).
    pub untraced: Vec<UntracedWait>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct UntracedWait {
    pub pid: u32,
    pub comm: String,
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    pub name: Option<String>,
    pub waits: u64,
    pub wait_ns: u64,
    pub site: Vec<Frame>,
}

/// The coverage of `stats`: the `n` longest untraced words, each with the
/// stack `sites` caught for it (raw addresses, symbolized here).
pub fn coverage(
    stats: &[FutexWord],
    sites: &HashMap<(u32, u64), Vec<u64>>,
    resolve: &mut dyn Resolve,
    n: usize,
) -> Coverage {
    // A word some traced lock function waited on is a lock the analysis
    // sees, whatever else waited on it (a mutex re-locked inside
    // `pthread_cond_wait` goes through glibc's internal lock function).
    let futex_waits: u64 = stats.iter().map(|w| w.waits).sum();
    let mut untraced: Vec<&FutexWord> = stats.iter().filter(|w| w.lock_waits == 0).collect();
    let untraced_waits: u64 = untraced.iter().map(|w| w.waits).sum();
    untraced.sort_by_key(|w| std::cmp::Reverse(w.wait_ns));
    Coverage {
        futex_waits,
        lock_waits: futex_waits - untraced_waits,
        untraced_waits,
        untraced: untraced
            .into_iter()
            .take(n)
            .map(|w| UntracedWait {
                pid: w.pid,
                comm: resolve.process_name(w.pid),
                addr: w.addr,
                name: resolve.lock_name(w.pid, w.addr),
                waits: w.waits,
                wait_ns: w.wait_ns,
                site: sites
                    .get(&(w.pid, w.addr))
                    .map(|addrs| resolve.frames(w.pid, addrs, true))
                    .unwrap_or_default(),
            })
            .collect(),
    }
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
                "; {} (the shortest cycle through each edge is always reported; longer ones through the same edge may not be)",
                plural(
                    self.truncated_cycle_searches,
                    "truncated cycle search",
                    "truncated cycle searches"
                )
            )?;
        }
        if self.repeated_findings != 0 {
            write!(
                f,
                "; {} of a shape reported already",
                plural(self.repeated_findings, "finding", "findings")
            )?;
        }
        if self.suppressed_findings != 0 {
            write!(
                f,
                "; {} beyond a process's budget (a storm), counted, not reported",
                plural(self.suppressed_findings, "finding", "findings")
            )?;
        }
        if self.evicted_locks != 0 {
            write!(
                f,
                "; {} evicted from the full graph with {}",
                plural(self.evicted_locks, "cold lock", "cold locks"),
                plural(self.evicted_dependencies, "dependency", "dependencies")
            )?;
        }
        if self.dropped_dependencies != 0 {
            write!(
                f,
                "; {} not added: the graph was full",
                plural(self.dropped_dependencies, "dependency", "dependencies")
            )?;
        }
        if self.lock_facts_not_kept != 0 {
            write!(
                f,
                "; a lock's class or init site not kept {}: the process's share was full",
                plural(self.lock_facts_not_kept, "time", "times")
            )?;
        }
        let memory = &self.lock_memory;
        if memory.before_free_watch != 0 {
            write!(
                f,
                "; {} of heap locks not judged: made before their process's frees were watched (judged when they recur)",
                plural(memory.before_free_watch, "dependency record", "dependency records")
            )?;
        }
        if memory.on_stack != 0 {
            write!(
                f,
                "; {} of locks on a thread's stack not judged (a returned frame's lock and the next one's share an address)",
                plural(memory.on_stack, "dependency record", "dependency records")
            )?;
        }
        if memory.watches_refused != 0 {
            write!(
                f,
                "; {} refused a watch of its frees for a while: no file descriptor to spare",
                plural(memory.watches_refused, "process", "processes")
            )?;
        }
        if memory.unwatched != 0 {
            write!(
                f,
                "; {} of heap locks judged without watching frees (no `free` in the probed files)",
                plural(memory.unwatched, "dependency record", "dependency records")
            )?;
        }
        if self.unprocessed_records != 0 {
            write!(
                f,
                "; {} unprocessed at exit",
                plural(self.unprocessed_records, "record", "records")
            )?;
        }
        if self.dropped_records != 0 {
            write!(
                f,
                "; {} dropped: the process had its share of the backlog",
                plural(
                    self.dropped_records,
                    "dependency record",
                    "dependency records"
                )
            )?;
        }
        if self.unopened_files != 0 {
            write!(
                f,
                "; {} not opened for symbols: no file descriptor left",
                plural(self.unopened_files, "file", "files")
            )?;
        }
        if self.unparsable_processes != 0 {
            write!(
                f,
                "; {} whose memory does not parse as CPython's (Python frames skipped)",
                plural(self.unparsable_processes, "process", "processes")
            )?;
        }
        if self.stalled_memory_reads != 0 {
            write!(
                f,
                "; {} of a process's memory blocked in the kernel (given up; that process's memory not read again)",
                plural(self.stalled_memory_reads, "read", "reads")
            )?;
        }
        if self.same_class_notes != 0 {
            write!(
                f,
                "; {} nested in one order",
                plural(self.same_class_notes, "lock class", "lock classes")
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
                "\n  probed late: {} started while tracing got the probes up to {:.1} ms after their fork or exec (their lock operations before were not seen)",
                plural(self.processes_probed_late, "process", "processes"),
                self.probe_delay_max_ms
            )?;
        }
        if self.processes_not_probed > 0 {
            write!(
                f,
                "\n  not probed: {} left without probes for a while (no file descriptor to spare; tried again every 10 s)",
                plural(self.processes_not_probed, "traced process", "traced processes"),
            )?;
        }
        if let Some(b) = &self.budget {
            let recent: u64 = b.new_dependencies_last_slices.iter().sum();
            write!(
                f,
                "\n  budget {}%: lock traffic probed {:.1}% of the time ({}, estimated cost while probed {:.1}% of the traced CPU time); the last {} found {}",
                b.budget_pct,
                b.duty_cycle * 100.0,
                plural(b.slices, "slice", "slices"),
                b.estimated_cost_pct,
                plural(b.new_dependencies_last_slices.len() as u64, "slice", "slices"),
                plural(recent, "new dependency", "new dependencies"),
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
        let cov = &self.coverage;
        if cov.untraced_waits > 0 {
            write!(
                f,
                "\n  coverage: {} of {} futex waits were on locks the order analysis sees; the rest \
                 waited on futex words no traced lock function took (a lock of the program's own?)",
                cov.lock_waits, cov.futex_waits
            )?;
            for u in &cov.untraced {
                let name = u
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("futex {:#x}", u.addr));
                write!(
                    f,
                    "\n    untraced: {name} in {} [{}]: {}, {:.3}s",
                    u.comm,
                    u.pid,
                    plural(u.waits, "wait", "waits"),
                    u.wait_ns as f64 / 1e9
                )?;
                // The first frame outside libc: where the program waits.
                let site = u
                    .site
                    .iter()
                    .find(|fr| !fr.module.as_deref().is_some_and(|m| m.contains("libc.so")));
                if let Some(fr) = site {
                    let at = match (&fr.function, &fr.file, fr.line) {
                        (Some(func), Some(file), Some(line)) => format!("{func} {file}:{line}"),
                        (Some(func), _, _) => func.clone(),
                        _ => format!("{:#x}", fr.addr),
                    };
                    write!(f, ", blocked in {at}")?;
                }
            }
        }
        Ok(())
    }
}
