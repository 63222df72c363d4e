//! locktrace's JSON Lines output, typed: one [`Record`] per line, every field
//! locktrace writes (README, "JSON Lines"). Unknown record types and unknown
//! fields are errors (`deny_unknown_fields`), so a new field makes these
//! types learn it; a field is optional (`#[serde(default)]`) only where
//! locktrace omits it, and nullable fields must still be present
//! ([`nullable`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer};

/// One line of `--format json` output (or of `locktrace snapshot`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    LockOrderInversion(Inversion),
    SelfDeadlock(SelfDeadlock),
    SameClassNesting(SameClassNesting),
    Deadlock(Deadlock),
    LockWaitTimeout(LockWaitTimeout),
    /// Not a finding: one blocked thread of `locktrace snapshot`.
    BlockedThread(ThreadReport),
    /// The whole class graph of a JSON `run` or `watch`, before its summary.
    LockGraph(LockGraph),
    /// The last line of a `run` or `watch`.
    Summary(Summary),
}

impl Record {
    /// The process the record is about (none for the summary).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Record::LockOrderInversion(r) => Some(r.pid),
            Record::SelfDeadlock(r) => Some(r.pid),
            Record::SameClassNesting(r) => Some(r.pid),
            Record::Deadlock(r) => Some(r.pid),
            Record::LockWaitTimeout(r) => Some(r.pid),
            Record::BlockedThread(r) => Some(r.pid),
            Record::Summary(_) | Record::LockGraph(_) => None,
        }
    }

    /// The record's `type`, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::LockOrderInversion(_) => "lock_order_inversion",
            Record::SelfDeadlock(_) => "self_deadlock",
            Record::SameClassNesting(_) => "same_class_nesting",
            Record::Deadlock(_) => "deadlock",
            Record::LockWaitTimeout(_) => "lock_wait_timeout",
            Record::BlockedThread(_) => "blocked_thread",
            Record::Summary(_) => "summary",
            Record::LockGraph(_) => "lock_graph",
        }
    }
}

/// Deserializes a field that is always written but may be `null`: unlike a
/// plain `Option` field, a missing key is an error.
fn nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// The mode a lock was held or requested in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    Mutex,
    RecursiveMutex,
    RwlockRead,
    RwlockWrite,
    Spinlock,
    Semaphore,
}

/// A lock object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// `0x...`
    pub addr: String,
    pub kind: LockKind,
    /// The symbol of the lock object, a Python creation line
    /// (`python/x.py:12`), `import of MODULE`...
    #[serde(deserialize_with = "nullable")]
    pub name: Option<String>,
    /// Written only for a lock in shared memory: its identity and mapping.
    #[serde(default)]
    pub shared: Option<String>,
    /// Written only for a lock in a file's image: the file's build-id
    /// and the lock's offset in it.
    #[serde(default)]
    pub build_id: Option<String>,
    #[serde(default)]
    pub file_offset: Option<u64>,
}

impl Lock {
    /// The lock's name, or `<unnamed>`.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("<unnamed>")
    }
}

/// A native stack frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    pub addr: String,
    #[serde(deserialize_with = "nullable")]
    pub module: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub function: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub offset: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub file: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub line: Option<u64>,
    /// The module's GNU build-id (hex), when it has one.
    #[serde(deserialize_with = "nullable")]
    pub build_id: Option<String>,
    /// The file offset of `addr` in the module.
    #[serde(deserialize_with = "nullable")]
    pub file_offset: Option<u64>,
}

impl Frame {
    /// Function `function`, in a file named `file_name` (compared by file
    /// name, the path may be absolute), at line `line`.
    pub fn is_at(&self, function: &str, file_name: &str, line: u64) -> bool {
        self.function.as_deref() == Some(function)
            && self
                .file
                .as_deref()
                .and_then(|f| Path::new(f).file_name())
                .is_some_and(|f| f == file_name)
            && self.line == Some(line)
    }
}

/// A Python frame: `function` is the qualified name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PyFrame {
    pub function: String,
    pub file: String,
    /// 0 when the instruction has no line.
    pub line: u32,
}

/// Where a process ran, from `/proc/PID/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The cgroup v2 path: `/system.slice/apache2.service`.
    pub cgroup: String,
    /// Its innermost `*.service` or `*.scope` component.
    #[serde(deserialize_with = "nullable")]
    pub unit: Option<String>,
    /// A 64-hex container id in the path.
    #[serde(deserialize_with = "nullable")]
    pub container: Option<String>,
}

