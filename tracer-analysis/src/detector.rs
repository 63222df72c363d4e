//! The detector: decoded, enriched events in, verdicts out. It keeps the
//! instance and class lock-order graphs, the lock classes and identities and
//! the wait-for watchdog, and applies every rule; what it must know of the
//! host it asks through [`Host`]. Findings are built and symbolized from its
//! verdicts afterwards (the collector's `report`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracer_common::{chain_key_of, chain_key_without};

use crate::classes::Classes;
use crate::graph::LockOrderGraph;
use crate::host::{Host, InitStack};
use crate::identity::Identities;
use crate::limits;
use crate::model::{
    ClassId, ClassKey, Cycle, Dependency, Level, LockIdentity, LockInstance, LockKind, PyFrame,
    Request,
};
use crate::recency::Recency;
use crate::waits::{BlockedNow, Holder, WaitScan, WaitVerdict, Waiting, Watchdog};

/// What the kernel side saw, decoded and enriched (stacks unwound, Python
/// frames resolved).
#[derive(Clone, Debug)]
pub enum Event {
    /// A blocking request that made dependencies new to the kernel side.
    Request(Request),
    /// A request for a lock the thread holds (`from[0]`), which can never
    /// be granted.
    SelfDeadlock(Request),
    /// The memory at `lock` became a new lock, set up at `site`.
    LockInit {
        lock: LockInstance,
        site: u64,
        stack: Option<InitStack>,
    },
    /// The lock at `lock` was destroyed: its memory may become another lock.
    LockDestroy { lock: LockInstance },
    /// A traced process exited.
    ProcessExit { pid: u32 },
    /// A traced process exec'd a new program: a new address space, whose
    /// locks are not the previous image's even at the same addresses (a
    /// non-PIE program's globals). Classes are unaffected: the old image's
    /// class edges stay, named by its binary and symbols.
    ProcessExec { pid: u32 },
    /// Heap memory `[start, end)` of process `pid` was freed: the locks in
    /// it are gone, destroyed or not (`--watch-free`).
    MemoryFreed { pid: u32, start: u64, end: u64 },
}

/// Lock instances one process may have in the instance graph: a program
/// that makes locks without end (never destroying them) cannot grow the
/// collector without bound (see [`crate::limits`]).
pub const MAX_LOCKS_PER_PROCESS: usize = limits::LOCKS.per_process;

/// The class graph, for a picture of it: classes by display name, and
/// their dependencies by index into `classes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassGraph {
    pub classes: Vec<String>,
    pub dependencies: Vec<ClassDependency>,
    /// Dependencies beyond the cut, not listed.
    pub omitted_dependencies: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassDependency {
    pub from: usize,
    pub to: usize,
    /// Distinct occurrences seen (per process and set of held locks).
    pub seen: u64,
    /// The process and thread of the occurrence kept.
    pub pid: u32,
    pub thread: String,
}

/// A cycle reported as a potential deadlock (or, guarded, as a note).
#[derive(Clone, Debug)]
pub struct Inversion {
    pub id: u64,
    /// The instance evidence of each hop.
    pub edges: Vec<Dependency>,
    /// A lock held at every occurrence of every edge: it cannot deadlock.
    pub gate: Option<LockInstance>,
    pub level: Level,
    /// The classes of the cycle's locks, for a class-level cycle.
    pub classes: Vec<String>,
    /// For each edge restored from an earlier run's state (see
    /// [`Detector::restore_class_dependency`]), the tag it was restored
    /// with; `None` for an edge seen in this run. Empty when none is.
    pub restored: Vec<Option<u64>>,
}

/// A class dependency new to the class graph, between two classes that
/// outlive the run (see [`ClassKey::outlives_the_run`]): what an agent
/// saves so that a restart keeps the lock order learned.
#[derive(Clone, Debug)]
pub struct Learned {
    pub from: ClassKey,
    pub to: ClassKey,
    /// The occurrence that taught it.
    pub dep: Dependency,
}

/// Locks remembered as having lost dependencies to eviction, at most.
const MAX_EVICTED_KEPT: usize = 1_000_000;

/// New class dependencies kept for [`Detector::take_learned`] at most;
/// beyond, the newest are not kept (a caller that never takes them).
const MAX_LEARNED_WAITING: usize = 10_000;

