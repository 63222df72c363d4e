//! The finding types: what locktrace reports (inversions, self-deadlocks,
//! same-class nestings, deadlocks, lock waits over the threshold), their
//! locks, edges and threads, with their serde forms.

use serde::{Deserialize, Serialize};
use tracer_analysis::model::{from_hex, hex, Frame, Level, LockKind, PyFrame};

pub use crate::host::proc::Origin;

/// Name of a lock kind as printed (`"mutex"`).
pub fn kind_name(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Mutex => "mutex",
        LockKind::RecursiveMutex => "recursive_mutex",
        LockKind::RwlockRead => "rwlock_read",
        LockKind::RwlockWrite => "rwlock_write",
        LockKind::Spinlock => "spinlock",
        LockKind::Semaphore => "semaphore",
    }
}

/// The kind [`kind_name`] names `name`.
pub fn kind_named(name: &str) -> Option<LockKind> {
    [
        LockKind::Mutex,
        LockKind::RecursiveMutex,
        LockKind::RwlockRead,
        LockKind::RwlockWrite,
        LockKind::Spinlock,
        LockKind::Semaphore,
    ]
    .into_iter()
    .find(|&k| kind_name(k) == name)
}

/// Every name [`kind_name`] gives.
const KIND_NAMES: [&str; 6] = [
    "mutex",
    "recursive_mutex",
    "rwlock_read",
    "rwlock_write",
    "spinlock",
    "semaphore",
];

/// A [`Lock`] as written, read back by `locktrace report`: its kind is
/// checked against [`KIND_NAMES`].
#[derive(Deserialize)]
struct LockRecord {
    #[serde(deserialize_with = "from_hex")]
    addr: u64,
    kind: String,
    name: Option<String>,
    #[serde(default)]
    shared: Option<String>,
    #[serde(default)]
    build_id: Option<String>,
    #[serde(default)]
    file_offset: Option<u64>,
}

// By hand: a derived one would borrow `kind` from the input.
impl<'de> Deserialize<'de> for Lock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = LockRecord::deserialize(d)?;
        let kind = KIND_NAMES
            .into_iter()
            .find(|k| *k == r.kind)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown lock kind `{}`", r.kind)))?;
        Ok(Lock {
            addr: r.addr,
            kind,
            name: r.name,
            shared: r.shared,
            build_id: r.build_id,
            file_offset: r.file_offset,
            pid: 0,
        })
    }
}

/// One report, serialized with its `"type"` first.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Finding {
    LockOrderInversion(Inversion),
    SelfDeadlock(SelfDeadlock),
    Deadlock(Deadlock),
    LockWaitTimeout(LockWaitTimeout),
    SameClassNesting(SameClassNesting),
    /// Not a finding: one blocked thread of a `locktrace snapshot`.
    BlockedThread(ThreadReport),
}

impl Finding {
    pub fn id(&self) -> u64 {
        match self {
            Finding::LockOrderInversion(inv) => inv.id,
            Finding::SelfDeadlock(d) => d.id,
            Finding::Deadlock(d) => d.id,
            Finding::LockWaitTimeout(t) => t.id,
            Finding::SameClassNesting(n) => n.id,
            Finding::BlockedThread(_) => 0,
        }
    }
}

/// A thread took two locks of the same class, one while holding the other
/// (like two accounts in a transfer): deadlock-prone unless every thread
/// orders the instances the same way, which the class graph cannot tell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SameClassNesting {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process runs (cgroup, unit, container), read while it
    /// ran; null when unknown (gone before it was read, no cgroup v2, or a
    /// capture written before this field).
    #[serde(default)]
    pub origin: Option<Origin>,
    pub tid: u32,
    pub thread: String,
    pub class: String,
    /// The lock held, and the one requested, of the same class.
    pub held: Lock,
    pub requested: Lock,
    pub stack: Vec<Frame>,
    pub held_stack: Vec<Frame>,
    /// The request's Python stack, innermost first, in a Python process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python_stack: Vec<PyFrame>,
    /// Every such nesting of the class went one address order so far (an
    /// array locked in index order): it cannot deadlock. A note, not a
    /// warning; it does not count for `--exit-code`.
    pub note: bool,
    /// The first nesting of two locks of the class the other way, once
    /// seen: the warning's other side.
    pub opposite: Option<Box<Edge>>,
}

/// A real deadlock: every thread of `threads` waits for a lock that the next
/// one holds (the last for the first's).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deadlock {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process runs (cgroup, unit, container), read while it
    /// ran; null when unknown (gone before it was read, no cgroup v2, or a
    /// capture written before this field).
    #[serde(default)]
    pub origin: Option<Origin>,
    pub threads: Vec<ThreadReport>,
    /// The id of the lock-order inversion reported earlier for these locks.
    pub inversion: Option<u64>,
}

/// A thread blocked on a lock longer than the hang threshold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockWaitTimeout {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process runs (cgroup, unit, container), read while it
    /// ran; null when unknown (gone before it was read, no cgroup v2, or a
    /// capture written before this field).
    #[serde(default)]
    pub origin: Option<Origin>,
    pub waiter: ThreadReport,
    /// The lock's holders, and what each is doing.
    pub holders: Vec<ThreadReport>,
}

