//! Findings and their renderings: JSON Lines (one object per line, for
//! machines) and text in the spirit of lockdep and ThreadSanitizer (for the
//! engineer on call). A [`Reporter`] writes both kinds of record, a finding
//! as soon as it is made and a [`Summary`] at the end.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;
use tracer_common::Counter;

use crate::graph::Cycle;
use crate::model::{hex, Frame, LockId, LockKind, Resolve};
use crate::python::PyFrame;

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

/// One report, serialized with its `"type"` first.
#[derive(Clone, Debug, Serialize)]
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
#[derive(Clone, Debug, Serialize)]
pub struct SameClassNesting {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub tid: u32,
    pub thread: String,
    pub class: String,
    /// The lock held, and the one requested, of the same class.
    pub held: Lock,
    pub requested: Lock,
    pub stack: Vec<Frame>,
    pub held_stack: Vec<Frame>,
}

/// The finding for `dep`, whose two locks are of class `class`.
pub fn same_class_nesting(
    dep: &crate::model::Dependency,
    class: &str,
    resolve: &mut dyn Resolve,
    id: u64,
) -> Finding {
    let mut names = Names {
        resolve,
        locks: HashMap::new(),
        comms: HashMap::new(),
    };
    let held = names.lock(dep.from, dep.from_kind);
    let requested = names.lock(dep.to, dep.to_kind);
    let comm = names.comm(dep.pid);
    Finding::SameClassNesting(SameClassNesting {
        id,
        pid: dep.pid,
        comm,
        tid: dep.tid,
        thread: dep.thread.clone(),
        class: class.to_string(),
        held,
        requested,
        stack: names.resolve.frames(dep.pid, &dep.stack, true),
        held_stack: names.resolve.frames(dep.pid, &[dep.held_callsite], false),
    })
}

impl fmt::Display for SameClassNesting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "WARNING: same-class nesting: thread {} [{}] of {} [{}] requested {} while holding {}, both of lock class {}",
            self.thread,
            self.tid,
            self.comm,
            self.pid,
            self.requested.label(),
            self.held.label(),
            self.class
        )?;
        writeln!(
            f,
            "  (deadlock-prone unless every thread takes such locks in one order)"
        )?;
        writeln!(f)?;
        writeln!(f, "     {} was taken at:", self.held.label())?;
        write_stack(f, "       ", &self.held_stack)?;
        writeln!(f, "     {} requested at:", self.requested.label())?;
        write_stack(f, "       ", &self.stack)
    }
}

/// A real deadlock: every thread of `threads` waits for a lock that the next
/// one holds (the last for the first's).
#[derive(Clone, Debug, Serialize)]
pub struct Deadlock {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub threads: Vec<ThreadReport>,
    /// The id of the lock-order inversion reported earlier for these locks.
    pub inversion: Option<u64>,
}

/// A thread blocked on a lock longer than the hang threshold.
#[derive(Clone, Debug, Serialize)]
pub struct LockWaitTimeout {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub waiter: ThreadReport,
    /// The lock's holders, and what each is doing.
    pub holders: Vec<ThreadReport>,
}

/// One thread, as a deadlock or hang report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadReport {
    pub pid: u32,
    pub comm: String,
    pub tid: u32,
    pub thread: String,
    /// The kernel's scheduler state: `S` sleeping, `R` running, `D` in
    /// uninterruptible sleep...
    pub state: String,
    /// The lock it waits for, if it is blocked on one.
    pub waits_for: Option<Lock>,
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub python_stack: Vec<PyFrame>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HeldReport {
    pub lock: Lock,
    /// The call site that took it (empty if taken before the tracer started).
    pub taken_at: Vec<Frame>,
}