/// What the detector concluded; each has its finding's id.
#[derive(Clone, Debug)]
pub enum Verdict {
    Inversion(Inversion),
    /// Two locks of one class, one taken while holding the other. A note
    /// while every such nesting of the class went one address order (an
    /// array locked in index order cannot deadlock); a warning once both
    /// orders were seen (`opposite`: the first nesting the other way, as
    /// two accounts in a transfer).
    SameClassNesting {
        id: u64,
        dep: Dependency,
        class: String,
        opposite: Option<Box<Dependency>>,
    },
    /// A thread requested a lock it holds (`dep.from == dep.to`).
    SelfDeadlock {
        id: u64,
        dep: Dependency,
    },
    Deadlock {
        id: u64,
        threads: Vec<Waiting>,
        /// The inversion reported earlier for the same locks.
        inversion: Option<u64>,
    },
    Hang {
        id: u64,
        waiting: Waiting,
        holders: Vec<Holder>,
    },
}

impl Verdict {
    pub fn id(&self) -> u64 {
        match self {
            Verdict::Inversion(i) => i.id,
            Verdict::SameClassNesting { id, .. }
            | Verdict::SelfDeadlock { id, .. }
            | Verdict::Deadlock { id, .. }
            | Verdict::Hang { id, .. } => *id,
        }
    }

    /// Whether it warns (counts for `--exit-code`): all but notes (guarded
    /// cycles, same-class nesting in one order).
    pub fn is_alarm(&self) -> bool {
        !self.is_note()
    }

    pub fn is_note(&self) -> bool {
        matches!(
            self,
            Verdict::Inversion(Inversion { gate: Some(_), .. })
                | Verdict::SameClassNesting { opposite: None, .. }
        )
    }
}

/// What the detector holds and did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lock instances and dependencies ever added to the instance graph.
    pub locks: u64,
    pub dependencies: u64,
    /// Instance cycles found.
    pub cycles: u64,
    pub truncated_cycle_searches: u64,
    /// Cycles of wake-up hand-offs only, not reported.
    pub handoff_cycles: u64,
    /// Classes of libraries' own code nested within themselves.
    pub library_same_class_nesting: u64,
    /// Classes of the program nested within themselves in one address
    /// order (noted, not warned).
    pub same_class_notes: u64,
    /// Findings of a shape reported already (the same lock classes: the
    /// same bug in another process or instance), counted, not reported.
    pub repeated_findings: u64,
    /// Findings beyond a process's budget (a storm), counted.
    pub suppressed_findings: u64,
    /// Dependencies not added because the instance graph was full (locks
    /// or dependencies, for the process or in total; see
    /// [`crate::limits`]) and evicting made no room: counted, memory stays
    /// bounded.
    pub dropped_dependencies: u64,
    /// Lock instances evicted from the full instance graph (the coldest
    /// first), and the dependencies that left with them.
    pub evicted_locks: u64,
    pub evicted_dependencies: u64,
    /// Lock instances (by holding mode) and dependencies in the instance
    /// graph now.
    pub graph_locks: u64,
    pub graph_dependencies: u64,
    /// Times a lock's class or init site was not kept (see
    /// [`crate::limits::LOCK_FACTS`]).
    pub lock_facts_not_kept: u64,
    pub forgotten_processes: u64,
    pub forgotten_dependencies: u64,
    pub classes: u64,
}

pub struct Detector {
    instances: LockOrderGraph<LockIdentity>,
    class_graph: LockOrderGraph<ClassId>,
    /// How many distinct dependencies (per process and set of held locks)
    /// each class dependency was seen as.
    class_seen: crate::FastMap<(ClassId, ClassId), u64>,
    classes: Classes,
    identities: Identities,
    /// Same-class nestings by class: the first of each address order.
    same_class: HashMap<ClassId, SameClassOrders>,
    /// Library classes seen nested within themselves.
    library_same_class: HashSet<ClassId>,
    /// The lock sets of reported inversions, to link deadlocks to them.
    inversions: Vec<(BTreeSet<LockInstance>, u64)>,
    watchdog: Watchdog,
    /// Findings numbered so far.
    findings: u64,
    /// Shapes of the findings reported, with their repeats.
    shapes: HashMap<Shape, u64>,
    /// Each process's budget of findings.
    budgets: HashMap<u32, FindingBudget>,
    /// Dependencies that left the graphs, whose kernel dedup entries must go
    /// too (their next occurrence is then sent and judged afresh).
    forgotten: Vec<Dependency>,
    stats: Stats,
    /// The Python frames of requests from threads running no Python code,
    /// shared (most requests), and the stack of requests not unwound.
    no_python: Arc<[PyFrame]>,
    no_stack: Arc<[u64]>,
    /// Thread names, one copy each for the dependencies that keep them.
    thread_names: Names,
    /// The instance graph's bounds: [`limits::LOCKS`] and
    /// [`limits::DEPENDENCIES`] (smaller in tests).
    lock_limit: limits::Limit,
    dependency_limit: limits::Limit,
    /// Class dependencies restored from an earlier run, with their tags,
    /// until seen live.
    restored: crate::FastMap<(ClassId, ClassId), u64>,
    /// The instance graph's locks by last use, for eviction.
    recency: Recency,
    /// Locks that lost dependencies to eviction, while they live: a class
    /// cycle through such a dependency is one the instance graph no longer
    /// sees (bounded: beyond [`MAX_EVICTED_KEPT`], the oldest are
    /// forgotten, and such a cycle goes unreported: lost, never false).
    evicted: HashSet<LockIdentity>,
    evicted_order: std::collections::VecDeque<LockIdentity>,
    /// New lasting class dependencies are kept for [`Self::take_learned`].
    learning: bool,
    learned: Vec<Learned>,
}