/// One thread, as a deadlock or hang report shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThreadReport {
    pub pid: u32,
    pub comm: String,
    /// Where the process runs (cgroup, unit, container), read while it
    /// ran; null when unknown (gone before it was read, no cgroup v2, or a
    /// capture written before this field).
    #[serde(default)]
    pub origin: Option<Origin>,
    pub tid: u32,
    pub thread: String,
    /// The kernel's scheduler state: `S` sleeping, `R` running, `D` in
    /// uninterruptible sleep...
    pub state: String,
    /// The lock it waits for, if it is blocked on one.
    pub waits_for: Option<Lock>,
    /// Blocked for good in `pthread_mutex_lock` after the kernel refused its
    /// priority-inheritance mutex (a deadlock, or an owner that died), when
    /// which mutex is not known (`snapshot` has no probes to say).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused_lock: bool,
    /// How long it has waited (null when unknown: the wait began before the
    /// tracer started).
    pub waiting_s: Option<f64>,
    /// The threads holding that lock.
    pub held_by: Vec<u32>,
    /// The locks it holds, with where it took each (when the tracer saw it).
    pub holds: Vec<HeldReport>,
    /// Its current stack, innermost first.
    pub stack: Vec<Frame>,
    /// Its Python stack, innermost first, for a thread of a Python process
    /// (read from the process while the thread is blocked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python_stack: Vec<PyFrame>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldReport {
    pub lock: Lock,
    /// The call site that took it (empty if taken before the tracer started).
    pub taken_at: Vec<Frame>,
    /// The Python line that took it (its innermost frame), for a lock
    /// Python code took while traced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken_at_python: Vec<PyFrame>,
}

/// A thread requested, with a blocking or timed operation, a non-recursive
/// lock it already holds: it waits for itself (forever, or until the
/// timeout).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SelfDeadlock {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// Where the process runs (cgroup, unit, container), read while it
    /// ran; null when unknown (gone before it was read, no cgroup v2, or a
    /// capture written before this field).
    #[serde(default)]
    pub origin: Option<Origin>,
    pub tid: u32,
    pub thread: String,
    /// The lock, in the mode it was requested again.
    pub lock: Lock,
    /// Where it was requested again, innermost first.
    pub stack: Vec<Frame>,
    /// Where it was taken first (its call site).
    pub held_stack: Vec<Frame>,
}

/// A cycle in the lock-order graph: a potential deadlock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inversion {
    pub id: u64,
    /// The process of the cycle (of its first edge if it spans processes).
    pub pid: u32,
    pub comm: String,
    /// Where the process runs (cgroup, unit, container), read while it
    /// ran; null when unknown (gone before it was read, no cgroup v2, or a
    /// capture written before this field).
    #[serde(default)]
    pub origin: Option<Origin>,
    /// The locks of the cycle, in order: `cycle[i].from`.
    pub locks: Vec<Lock>,
    pub cycle: Vec<Edge>,
    /// Every dependency of the cycle was made while its thread held `gate`:
    /// the cycle cannot deadlock (a note, not a warning; it does not count
    /// for `--exit-code`).
    pub guarded: bool,
    pub gate: Option<Lock>,
    /// `"instance"`: a cycle of lock instances (in one process, or through
    /// shared locks); `"class"`: a cycle of lock classes only, split across
    /// processes or instances (prefork workers running the same code).
    pub level: Level,
    /// The lock classes of `locks`, for a class-level cycle.
    pub classes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lock {
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    pub kind: &'static str,
    /// The symbol of the lock object, if it is in a mapped file.
    pub name: Option<String>,
    /// For a lock in shared memory (one lock for every process that maps
    /// it): its identity (device, inode, offset) and the mapping's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
    /// For a lock in a mapped file's image (a global or static variable):
    /// the file's GNU build-id and the lock's offset in it (past the file's
    /// bytes for `.bss`: where the loader puts it). Written only then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_offset: Option<u64>,
    /// Not written: the finding's process says it (0 when read back).
    #[serde(skip)]
    pub pid: u32,
}

impl Lock {
    /// The name if known, else the address.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("{:#x}", self.addr),
        }
    }
}

/// One dependency of a cycle: thread `tid` requested `to` while holding
/// `from`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Edge {
    pub from: Lock,
    pub to: Lock,
    pub pid: u32,
    pub tid: u32,
    /// The process's name.
    pub comm: String,
    /// Where the process runs (cgroup, unit, container), read while it
    /// ran; null when unknown (gone before it was read, no cgroup v2, or a
    /// capture written before this field).
    #[serde(default)]
    pub origin: Option<Origin>,
    /// The thread's name.
    pub thread: String,
    /// Where `to` was requested, innermost first.
    pub stack: Vec<Frame>,
    /// Where `from` was taken (its call site).
    pub held_stack: Vec<Frame>,
    /// Where Python code took `from` (its innermost frame), when it did:
    /// what `held_stack`'s interpreter call site was running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_python_stack: Vec<PyFrame>,
    /// The Python frames of the request (innermost first), when the thread
    /// ran Python code: what `stack`'s interpreter frames were running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python_stack: Vec<PyFrame>,
    /// A dependency an earlier run of the agent learned, restored from its
    /// state: its process, thread and stacks are those of that run (the
    /// process may be long gone). Absent for a dependency seen in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored>,
}

/// Where a restored dependency comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// When the earlier run learned it (RFC 3339).
    pub learned: String,
}

/// A finding with the wall-clock time it was reported: read back from a
/// capture by `replay`, or kept by the agent for its page.
#[derive(Clone, Debug)]
pub struct Entry {
    pub finding: Finding,
    /// RFC 3339, as written (checked); `None` in a capture written before
    /// findings had a time (or with a time that does not read).
    pub time: Option<String>,
}

impl Entry {
    /// The time, as nanoseconds since the epoch.
    pub fn at(&self) -> Option<crate::report::walltime::Nanos> {
        crate::report::walltime::parse(self.time.as_deref()?)
    }
}