impl ThreadReport {
    fn write(&self, f: &mut fmt::Formatter<'_>, indent: &str) -> fmt::Result {
        write!(
            f,
            "{indent}thread {} [{}] of {} [{}], state {}",
            self.thread, self.tid, self.comm, self.pid, self.state
        )?;
        match &self.waits_for {
            Some(lock) => {
                write!(
                    f,
                    ", waits for {} ({} {:#x})",
                    lock.label(),
                    lock.kind,
                    lock.addr
                )?;
                if let Some(s) = self.waiting_s {
                    write!(f, " for {s:.1}s")?;
                }
                if !self.held_by.is_empty() {
                    let by: Vec<String> = self.held_by.iter().map(|t| t.to_string()).collect();
                    write!(f, ", held by thread {}", by.join(", "))?;
                }
                writeln!(f)?;
            }
            None => writeln!(f, ", not waiting for a lock")?,
        }
        for h in &self.holds {
            writeln!(
                f,
                "{indent}  holds {} ({} {:#x}), taken at:",
                h.lock.label(),
                h.lock.kind,
                h.lock.addr
            )?;
            if h.taken_at.is_empty() {
                writeln!(f, "{indent}    (taken before tracing began)")?;
            }
            write_stack_if_any(f, &format!("{indent}    "), &h.taken_at)?;
        }
        if !self.python_stack.is_empty() {
            writeln!(f, "{indent}  Python stack:")?;
            write_python_stack(f, &format!("{indent}    "), &self.python_stack)?;
        }
        writeln!(f, "{indent}  stack:")?;
        write_stack(f, &format!("{indent}    "), &self.stack)
    }
}

fn write_stack_if_any(f: &mut fmt::Formatter<'_>, indent: &str, frames: &[Frame]) -> fmt::Result {
    if frames.is_empty() {
        return Ok(());
    }
    write_stack(f, indent, frames)
}

impl fmt::Display for Deadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ERROR: deadlock: {} of {} [{}] wait for each other",
            plural(self.threads.len() as u64, "thread", "threads"),
            self.comm,
            self.pid
        )?;
        if let Some(id) = self.inversion {
            writeln!(f, "  (the lock-order inversion reported as finding #{id})")?;
        }
        writeln!(f)?;
        for t in &self.threads {
            t.write(f, "  ")?;
        }
        Ok(())
    }
}

impl fmt::Display for LockWaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lock = self
            .waiter
            .waits_for
            .as_ref()
            .map(Lock::label)
            .unwrap_or_default();
        writeln!(
            f,
            "WARNING: lock wait timeout: thread {} [{}] of {} [{}] has waited {:.1}s for {lock}",
            self.waiter.thread,
            self.waiter.tid,
            self.comm,
            self.pid,
            self.waiter.waiting_s.unwrap_or(0.0)
        )?;
        writeln!(f)?;
        self.waiter.write(f, "  ")?;
        for h in &self.holders {
            writeln!(f, "  held by:")?;
            h.write(f, "    ")?;
        }
        Ok(())
    }
}

/// A thread requested, with a blocking or timed operation, a non-recursive
/// lock it already holds: it waits for itself (forever, or until the
/// timeout).
#[derive(Clone, Debug, Serialize)]
pub struct SelfDeadlock {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub tid: u32,
    pub thread: String,
    /// The lock, in the mode it was requested again.
    pub lock: Lock,
    /// Where it was requested again, innermost first.
    pub stack: Vec<Frame>,
    /// Where it was taken first (its call site).
    pub held_stack: Vec<Frame>,
}

/// The finding for a self-deadlock observed as `dep` (`from == to`).
pub fn self_deadlock(
    dep: &crate::model::Dependency,
    resolve: &mut dyn Resolve,
    id: u64,
) -> Finding {
    let mut names = Names {
        resolve,
        locks: HashMap::new(),
        comms: HashMap::new(),
    };
    let lock = names.lock(dep.to, dep.to_kind);
    let comm = names.comm(dep.pid);
    Finding::SelfDeadlock(SelfDeadlock {
        id,
        pid: dep.pid,
        comm,
        tid: dep.tid,
        thread: dep.thread.clone(),
        lock,
        stack: names.resolve.frames(dep.pid, &dep.stack, true),
        held_stack: names.resolve.frames(dep.pid, &[dep.held_callsite], false),
    })
}