impl Detector {
    pub fn new(hang_threshold: Duration) -> Self {
        Detector {
            instances: LockOrderGraph::new(),
            class_graph: LockOrderGraph::new(),
            class_seen: Default::default(),
            classes: Classes::new(),
            identities: Identities::default(),
            same_class: HashMap::new(),
            library_same_class: HashSet::new(),
            inversions: Vec::new(),
            watchdog: Watchdog::new(hang_threshold),
            findings: 0,
            shapes: HashMap::new(),
            budgets: HashMap::new(),
            forgotten: Vec::new(),
            stats: Stats::default(),
            no_python: Arc::new([]),
            no_stack: Arc::new([]),
            thread_names: Names::default(),
            lock_limit: limits::LOCKS,
            dependency_limit: limits::DEPENDENCIES,
            restored: Default::default(),
            recency: Recency::default(),
            evicted: HashSet::new(),
            evicted_order: Default::default(),
            learning: false,
            learned: Vec::new(),
        }
    }

    /// From now on, keeps each new class dependency between classes that
    /// outlive the run for [`Self::take_learned`].
    pub fn learn_class_dependencies(&mut self) {
        self.learning = true;
    }

    /// The class dependencies learned since the last call.
    pub fn take_learned(&mut self) -> Vec<Learned> {
        std::mem::take(&mut self.learned)
    }

    /// Adds `from -> to` to the class graph as an earlier run learned it,
    /// with a stand-in occurrence (no process of this run made it), named
    /// `tag` in the verdicts whose cycles go through it. The cycles it
    /// closes with other restored dependencies are not reported: the
    /// earlier run judged them. A restored dependency seen live takes the
    /// live occurrence as its evidence.
    pub fn restore_class_dependency(
        &mut self,
        from: ClassKey,
        to: ClassKey,
        kinds: (LockKind, LockKind),
        tag: u64,
    ) {
        if from == to || !from.outlives_the_run() || !to.outlives_the_run() {
            return;
        }
        let (a, b) = (self.classes.intern(from), self.classes.intern(to));
        if self.class_graph.dependency(a, b).is_some() {
            return;
        }
        let nowhere = LockInstance { pid: 0, addr: 0 };
        let stand_in = Dependency {
            from: nowhere,
            to: nowhere,
            from_kind: kinds.0,
            to_kind: kinds.1,
            pid: 0,
            tid: 0,
            thread: self.thread_names.intern(""),
            timestamp_ns: 0,
            held_stack: Box::new([]),
            stack: self.no_stack.clone(),
            gates: Box::new([]),
            chain_key: 0,
            python: self.no_python.clone(),
            held_python: None,
            handoff: false,
        };
        let _judged_before = self.class_graph.insert(a, b, stand_in);
        self.restored.insert((a, b), tag);
    }

    /// A detector whose instance graph holds at most `locks` and
    /// `dependencies` (tests: the real bounds take long to reach).
    pub fn with_limits(
        hang_threshold: Duration,
        locks: limits::Limit,
        dependencies: limits::Limit,
    ) -> Self {
        Detector {
            lock_limit: locks,
            dependency_limit: dependencies,
            ..Self::new(hang_threshold)
        }
    }

    /// The instance graph holds at most `locks` and `dependencies` from
    /// now on (in all, each process at most its usual share of them):
    /// beyond, the coldest locks are evicted with their dependencies to
    /// make room (the class graph keeps what they taught). Lower than what
    /// it holds, the graph shrinks as new dependencies come.
    pub fn set_limits(&mut self, locks: usize, dependencies: usize) {
        let cap = |usual: limits::Limit, total: usize| limits::Limit {
            per_process: usual.per_process.min(total),
            total,
        };
        self.lock_limit = cap(limits::LOCKS, locks);
        self.dependency_limit = cap(limits::DEPENDENCIES, dependencies);
    }

    /// Waits longer than `threshold` are hangs from the next scan on.
    pub fn set_hang_threshold(&mut self, threshold: Duration) {
        self.watchdog.set_hang_threshold(threshold);
    }