/// One dependency of a cycle: thread `tid` requested `to` while holding
/// `from`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    pub from: Lock,
    pub to: Lock,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Where the process ran: cgroup v2 path, unit, container (null when
    /// unknown).
    #[serde(deserialize_with = "nullable")]
    pub origin: Option<Origin>,
    pub thread: String,
    /// Where `to` was requested, innermost first.
    pub stack: Vec<Frame>,
    /// Where `from` was taken: its call site.
    pub held_stack: Vec<Frame>,
    /// Written only when the thread ran Python code.
    #[serde(default)]
    pub python_stack: Vec<PyFrame>,
    /// Where Python code took `from` (its innermost frame); written only
    /// when it did.
    #[serde(default)]
    pub held_python_stack: Vec<PyFrame>,
    /// Written only for a dependency an earlier run of the agent learned,
    /// restored from its state.
    #[serde(default)]
    pub restored: Option<Restored>,
}

/// Where a restored dependency comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restored {
    /// When the earlier run learned it (RFC 3339).
    pub learned: String,
}

/// Instance or class cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Instance,
    Class,
}

/// A `lock_order_inversion`: a cycle in the lock-order graph.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inversion {
    /// Its stable identity (the agent's alert label), 16 hex digits.
    pub fingerprint: String,
    /// When it was reported: RFC 3339, UTC, milliseconds.
    pub time: String,
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process ran: cgroup v2 path, unit, container (null when
    /// unknown).
    #[serde(deserialize_with = "nullable")]
    pub origin: Option<Origin>,
    /// `locks[i]` is `cycle[i].from`.
    pub locks: Vec<Lock>,
    pub cycle: Vec<Edge>,
    /// Every dependency was made under `gate`: a note, not a warning.
    pub guarded: bool,
    #[serde(deserialize_with = "nullable")]
    pub gate: Option<Lock>,
    pub level: Level,
    /// The lock classes of `locks`, for a class-level cycle (else empty).
    pub classes: Vec<String>,
}

/// A `self_deadlock`: thread `tid` requested (blocking or timed) a
/// non-recursive `lock` it already held.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfDeadlock {
    /// Its stable identity (the agent's alert label), 16 hex digits.
    pub fingerprint: String,
    /// When it was reported: RFC 3339, UTC, milliseconds.
    pub time: String,
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process ran: cgroup v2 path, unit, container (null when
    /// unknown).
    #[serde(deserialize_with = "nullable")]
    pub origin: Option<Origin>,
    pub tid: u32,
    pub thread: String,
    pub lock: Lock,
    /// Where the lock was requested again, innermost first (libc first).
    pub stack: Vec<Frame>,
    /// Where it was taken first: its call site.
    pub held_stack: Vec<Frame>,
}

/// A `same_class_nesting`: two locks of one class, one taken while holding
/// the other.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SameClassNesting {
    /// Its stable identity (the agent's alert label), 16 hex digits.
    pub fingerprint: String,
    /// When it was reported: RFC 3339, UTC, milliseconds.
    pub time: String,
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process ran: cgroup v2 path, unit, container (null when
    /// unknown).
    #[serde(deserialize_with = "nullable")]
    pub origin: Option<Origin>,
    pub tid: u32,
    pub thread: String,
    pub class: String,
    pub held: Lock,
    pub requested: Lock,
    pub stack: Vec<Frame>,
    pub held_stack: Vec<Frame>,
    /// The request's Python frames (absent outside Python processes).
    #[serde(default)]
    pub python_stack: Vec<PyFrame>,
    /// Every nesting of the class so far went one address order: a note.
    pub note: bool,
    /// The first nesting of two locks of the class the other way (then a
    /// warning).
    #[serde(deserialize_with = "nullable")]
    pub opposite: Option<Box<Edge>>,
}

/// A `deadlock`: every thread waits for a lock the next one holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlock {
    /// Its stable identity (the agent's alert label), 16 hex digits.
    pub fingerprint: String,
    /// When it was reported: RFC 3339, UTC, milliseconds.
    pub time: String,
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process ran: cgroup v2 path, unit, container (null when
    /// unknown).
    #[serde(deserialize_with = "nullable")]
    pub origin: Option<Origin>,
    pub threads: Vec<ThreadReport>,
    /// The id of the inversion reported earlier for these locks.
    #[serde(deserialize_with = "nullable")]
    pub inversion: Option<u64>,
}