impl fmt::Display for SelfDeadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lock = self.lock.label();
        writeln!(
            f,
            "WARNING: self-deadlock: thread {} [{}] of {} [{}] requested {lock} ({} {:#x}), which it already holds",
            self.thread, self.tid, self.comm, self.pid, self.lock.kind, self.lock.addr
        )?;
        writeln!(f)?;
        writeln!(f, "     {lock} was taken at:")?;
        write_stack(f, "       ", &self.held_stack)?;
        writeln!(f, "     {lock} requested again at:")?;
        write_stack(f, "       ", &self.stack)
    }
}

/// A cycle in the lock-order graph: a potential deadlock.
#[derive(Clone, Debug, Serialize)]
pub struct Inversion {
    pub id: u64,
    /// The process of the cycle (of its first edge if it spans processes).
    pub pid: u32,
    pub comm: String,
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
    pub level: &'static str,
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
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub from: Lock,
    pub to: Lock,
    pub pid: u32,
    pub tid: u32,
    /// The process's name.
    pub comm: String,
    /// The thread's name.
    pub thread: String,
    /// Where `to` was requested, innermost first.
    pub stack: Vec<Frame>,
    /// Where `from` was taken (its call site).
    pub held_stack: Vec<Frame>,
    /// The Python frames of the request (innermost first), when the thread
    /// ran Python code: what `stack`'s interpreter frames were running.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub python_stack: Vec<PyFrame>,
}

/// Caches names so that each lock and process is resolved once per finding.
struct Names<'a> {
    resolve: &'a mut dyn Resolve,
    locks: HashMap<LockId, Option<String>>,
    comms: HashMap<u32, String>,
}

impl Names<'_> {
    fn lock(&mut self, id: LockId, kind: LockKind) -> Lock {
        let resolve = &mut *self.resolve;
        let name = self
            .locks
            .entry(id)
            .or_insert_with(|| resolve.lock_name(id.pid, id.addr))
            .clone();
        let shared = self.resolve.shared_identity(id.pid, id.addr);
        Lock {
            addr: id.addr,
            kind: kind_name(kind),
            name,
            shared,
            pid: id.pid,
        }
    }

    fn comm(&mut self, pid: u32) -> String {
        let resolve = &mut *self.resolve;
        self.comms
            .entry(pid)
            .or_insert_with(|| resolve.process_name(pid))
            .clone()
    }
}

/// The finding for `cycle`, symbolized with `resolve`.
pub fn inversion(cycle: &Cycle, resolve: &mut dyn Resolve, id: u64) -> Finding {
    let mut names = Names {
        resolve,
        locks: HashMap::new(),
        comms: HashMap::new(),
    };
    let locks = cycle
        .edges
        .iter()
        .map(|d| names.lock(d.from, d.from_kind))
        .collect();
    let edges: Vec<Edge> = cycle
        .edges
        .iter()
        .map(|d| Edge {
            from: names.lock(d.from, d.from_kind),
            to: names.lock(d.to, d.to_kind),
            pid: d.pid,
            tid: d.tid,
            comm: names.comm(d.pid),
            thread: d.thread.clone(),
            stack: names.resolve.frames(d.pid, &d.stack, true),
            held_stack: names.resolve.frames(d.pid, &[d.held_callsite], false),
            python_stack: d.python.clone(),
        })
        .collect();
    let (pid, comm) = match edges.first() {
        Some(e) => (e.pid, e.comm.clone()),
        None => (0, String::new()),
    };
    let gate = cycle.gate.map(|g| names.lock(g, LockKind::Mutex));
    Finding::LockOrderInversion(Inversion {
        id,
        pid,
        comm,
        locks,
        cycle: edges,
        guarded: gate.is_some(),
        gate,
        level: "instance",
        classes: Vec::new(),
    })
}

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

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
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

/// `lib.so.6` for `/usr/lib/x86_64-linux-gnu/lib.so.6`.
fn basename(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}