    pub fn on_event(&mut self, event: Event, host: &mut dyn Host) -> Vec<Verdict> {
        match event {
            Event::Request(r) => self.on_request(r, host),
            Event::SelfDeadlock(r) => self.on_self_deadlock(r).into_iter().collect(),
            Event::LockInit { lock, site, stack } => {
                self.classes.note_init(lock, site, stack);
                self.forget_lock(lock);
                Vec::new()
            }
            Event::LockDestroy { lock } => {
                self.lock_gone(lock);
                Vec::new()
            }
            Event::ProcessExit { pid } => {
                self.forget_image(pid);
                self.stats.forgotten_processes += 1;
                self.budgets.remove(&pid);
                Vec::new()
            }
            Event::ProcessExec { pid } => {
                self.forget_image(pid);
                Vec::new()
            }
            Event::MemoryFreed { pid, start, end } => {
                for lock in self.classes.locks_in(pid, start, end) {
                    self.lock_gone(lock);
                }
                Vec::new()
            }
        }
    }

    /// The class graph as it stands: every class with a dependency, and
    /// every dependency between two classes (for `locktrace report
    /// --graph`). At most `max_dependencies` are listed; the rest are
    /// counted.
    pub fn class_graph(&self, max_dependencies: usize) -> ClassGraph {
        let mut graph = ClassGraph::default();
        let mut index: HashMap<ClassId, usize> = HashMap::new();
        let mut deps = self.class_graph.dependencies();
        // The most seen first, so that a cut keeps what matters most.
        let seen = |a: ClassId, b: ClassId| self.class_seen.get(&(a, b)).copied().unwrap_or(1);
        deps.sort_by_key(|&(a, b, _)| std::cmp::Reverse(seen(a, b)));
        for (from, to, dep) in deps {
            if from == to {
                continue;
            }
            if graph.dependencies.len() == max_dependencies {
                graph.omitted_dependencies += 1;
                continue;
            }
            let mut id = |c: ClassId| {
                *index.entry(c).or_insert_with(|| {
                    graph.classes.push(self.classes.key(c).to_string());
                    graph.classes.len() - 1
                })
            };
            let (f, t) = (id(from), id(to));
            graph.dependencies.push(ClassDependency {
                from: f,
                to: t,
                seen: seen(from, to),
                pid: dep.pid,
                thread: dep.thread.to_string(),
            });
        }
        graph
    }

    /// Judges one scan of the wait-for graph.
    pub fn on_waits(&mut self, scan: &WaitScan<'_>) -> Vec<Verdict> {
        let verdicts = self.watchdog.check(scan);
        verdicts
            .into_iter()
            .map(|v| match v {
                WaitVerdict::Deadlock(threads) => {
                    let locks: BTreeSet<LockInstance> = threads
                        .iter()
                        .map(|t| LockInstance {
                            pid: t.waiter.blocked.pid,
                            addr: t.waiter.lock,
                        })
                        .collect();
                    let inversion = self
                        .inversions
                        .iter()
                        .find(|(l, _)| *l == locks)
                        .map(|(_, id)| *id);
                    Verdict::Deadlock {
                        id: self.next_id(),
                        threads,
                        inversion,
                    }
                }
                WaitVerdict::Hang { waiting, holders } => Verdict::Hang {
                    id: self.next_id(),
                    waiting,
                    holders,
                },
            })
            .collect()
    }

    /// What the last scan of the wait-for graph saw blocked.
    pub fn blocked_now(&self) -> BlockedNow {
        self.watchdog.blocked_now()
    }

    /// The name of `lock`'s class for its contention metric: the class it
    /// was given, else the one its init site, Python line or symbol would
    /// give it (not kept: a lock keeps the class its first dependency
    /// gives). None for a lock only its first use would name.
    pub fn class_name(&self, lock: LockInstance, host: &mut dyn Host) -> Option<String> {
        let key = match self.classes.class_of_known(lock) {
            Some(class) => self.classes.key(class).clone(),
            None => self.classes.derived_key(lock, host)?,
        };
        // An unnamed Python lock's key is the lock itself: one label per
        // lock would be unbounded.
        let named = key.is_sound() && !matches!(key, ClassKey::PythonUnnamed(_));
        named.then(|| key.to_string())
    }

    /// Dependencies that left the graphs since the last call: their kernel
    /// dedup entries are to be removed.
    pub fn take_forgotten(&mut self) -> Vec<Dependency> {
        std::mem::take(&mut self.forgotten)
    }

    /// The display name of a lock's class, if it has one yet.
    pub fn stats(&self) -> Stats {
        Stats {
            locks: self.instances.locks_seen(),
            dependencies: self.instances.dependencies_seen(),
            cycles: self.instances.cycle_count() as u64,
            truncated_cycle_searches: self.instances.truncated_searches(),
            handoff_cycles: self.instances.handoff_cycles() + self.stats.handoff_cycles,
            classes: self.classes.class_count() as u64,
            graph_locks: self.instances.lock_count() as u64,
            graph_dependencies: self.instances.dependency_count() as u64,
            lock_facts_not_kept: self.classes.not_kept() + self.identities.not_kept(),
            ..self.stats
        }
    }