/// A `lock_wait_timeout`: a thread blocked longer than the hang threshold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockWaitTimeout {
    /// Its stable identity (the agent's alert label), 16 hex digits.
    pub fingerprint: String,
    /// When it was reported: RFC 3339, UTC, milliseconds.
    pub time: String,
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process ran: cgroup v2 path, unit, container (null when
    /// unknown).
    #[serde(deserialize_with = "nullable")]
    pub origin: Option<Origin>,
    pub waiter: ThreadReport,
    pub holders: Vec<ThreadReport>,
}

/// One thread of a deadlock, hang or snapshot.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadReport {
    pub pid: u32,
    pub comm: String,
    /// Where the process ran: cgroup v2 path, unit, container (null when
    /// unknown).
    #[serde(deserialize_with = "nullable")]
    pub origin: Option<Origin>,
    pub tid: u32,
    pub thread: String,
    /// The kernel's scheduler state (`S`, `R`, `D`...).
    pub state: String,
    #[serde(deserialize_with = "nullable")]
    pub waits_for: Option<Lock>,
    /// Parked for good in `pthread_mutex_lock` after the kernel refused a
    /// priority-inheritance mutex, which mutex unknown (written when true).
    #[serde(default)]
    pub refused_lock: bool,
    /// Null when the wait began before the tracer started.
    #[serde(deserialize_with = "nullable")]
    pub waiting_s: Option<f64>,
    /// The threads holding `waits_for`.
    pub held_by: Vec<u32>,
    pub holds: Vec<Held>,
    pub stack: Vec<Frame>,
    /// Written only for a thread of a Python process.
    #[serde(default)]
    pub python_stack: Vec<PyFrame>,
}

impl ThreadReport {
    /// The name of the lock it waits for (`<unnamed>`), if it waits.
    pub fn waits_for_name(&self) -> Option<&str> {
        self.waits_for.as_ref().map(Lock::label)
    }
}

/// A lock a thread holds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    pub lock: Lock,
    /// The call site that took it (empty if taken before tracing began).
    pub taken_at: Vec<Frame>,
    /// The Python line that took it (its innermost frame); written only
    /// when Python code took it while traced.
    #[serde(default)]
    pub taken_at_python: Vec<PyFrame>,
}

/// A contended futex word of the summary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contention {
    pub pid: u32,
    pub comm: String,
    pub addr: String,
    #[serde(deserialize_with = "nullable")]
    pub name: Option<String>,
    pub waits: u64,
    pub wait_ns: u64,
    /// Of `waits`, those inside a traced lock function for this word.
    pub lock_waits: u64,
}

/// How much of the blocking the order analysis saw.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    pub futex_waits: u64,
    pub lock_waits: u64,
    pub untraced_waits: u64,
    pub untraced: Vec<UntracedWait>,
}

/// A futex word waited on that no traced lock function took.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UntracedWait {
    pub pid: u32,
    pub comm: String,
    pub addr: String,
    #[serde(deserialize_with = "nullable")]
    pub name: Option<String>,
    pub waits: u64,
    pub wait_ns: u64,
    /// Where a thread was caught blocked on it.
    pub site: Vec<Frame>,
}

/// Every lock class and class dependency of a run (`report --graph`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockGraph {
    pub classes: Vec<String>,
    pub dependencies: Vec<GraphDependency>,
    pub omitted_dependencies: u64,
}

/// A class dependency: `from` and `to` index `classes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphDependency {
    pub from: usize,
    pub to: usize,
    pub seen: u64,
    pub pid: u32,
    pub thread: String,
}

/// Dependencies kept out because a lock's memory may have been reused
/// unseen (the summary's `lock_memory`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockMemory {
    /// Of heap locks, made before their process's frees were watched.
    pub before_free_watch: u64,
    /// Of locks on a thread's stack.
    pub on_stack: u64,
    /// Of heap locks in processes whose frees cannot be watched.
    pub unwatched: u64,
    /// Processes whose frees were watched.
    pub processes_watched: u64,
    /// Processes refused a watch for lack of descriptors.
    pub watches_refused: u64,
}