/// One frame: `0x55d0c0a00123  worker_ab+0x1a  /src/ab_ba.c:22  (ab_ba)`.
fn write_frame(f: &mut fmt::Formatter<'_>, indent: &str, i: usize, fr: &Frame) -> fmt::Result {
    let addr = format!("{:#x}", fr.addr);
    write!(f, "{indent}#{i:<2} {addr:<14}  ")?;
    match (&fr.function, fr.offset) {
        (Some(func), Some(off)) if off != 0 => write!(f, "{func}+{off:#x}")?,
        (Some(func), _) => write!(f, "{func}")?,
        (None, _) => write!(f, "??")?,
    }
    match (&fr.file, fr.line) {
        (Some(file), Some(line)) => write!(f, "  {file}:{line}")?,
        (Some(file), None) => write!(f, "  {file}")?,
        _ => {}
    }
    match (&fr.module, &fr.function, fr.offset) {
        (Some(module), None, Some(off)) => write!(f, "  ({}+{off:#x})", basename(module))?,
        (Some(module), _, _) => write!(f, "  ({})", basename(module))?,
        (None, _, _) => {}
    }
    writeln!(f)
}

fn write_python_stack(f: &mut fmt::Formatter<'_>, indent: &str, frames: &[PyFrame]) -> fmt::Result {
    for (i, fr) in frames.iter().enumerate() {
        writeln!(
            f,
            "{indent}#{i:<2} {}  {}:{}",
            fr.function, fr.file, fr.line
        )?;
    }
    Ok(())
}

fn write_stack(f: &mut fmt::Formatter<'_>, indent: &str, frames: &[Frame]) -> fmt::Result {
    if frames.is_empty() {
        return writeln!(f, "{indent}(no stack)");
    }
    for (i, fr) in frames.iter().enumerate() {
        write_frame(f, indent, i, fr)?;
    }
    Ok(())
}

impl fmt::Display for Inversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Processes of the cycle, in order of appearance.
        let mut procs: Vec<(u32, &str)> = Vec::new();
        for e in &self.cycle {
            if !procs.iter().any(|(p, _)| *p == e.pid) {
                procs.push((e.pid, &e.comm));
            }
        }
        if procs.is_empty() {
            procs.push((self.pid, &self.comm));
        }
        let where_: Vec<String> = procs.iter().map(|(p, c)| format!("{c} [{p}]")).collect();
        match &self.gate {
            Some(gate) => writeln!(
                f,
                "NOTE: guarded lock-order inversion between {} in {}: every dependency was made \
                 while holding {}, so it cannot deadlock",
                plural(self.locks.len() as u64, "lock", "locks"),
                where_.join(", "),
                gate.label()
            )?,
            None if self.level == "class" => writeln!(
                f,
                "WARNING: potential deadlock: lock-order inversion between {} in {}",
                plural(self.locks.len() as u64, "lock class", "lock classes"),
                where_.join(", ")
            )?,
            None => writeln!(
                f,
                "WARNING: potential deadlock: lock-order inversion between {} in {}",
                plural(self.locks.len() as u64, "lock", "locks"),
                where_.join(", ")
            )?,
        }
        writeln!(f)?;

        if self.level == "class" {
            let first = self.classes.first().cloned().unwrap_or_default();
            writeln!(
                f,
                "  lock classes: {} -> {first}",
                self.classes.join(" -> ")
            )?;
        }
        let chain: Vec<String> = self
            .locks
            .iter()
            .map(|l| {
                let label = match &l.name {
                    Some(name) => format!("{name} ({} {:#x})", l.kind, l.addr),
                    None => format!("{} {:#x}", l.kind, l.addr),
                };
                match &l.shared {
                    Some(id) => format!("{label} [shared: {id}]"),
                    None => label,
                }
            })
            .collect();
        let first = self.locks.first().map(Lock::label).unwrap_or_default();
        writeln!(f, "  {} -> {first}", chain.join(" -> "))?;
        writeln!(f)?;

        let multi = procs.len() > 1;
        for (i, e) in self.cycle.iter().enumerate() {
            let (from, to) = (e.from.label(), e.to.label());
            write!(f, "  #{} thread {} [{}]", i + 1, e.thread, e.tid)?;
            if multi {
                write!(f, " of {} [{}]", e.comm, e.pid)?;
            }
            writeln!(f, " requested {to} while holding {from}")?;
            if e.python_stack.is_empty() {
                writeln!(f, "     {from} was taken at:")?;
                write_stack(f, "       ", &e.held_stack)?;
                writeln!(f, "     {to} requested at:")?;
                write_stack(f, "       ", &e.stack)?;
            } else {
                // The interpreter's native frames say nothing to a Python
                // programmer; the JSON report keeps them.
                writeln!(f, "     {to} requested at (Python):")?;
                write_python_stack(f, "       ", &e.python_stack)?;
                if let Some(top) = e.stack.first() {
                    write_frame(f, "       ", 0, top)?;
                    writeln!(
                        f,
                        "       ({} native frames in --format json)",
                        e.stack.len()
                    )?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::LockOrderInversion(inv) => inv.fmt(f),
            Finding::SelfDeadlock(d) => d.fmt(f),
            Finding::Deadlock(d) => d.fmt(f),
            Finding::LockWaitTimeout(t) => t.fmt(f),
            Finding::SameClassNesting(n) => n.fmt(f),
            Finding::BlockedThread(t) => {
                writeln!(f, "BLOCKED:")?;
                t.write(f, "  ")
            }
        }
    }
}