    fn next_id(&mut self) -> u64 {
        self.findings += 1;
        self.findings
    }

    /// The shape of a cycle: its lock classes (and whether it is guarded).
    /// The same bug in a hundred prefork workers is one shape.
    fn shape_of(&self, edges: &[Dependency], guarded: bool) -> Shape {
        let mut classes: Vec<ClassId> = edges
            .iter()
            .filter_map(|e| self.classes.class_of_known(e.from))
            .collect();
        classes.sort_unstable();
        Shape::Classes(classes, guarded)
    }

    /// A finding of `shape` in process `pid` is to be reported: its id, or
    /// None when the shape was reported already (a repeat, counted) or the
    /// process spent its budget of findings (a storm, counted).
    fn admit(&mut self, shape: Shape, pid: u32) -> Option<u64> {
        if let Some(repeats) = self.shapes.get_mut(&shape) {
            *repeats += 1;
            self.stats.repeated_findings += 1;
            return None;
        }
        let budget = self
            .budgets
            .entry(pid)
            .or_insert_with(|| FindingBudget::new(Instant::now()));
        if !budget.take(Instant::now()) {
            self.stats.suppressed_findings += 1;
            return None;
        }
        self.shapes.insert(shape, 0);
        Some(self.next_id())
    }

    /// Whether the instance graph may take a dependency of process `pid`
    /// between `a` and `b`: new locks and new edges count against the
    /// process's share and the total ([`limits::LOCKS`],
    /// [`limits::DEPENDENCIES`]).
    fn has_room(&self, pid: u32, a: LockIdentity, b: LockIdentity, to_kind: LockKind) -> bool {
        let g = &self.instances;
        // Room for two new locks and two new edges (an rwlock's write
        // request is an edge to each mode), whatever they are: no need to
        // look.
        let (locks, deps) = (self.lock_limit, self.dependency_limit);
        if locks.admits(g.locks_of(pid), g.lock_count(), 2)
            && deps.admits(g.dependencies_of(pid), g.dependency_count(), 2)
        {
            return true;
        }
        let new_locks = [a, b].into_iter().filter(|&n| !g.contains(n)).count();
        let new_edges = match (g.dependency(a, b), to_kind) {
            (Some(_), _) => 0,
            (None, LockKind::RwlockWrite) => 2,
            (None, _) => 1,
        };
        locks.admits(g.locks_of(pid), g.lock_count(), new_locks)
            && deps.admits(g.dependencies_of(pid), g.dependency_count(), new_edges)
    }

    /// Evicts the coldest locks of the instance graph, with their
    /// dependencies, until a dependency of process `pid` between `a` and
    /// `b` fits: the process's own when its share is what is full (a
    /// process cannot push out another's), anyone's otherwise. Their
    /// dependencies leave the kernel's cache too: taken again, they are
    /// sent and judged afresh. Whether it fits now.
    fn make_room(&mut self, pid: u32, a: LockIdentity, b: LockIdentity, to_kind: LockKind) -> bool {
        loop {
            if self.has_room(pid, a, b, to_kind) {
                return true;
            }
            let g = &self.instances;
            let own_share_full = !self.lock_limit.admits(g.locks_of(pid), 0, 2)
                || !self.dependency_limit.admits(g.dependencies_of(pid), 0, 2);
            let victim = match own_share_full {
                true => self.recency.coldest(Some(pid)),
                false => self.recency.coldest(None),
            };
            let Some(victim) = victim else {
                return false;
            };
            self.recency.remove(victim);
            let removed = self.instances.forget_lock(victim);
            self.stats.evicted_locks += 1;
            self.stats.evicted_dependencies += removed.len() as u64;
            if self.evicted.insert(victim) {
                self.evicted_order.push_back(victim);
                if self.evicted_order.len() > MAX_EVICTED_KEPT {
                    if let Some(old) = self.evicted_order.pop_front() {
                        self.evicted.remove(&old);
                    }
                }
            }
            self.forgotten.extend(removed);
        }
    }

    /// The program image of process `pid` is gone (the process exited, or
    /// exec'd another program): its lock instances leave the instance
    /// graph (their dependencies the kernel's cache too), and its
    /// addresses their classes and shared identities. The class graph keeps
    /// its edges: a class is named by binary and symbol or site, the same
    /// in the next process or image that runs that code.
    fn forget_image(&mut self, pid: u32) {
        let removed = self.instances.forget_process(pid);
        self.recency.remove_process(pid);
        self.evicted
            .retain(|l| !matches!(l, LockIdentity::Private(l) if l.pid == pid));
        self.identities.forget_process(pid);
        self.classes.forget_process(pid);
        self.stats.forgotten_dependencies += removed.len() as u64;
        self.forgotten.extend(removed);
    }