/// End-of-run statistics: the last line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub events: u64,
    pub dependencies: u64,
    pub locks: u64,
    pub cycles: u64,
    pub lost_events: u64,
    pub truncated_cycle_searches: u64,
    /// Kernel counters by name (`acquisitions`, `releases`...).
    pub counters: BTreeMap<String, u64>,
    /// The futex words waited on longest, longest first.
    pub contention: Vec<Contention>,
    pub coverage: Coverage,
    pub forgotten_processes: u64,
    pub forgotten_dependencies: u64,
    pub library_same_class_nesting: u64,
    pub same_class_notes: u64,
    pub repeated_findings: u64,
    pub suppressed_findings: u64,
    pub dropped_dependencies: u64,
    /// Cold lock instances evicted from the full instance graph, and the
    /// dependencies that left with them.
    pub evicted_locks: u64,
    pub evicted_dependencies: u64,
    pub lock_facts_not_kept: u64,
    /// Dependencies kept out because a lock's memory may have been reused
    /// unseen, and the processes whose frees were watched.
    pub lock_memory: LockMemory,
    pub unprocessed_records: u64,
    /// Dependency records over their process's share of the backlog.
    #[serde(default)]
    pub dropped_records: u64,
    /// Files not opened for symbols for lack of file descriptors.
    #[serde(default)]
    pub unopened_files: u64,
    pub handoff_cycles: u64,
    /// Processes posing as CPython whose memory does not parse (issue 20).
    pub unparsable_processes: u64,
    /// Reads of a process's memory that blocked in the kernel.
    pub stalled_memory_reads: u64,
    pub probed_files: Vec<String>,
    /// Processes that got their probes after they started (`watch --pid`:
    /// children forked while tracing), and the longest delay.
    pub processes_probed_late: u64,
    pub probe_delay_max_ms: f64,
    /// Traced processes left without probes for lack of descriptors.
    pub processes_not_probed: u64,
    /// With `--budget` only: the duty cycle and what the last slices found.
    #[serde(default)]
    pub budget: Option<BudgetStats>,
    pub duration_s: f64,
    /// The version of the JSON layout (`locktrace report` refuses newer).
    pub schema: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetStats {
    pub budget_pct: f64,
    pub duty_cycle: f64,
    pub slices: u64,
    pub estimated_cost_pct: f64,
    pub new_dependencies_last_slices: Vec<u64>,
}

/// Parses JSON Lines into records, in order; an error names the line.
pub fn parse_records(raw: &str) -> Result<Vec<Record>, String> {
    raw.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<Record>(line)
                .map_err(|e| format!("line {} is not a locktrace record ({e}): {line}", i + 1))
        })
        .collect()
}

/// A parsed `run` or `watch` output: records, then one summary last.
#[derive(Debug)]
pub struct Report {
    /// The raw output, for messages.
    pub raw: String,
    /// Every record but the summary and the lock graph, in order.
    pub records: Vec<Record>,
    /// The lock graph line (JSON captures of `run` and `watch`).
    pub graph: Option<LockGraph>,
    pub summary: Summary,
}

impl Report {
    /// Parses a `run`/`watch` output: every line a [`Record`], the last one
    /// the only summary.
    pub fn parse(raw: &str) -> Result<Report, String> {
        let mut records = parse_records(raw)?;
        let summary = match records.pop() {
            Some(Record::Summary(s)) => s,
            _ => return Err("no summary line at the end of the output".into()),
        };
        if let Some(i) = records.iter().position(|r| matches!(r, Record::Summary(_))) {
            return Err(format!("summary record {} is not the last line", i + 1));
        }
        let mut graphs = Vec::new();
        records.retain(|r| match r {
            Record::LockGraph(g) => {
                graphs.push(g.clone());
                false
            }
            _ => true,
        });
        if graphs.len() > 1 {
            return Err(format!("{} lock graph lines, not one", graphs.len()));
        }
        Ok(Report {
            raw: raw.to_string(),
            records,
            graph: graphs.pop(),
            summary,
        })
    }

    pub fn inversions(&self) -> Vec<&Inversion> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::LockOrderInversion(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    pub fn self_deadlocks(&self) -> Vec<&SelfDeadlock> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::SelfDeadlock(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    pub fn same_class_nestings(&self) -> Vec<&SameClassNesting> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::SameClassNesting(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    pub fn deadlocks(&self) -> Vec<&Deadlock> {
        deadlocks(&self.records)
    }

    pub fn lock_wait_timeouts(&self) -> Vec<&LockWaitTimeout> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::LockWaitTimeout(x) => Some(x),
                _ => None,
            })
            .collect()
    }
}

/// The `deadlock` records of `records`.
pub fn deadlocks(records: &[Record]) -> Vec<&Deadlock> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Deadlock(x) => Some(x),
            _ => None,
        })
        .collect()
}

/// The `blocked_thread` records of `records`.
pub fn blocked_threads(records: &[Record]) -> Vec<&ThreadReport> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::BlockedThread(x) => Some(x),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