/// Output format of a [`Reporter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable reports.
    #[default]
    Text,
    /// JSON Lines: one object per line.
    Json,
}

/// Writes findings and the summary to `out`, flushing after each record so
/// that findings appear while tracing goes on.
pub struct Reporter {
    format: Format,
    out: Box<dyn Write + Send>,
}

impl Reporter {
    pub fn new(format: Format, out: Box<dyn Write + Send>) -> Self {
        Self { format, out }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn finding(&mut self, f: &Finding) -> io::Result<()> {
        match self.format {
            // The text of a finding ends with a newline; one more separates
            // findings.
            Format::Text => writeln!(self.out, "{f}")?,
            Format::Json => self.json(f)?,
        }
        self.out.flush()
    }

    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        match self.format {
            Format::Text => writeln!(self.out, "{s}")?,
            Format::Json => self.json(s)?,
        }
        self.out.flush()
    }

    fn json<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        // Compact JSON escapes newlines in strings: one record, one line.
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::LockOrderGraph;
    use crate::model::Dependency;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

    const PID: u32 = 4242;
    const MUTEX_A: u64 = 0x55d0c0a01040;
    const MUTEX_B: u64 = 0x55d0c0a01080;

    /// Symbolization from tables; unknown addresses give bare frames.
    #[derive(Default)]
    struct FakeResolve {
        frames: HashMap<(u32, u64), Frame>,
        locks: HashMap<(u32, u64), String>,
        procs: HashMap<u32, String>,
        /// Every `frames` call: (pid, addrs, first_is_ip).
        calls: Vec<(u32, Vec<u64>, bool)>,
    }

    impl FakeResolve {
        fn frame(
            mut self,
            pid: u32,
            addr: u64,
            func: &str,
            file: Option<(&str, u32)>,
            module: &str,
        ) -> Self {
            let frame = Frame {
                addr,
                module: Some(module.into()),
                function: Some(func.into()),
                offset: Some(if file.is_some() { 0x1a } else { 0 }),
                file: file.map(|(f, _)| f.into()),
                line: file.map(|(_, l)| l),
            };
            self.frames.insert((pid, addr), frame);
            self
        }
    }

    impl Resolve for FakeResolve {
        fn frames(&mut self, pid: u32, addrs: &[u64], first_is_ip: bool) -> Vec<Frame> {
            self.calls.push((pid, addrs.to_vec(), first_is_ip));
            addrs
                .iter()
                .map(|&addr| {
                    self.frames.get(&(pid, addr)).cloned().unwrap_or(Frame {
                        addr,
                        ..Frame::default()
                    })
                })
                .collect()
        }
        fn lock_name(&mut self, pid: u32, addr: u64) -> Option<String> {
            self.locks.get(&(pid, addr)).cloned()
        }
        fn process_name(&mut self, pid: u32) -> String {
            self.procs.get(&pid).cloned().unwrap_or_else(|| "?".into())
        }
    }