    /// The lock at `lock` is gone (destroyed, or its memory freed): its
    /// class goes with its dependencies.
    fn lock_gone(&mut self, lock: LockInstance) {
        self.classes.forget_lock(lock);
        self.forget_lock(lock);
    }

    /// The memory at `lock` is a new lock from now on: the old lock's
    /// dependencies leave the graph and the kernel's cache, so that the new
    /// lock's are sent and judged afresh.
    fn forget_lock(&mut self, lock: LockInstance) {
        let node = self.identities.of(lock);
        self.identities.forget_lock(lock);
        self.recency.remove(node);
        self.evicted.remove(&node);
        let removed = self.instances.forget_lock(node);
        self.forgotten.extend(removed);
    }

    fn on_request(&mut self, r: Request, host: &mut dyn Host) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        let all_held = chain_key_of(&r.held);
        let instance = |addr| LockInstance { pid: r.pid, addr };
        // One copy of the request's evidence, shared by its dependencies.
        let thread = self.thread_names.intern(&r.thread);
        let stack: Arc<[u64]> = if r.stack.is_empty() {
            self.no_stack.clone()
        } else {
            r.stack.into()
        };
        let python: Arc<[PyFrame]> = if r.python.is_empty() {
            self.no_python.clone()
        } else {
            r.python.into()
        };
        // The requested lock's class, found with the first dependency's.
        let mut to_class = None;
        for from in &r.from {
            let mut gates: Vec<LockInstance> = r
                .held
                .iter()
                .filter(|&&a| a != from.addr && a != r.to.addr)
                .map(|&a| instance(a))
                .collect();
            gates.sort_unstable();
            gates.dedup();
            let gates = gates.into_boxed_slice();
            let dep = Dependency {
                from: instance(from.addr),
                to: instance(r.to.addr),
                from_kind: from.kind,
                to_kind: r.to.kind,
                pid: r.pid,
                tid: r.tid,
                thread: thread.clone(),
                timestamp_ns: r.timestamp_ns,
                held_stack: from.taken_at.as_slice().into(),
                held_python: from.python.clone().map(Box::new),
                stack: stack.clone(),
                gates,
                chain_key: chain_key_without(all_held, from.addr),
                python: python.clone(),
                handoff: r.handoff,
            };
            self.note_shared(dep.from, host);
            let from_class = self.class_of(dep.from, from.site(), host);
            let to_class = match to_class {
                Some(class) => class,
                None => {
                    self.note_shared(dep.to, host);
                    *to_class.insert(self.class_of(dep.to, r.to.site(), host))
                }
            };
            let (a, b) = (self.identities.of(dep.from), self.identities.of(dep.to));
            let room =
                self.has_room(r.pid, a, b, dep.to_kind) || self.make_room(r.pid, a, b, dep.to_kind);
            verdicts.extend(self.on_class_dependency(from_class, to_class, &dep, room));
            if !room {
                self.stats.dropped_dependencies += 1;
                continue;
            }
            self.recency.touch(a);
            self.recency.touch(b);
            for cycle in self.instances.insert(a, b, dep) {
                if is_handoff_cycle(&cycle, host) {
                    self.stats.handoff_cycles += 1;
                    continue;
                }
                let locks: BTreeSet<LockInstance> = cycle.locks().into_iter().collect();
                let shape = self.shape_of(&cycle.edges, cycle.gate.is_some());
                let Some(id) = self.admit(shape, r.pid) else {
                    continue;
                };
                self.inversions.push((locks, id));
                verdicts.push(Verdict::Inversion(Inversion {
                    id,
                    edges: cycle.edges,
                    gate: cycle.gate,
                    level: Level::Instance,
                    classes: Vec::new(),
                    restored: Vec::new(),
                }));
            }
        }
        verdicts
    }

    fn on_self_deadlock(&mut self, r: Request) -> Option<Verdict> {
        let held = r.from.first()?;
        let lock = LockInstance {
            pid: r.pid,
            addr: r.to.addr,
        };
        let dep = Dependency {
            from: lock,
            to: lock,
            from_kind: held.kind,
            to_kind: r.to.kind,
            pid: r.pid,
            tid: r.tid,
            thread: r.thread.into(),
            timestamp_ns: r.timestamp_ns,
            held_stack: held.taken_at.as_slice().into(),
            held_python: held.python.clone().map(Box::new),
            stack: r.stack.into(),
            gates: Box::new([]),
            chain_key: 0,
            python: r.python.into(),
            handoff: r.handoff,
        };
        Some(Verdict::SelfDeadlock {
            id: self.next_id(),
            dep,
        })
    }

    /// A lock in memory mapped MAP_SHARED is one node for every process
    /// that maps it.
    fn note_shared(&mut self, lock: LockInstance, host: &mut dyn Host) {
        if let Some(shared) = host.shared_lock(lock) {
            self.identities.note_shared(lock, shared);
        }
    }

    fn class_of(&mut self, lock: LockInstance, first_site: u64, host: &mut dyn Host) -> ClassId {
        let shared = self.identities.shared(self.identities.of(lock)).cloned();
        self.classes
            .class_of(lock, first_site, shared.as_ref(), host)
    }

    /// The class view of an instance dependency: same-class nesting, or an
    /// edge of the class graph whose cycles no instance cycle covers (an
    /// inversion split across processes or instances, or one whose
    /// dependencies the instance graph, at its cap, did not all keep).
    /// `kept`: the instance graph takes `dep`.
    fn on_class_dependency(
        &mut self,
        from: ClassId,
        to: ClassId,
        dep: &Dependency,
        kept: bool,
    ) -> Vec<Verdict> {
        if !self.classes.key(from).is_sound() || !self.classes.key(to).is_sound() {
            return Vec::new();
        }
        if from == to {
            return self.on_same_class(from, dep).into_iter().collect();
        }
        let seen = self.class_seen.entry((from, to)).or_default();
        *seen += 1;
        let first = *seen == 1;
        if self.restored.remove(&(from, to)).is_some() {
            self.class_graph.replace_evidence(from, to, dep);
        }
        if first
            && self.learning
            && self.learned.len() < MAX_LEARNED_WAITING
            && self.classes.key(from).outlives_the_run()
            && self.classes.key(to).outlives_the_run()
        {
            self.learned.push(Learned {
                from: self.classes.key(from).clone(),
                to: self.classes.key(to).clone(),
                dep: dep.clone(),
            });
        }
        let mut verdicts = Vec::new();
        for cycle in self.class_graph.insert(from, to, dep.clone()) {
            let n = cycle.edges.len();
            // One bug, one finding: a cycle of instances is reported by the
            // instance graph. At each lock of the cycle, the two edges meet
            // on one instance: the same lock, or the same shared lock (whose
            // class is its identity; the instance graph may have forgotten
            // an exited worker's mapping of it).
            let closes = (0..n).all(|i| {
                let next = (i + 1) % n;
                matches!(
                    self.classes.key(cycle.nodes[next]),
                    crate::model::ClassKey::Shared(_)
                ) || self.identities.of(cycle.edges[i].to)
                    == self.identities.of(cycle.edges[next].from)
            });
            // Unless the instance graph, at its cap, does not hold the
            // whole cycle: it did not take `dep`, or evicted another of its
            // edges, of live locks (not destroyed since): then no instance
            // cycle reports it, and the class level does. An edge missing
            // otherwise (its lock destroyed, its memory another lock now)
            // is no cycle of instances: not reported, as before.
            let current = |e: &Dependency| {
                (e.from, e.to, e.pid, e.tid) == (dep.from, dep.to, dep.pid, dep.tid)
            };
            let others = || cycle.edges.iter().filter(|e| !current(e));
            let held = |e: &Dependency| {
                let (a, b) = (self.identities.of(e.from), self.identities.of(e.to));
                self.instances.dependency(a, b).is_some()
            };
            let evicted = |e: &Dependency| {
                self.evicted.contains(&self.identities.of(e.from))
                    || self.evicted.contains(&self.identities.of(e.to))
            };
            let instance_graph_holds_it = kept && others().all(held);
            let lost_to_the_cap = others().all(|e| held(e) || evicted(e));
            let closes = closes && (instance_graph_holds_it || !lost_to_the_cap);
            if n < 2 || closes {
                continue;
            }
            let classes = cycle
                .nodes
                .iter()
                .map(|&c| self.classes.key(c).to_string())
                .collect();
            let mut shape = cycle.nodes.clone();
            shape.sort_unstable();
            let Some(id) = self.admit(Shape::Classes(shape, false), dep.pid) else {
                continue;
            };
            let restored = cycle
                .nodes
                .iter()
                .zip(cycle.nodes.iter().cycle().skip(1))
                .map(|(&a, &b)| self.restored.get(&(a, b)).copied())
                .collect::<Vec<_>>();
            verdicts.push(Verdict::Inversion(Inversion {
                id,
                edges: cycle.edges,
                gate: None,
                level: Level::Class,
                classes,
                restored: if restored.iter().any(Option::is_some) {
                    restored
                } else {
                    Vec::new()
                },
            }));
        }
        verdicts
    }

    /// Two locks of one class, one requested while holding the other.
    fn on_same_class(&mut self, class: ClassId, dep: &Dependency) -> Option<Verdict> {
        // A semaphore's class is judged only when Python code made it (the
        // line that created it): CPython creates every lock through one
        // sem_init call site, which would make all its locks one class, and
        // a C program's semaphore is a count, not a lock, as often as not.
        if dep.from_kind == LockKind::Semaphore
            && !matches!(self.classes.key(class), ClassKey::PythonLine { .. })
        {
            return None;
        }
        // A library's own per-object locks (mod_wsgi's per-thread mutexes,
        // made through APR) nest within their class by design; lockdep wants
        // annotations for that. Counted.
        if self.classes.key(class).is_library_init() {
            if self.library_same_class.insert(class) {
                self.stats.library_same_class_nesting += 1;
            }
            return None;
        }
        let seen = self.same_class.entry(class).or_default();
        let ascending = dep.from.addr < dep.to.addr;
        let (this_way, other_way) = if ascending {
            (&mut seen.ascending, &seen.descending)
        } else {
            (&mut seen.descending, &seen.ascending)
        };
        if this_way.is_none() {
            *this_way = Some(dep.clone());
        }
        let opposite = other_way.clone();
        let class_name = self.classes.key(class).to_string();
        let seen = self.same_class.get_mut(&class).expect("just inserted");
        match opposite {
            Some(opposite) if !seen.warned => {
                seen.warned = true;
                // The same two instances both ways: a cycle of the instance
                // graph, reported there (one bug, one finding).
                if opposite.from == dep.to && opposite.to == dep.from {
                    return None;
                }
                Some(Verdict::SameClassNesting {
                    id: self.next_id(),
                    dep: dep.clone(),
                    class: class_name,
                    opposite: Some(Box::new(opposite)),
                })
            }
            None if !seen.noted => {
                seen.noted = true;
                self.stats.same_class_notes += 1;
                Some(Verdict::SameClassNesting {
                    id: self.next_id(),
                    dep: dep.clone(),
                    class: class_name,
                    opposite: None,
                })
            }
            _ => None,
        }
    }
}