    fn dep(
        pid: u32,
        tid: u32,
        thread: &str,
        from: u64,
        to: u64,
        held: u64,
        stack: &[u64],
    ) -> Dependency {
        Dependency {
            from: LockId { pid, addr: from },
            to: LockId { pid, addr: to },
            from_kind: LockKind::Mutex,
            to_kind: LockKind::Mutex,
            pid,
            tid,
            thread: thread.into(),
            timestamp_ns: 1,
            held_callsite: held,
            stack: stack.to_vec(),
            gates: vec![],
            gate_key: 0,
            python: vec![],
            handoff: false,
        }
    }

    const LOCK_IP: u64 = 0x7f00_0008_a0f0;
    const START_THREAD: u64 = 0x7f00_0008_9134;

    /// The ab_ba fixture: worker1 takes a then b, worker2 b then a.
    fn ab_ba() -> (Cycle, FakeResolve) {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let bin = "/src/tests/fixtures/ab_ba";
        let src = "/src/tests/fixtures/ab_ba.c";
        let mut r = FakeResolve::default()
            .frame(PID, LOCK_IP, "pthread_mutex_lock", None, libc)
            .frame(PID, START_THREAD, "start_thread", None, libc)
            .frame(PID, 0x55d0_c0a0_0100, "worker_ab", Some((src, 21)), bin)
            .frame(PID, 0x55d0_c0a0_0110, "worker_ab", Some((src, 22)), bin)
            .frame(PID, 0x55d0_c0a0_0200, "worker_ba", Some((src, 31)), bin)
            .frame(PID, 0x55d0_c0a0_0210, "worker_ba", Some((src, 32)), bin);
        r.locks.insert((PID, MUTEX_A), "mutex_a".into());
        r.locks.insert((PID, MUTEX_B), "mutex_b".into());
        r.procs.insert(PID, "ab_ba".into());

        let mut g = LockOrderGraph::new();
        let stack_ab = [LOCK_IP, 0x55d0_c0a0_0110, START_THREAD];
        let stack_ba = [LOCK_IP, 0x55d0_c0a0_0210, START_THREAD];
        assert!(g
            .insert(dep(
                PID,
                PID + 1,
                "worker1",
                MUTEX_A,
                MUTEX_B,
                0x55d0_c0a0_0100,
                &stack_ab
            ))
            .is_empty());
        let mut cycles = g.insert(dep(
            PID,
            PID + 2,
            "worker2",
            MUTEX_B,
            MUTEX_A,
            0x55d0_c0a0_0200,
            &stack_ba,
        ));
        assert_eq!(cycles.len(), 1);
        (cycles.remove(0), r)
    }