/// Interned names: a host has few distinct thread names (comms), and a
/// dependency keeps its thread's. Bounded: past [`Names::MAX`] distinct
/// names the set starts over (names in use stay alive in their
/// dependencies).
#[derive(Default)]
struct Names(HashSet<Arc<str>, foldhash::fast::RandomState>);

impl Names {
    const MAX: usize = 4096;

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return known.clone();
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        let name: Arc<str> = name.into();
        self.0.insert(name.clone());
        name
    }
}

/// What makes two findings the same bug.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Shape {
    /// A cycle's sorted lock classes, and whether it is guarded.
    Classes(Vec<ClassId>, bool),
}

/// Findings one process may make: a burst of [`FINDING_BURST`], then one
/// per [`FINDING_PERIOD`]. Beyond, they are counted, not reported: a storm
/// of cycles (a graph with dozens of locks taken in every order) must not
/// bury the first findings nor the collector.
struct FindingBudget {
    tokens: u32,
    refilled: Instant,
}

const FINDING_BURST: u32 = 20;
const FINDING_PERIOD: Duration = Duration::from_secs(5);

impl FindingBudget {
    fn new(now: Instant) -> Self {
        FindingBudget {
            tokens: FINDING_BURST,
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let periods =
            (now.duration_since(self.refilled).as_secs_f64() / FINDING_PERIOD.as_secs_f64()) as u32;
        if periods > 0 {
            self.tokens = (self.tokens + periods).min(FINDING_BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The nestings of one lock class within itself, by address order.
#[derive(Default)]
struct SameClassOrders {
    ascending: Option<Dependency>,
    descending: Option<Dependency>,
    noted: bool,
    warned: bool,
}

/// A cycle where each thread held only its own wake-up mutex (one it alone
/// waits on conditions with) and requested another thread's, as far as the
/// kernel side knows now: mod_wsgi's workers wake the next idle one by
/// locking its mutex. The cycle cannot close (a thread's wake-up mutex is
/// requested by others while it waits, not holding it). Judged with what is
/// known now, not at each occurrence: a worker's first hand-off may come
/// before its own first wait.
fn is_handoff_cycle<N>(cycle: &Cycle<N>, host: &mut dyn Host) -> bool {
    cycle.edges.iter().all(|e| {
        e.handoff
            || (e.gates.is_empty()
                && host.wakeup_mutex_owner(e.pid, e.from.addr) == Some(e.tid)
                && host
                    .wakeup_mutex_owner(e.pid, e.to.addr)
                    .is_some_and(|owner| owner != e.tid))
    })
}