    /// A `Write` whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn summary() -> Summary {
        Summary {
            events: 1234,
            dependencies: 2,
            locks: 2,
            cycles: 1,
            lost_events: 0,
            truncated_cycle_searches: 0,
            counters: counters(Counter::ALL.iter().map(|&c| {
                let v = match c {
                    Counter::Acquire => 5000,
                    Counter::HeldOverflow => 3,
                    _ => 0,
                };
                (c, v)
            })),
            contention: vec![],
            forgotten_processes: 0,
            forgotten_dependencies: 0,
            library_same_class_nesting: 0,
            handoff_cycles: 0,
            probed_files: vec![],
            duration_s: 2.5,
        }
    }

    #[test]
    fn inversion_resolves_stacks() {
        let (cycle, mut r) = ab_ba();
        let finding = inversion(&cycle, &mut r, 7);
        assert_eq!(finding.id(), 7);
        // Request stacks start at an instruction pointer, held call sites
        // are return addresses.
        assert_eq!(r.calls.len(), 4);
        assert!(r.calls.iter().all(|(pid, _, _)| *pid == PID));
        assert_eq!(
            r.calls
                .iter()
                .filter(|(_, a, ip)| *ip && a.len() == 3)
                .count(),
            2
        );
        assert_eq!(
            r.calls
                .iter()
                .filter(|(_, a, ip)| !*ip && a.len() == 1)
                .count(),
            2
        );
    }

    #[test]
    fn json_has_every_field() {
        let (cycle, mut r) = ab_ba();
        let finding = inversion(&cycle, &mut r, 1);
        let out = Shared::default();
        let mut rep = Reporter::new(Format::Json, Box::new(out.clone()));
        rep.finding(&finding).unwrap();
        rep.summary(&summary()).unwrap();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(text.ends_with('\n'));

        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["type"], "lock_order_inversion");
        assert_eq!(v["id"], 1);
        assert_eq!(v["pid"], PID);
        assert_eq!(v["comm"], "ab_ba");
        let lock_a =
            serde_json::json!({"addr": "0x55d0c0a01040", "kind": "mutex", "name": "mutex_a"});
        let lock_b =
            serde_json::json!({"addr": "0x55d0c0a01080", "kind": "mutex", "name": "mutex_b"});
        assert_eq!(
            v["locks"],
            Value::Array(vec![lock_a.clone(), lock_b.clone()])
        );
        let edges = v["cycle"].as_array().unwrap();
        assert_eq!(edges.len(), 2);
        for (e, from, to, tid, thread) in [
            (&edges[0], &lock_a, &lock_b, PID + 1, "worker1"),
            (&edges[1], &lock_b, &lock_a, PID + 2, "worker2"),
        ] {
            let keys: Vec<&str> = e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            for k in [
                "from",
                "to",
                "pid",
                "tid",
                "comm",
                "thread",
                "stack",
                "held_stack",
            ] {
                assert!(keys.contains(&k), "{k} missing in {e}");
            }
            assert_eq!(&e["from"], from);
            assert_eq!(&e["to"], to);
            assert_eq!(e["pid"], PID);
            assert_eq!(e["tid"], tid);
            assert_eq!(e["comm"], "ab_ba");
            assert_eq!(e["thread"], thread);
            let stack = e["stack"].as_array().unwrap();
            assert_eq!(stack.len(), 3);
            assert_eq!(stack[0]["function"], "pthread_mutex_lock");
            assert_eq!(stack[2]["function"], "start_thread");
            let held = e["held_stack"].as_array().unwrap();
            assert_eq!(held.len(), 1);
            for fr in stack.iter().chain(held) {
                for k in ["addr", "module", "function", "offset", "file", "line"] {
                    assert!(fr.get(k).is_some(), "{k} missing in {fr}");
                }
                assert!(fr["addr"].as_str().unwrap().starts_with("0x"));
            }
        }
        assert_eq!(edges[0]["stack"][1]["file"], "/src/tests/fixtures/ab_ba.c");
        assert_eq!(edges[0]["stack"][1]["line"], 22);
        assert_eq!(edges[0]["held_stack"][0]["line"], 21);

        let s: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(s["type"], "summary");
        for (k, n) in [
            ("events", 1234),
            ("dependencies", 2),
            ("locks", 2),
            ("cycles", 1),
            ("lost_events", 0),
            ("truncated_cycle_searches", 0),
        ] {
            assert_eq!(s[k], n, "{k}");
        }
        assert_eq!(s["duration_s"], 2.5);
        assert_eq!(s["counters"]["held_overflow"], 3);
        assert_eq!(s["counters"].as_object().unwrap().len(), Counter::ALL.len());
    }

    #[test]
    fn json_unnamed_lock_is_null() {
        let (cycle, mut r) = ab_ba();
        r.locks.clear();
        let Finding::LockOrderInversion(inv) = inversion(&cycle, &mut r, 1) else {
            unreachable!("an inversion")
        };
        let v = serde_json::to_value(&inv.locks[0]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"addr": "0x55d0c0a01040", "kind": "mutex", "name": null})
        );
        let text = inv.to_string();
        assert!(
            text.contains("mutex 0x55d0c0a01040 -> mutex 0x55d0c0a01080 -> 0x55d0c0a01040"),
            "{text}"
        );
    }

    #[test]
    fn text_rendering() {
        let (cycle, mut r) = ab_ba();
        let finding = inversion(&cycle, &mut r, 1);
        let out = Shared::default();
        let mut rep = Reporter::new(Format::Text, Box::new(out.clone()));
        rep.finding(&finding).unwrap();
        rep.summary(&summary()).unwrap();
        let text = out.text();
        for needle in [
            "WARNING: potential deadlock: lock-order inversion between 2 locks in ab_ba [4242]\n",
            "  mutex_a (mutex 0x55d0c0a01040) -> mutex_b (mutex 0x55d0c0a01080) -> mutex_a\n",
            "  #1 thread worker1 [4243] requested mutex_b while holding mutex_a\n",
            "  #2 thread worker2 [4244] requested mutex_a while holding mutex_b\n",
            "     mutex_a was taken at:\n       #0  0x55d0c0a00100  worker_ab+0x1a  /src/tests/fixtures/ab_ba.c:21  (ab_ba)\n",
            "     mutex_b requested at:\n       #0  0x7f000008a0f0  pthread_mutex_lock  (libc.so.6)\n",
            "       #1  0x55d0c0a00110  worker_ab+0x1a  /src/tests/fixtures/ab_ba.c:22  (ab_ba)\n",
            "       #2  0x7f0000089134  start_thread  (libc.so.6)\n",
            "worker_ba+0x1a  /src/tests/fixtures/ab_ba.c:32",
            "\n\nlocktrace: 1234 events, 2 dependencies, 2 locks, 1 cycle, 0 lost events in 2.5s; acquisitions=5000, held_overflow=3\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("lost_events="));
    }

    #[test]
    fn text_frames_without_symbols() {
        let (cycle, _) = ab_ba();
        let mut r = FakeResolve::default();
        r.frames.insert(
            (PID, LOCK_IP),
            Frame {
                addr: LOCK_IP,
                module: Some("/lib/libc.so.6".into()),
                offset: Some(0x8a0f0),
                ..Frame::default()
            },
        );
        let text = inversion(&cycle, &mut r, 1).to_string();
        assert!(
            text.contains("#0  0x7f000008a0f0  ??  (libc.so.6+0x8a0f0)\n"),
            "{text}"
        );
        assert!(text.contains("#2  0x7f0000089134  ??\n"), "{text}");
        assert!(text.contains("between 2 locks in ? [4242]"), "{text}");
    }

    #[test]
    fn text_cross_process_cycle() {
        let (mut cycle, mut r) = ab_ba();
        cycle.edges[1].pid = 77;
        r.procs.insert(77, "other".into());
        let Finding::LockOrderInversion(inv) = inversion(&cycle, &mut r, 1) else {
            unreachable!("an inversion")
        };
        assert_eq!((inv.pid, inv.comm.as_str()), (PID, "ab_ba"));
        let text = inv.to_string();
        assert!(text.contains("in ab_ba [4242], other [77]\n"), "{text}");
        assert!(
            text.contains("thread worker2 [4244] of other [77] requested"),
            "{text}"
        );
    }

    #[test]
    fn summary_text() {
        let mut s = Summary {
            events: 1,
            dependencies: 1,
            locks: 2,
            cycles: 0,
            lost_events: 1,
            truncated_cycle_searches: 2,
            counters: counters([(Counter::LostEvents, 1), (Counter::StackTruncated, 0)]),
            contention: vec![],
            forgotten_processes: 0,
            forgotten_dependencies: 0,
            library_same_class_nesting: 0,
            handoff_cycles: 0,
            probed_files: vec![],
            duration_s: 0.04,
        };
        assert_eq!(
            s.to_string(),
            "locktrace: 1 event, 1 dependency, 2 locks, 0 cycles, 1 lost event in 0.0s; \
             2 truncated cycle searches (some cycles may be unreported)"
        );
        s.truncated_cycle_searches = 0;
        s.counters.insert("future_counter".into(), 9);
        assert!(s
            .to_string()
            .ends_with("lost event in 0.0s; future_counter=9"));
    }
}
