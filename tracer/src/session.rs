//! One tracing session: reads the ring buffer until told to stop, feeds each
//! dependency to the lock-order graph, and reports every new cycle at once.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{
    gate_fingerprint, gate_mix, Counter, DependencyKey, EVENT_DEPENDENCY, EVENT_HANDOFF,
};
use tracing::{debug, info, trace, warn};

use crate::{
    blocking::Watchdog,
    classes::Classes,
    graph::LockOrderGraph,
    ingest::{self, DependencyRecord, Record},
    load::Probes,
    model::{Dependency, LockId, LockKind, Resolve},
    report::{self, Reporter, Summary},
    symbolize::Symbolizer,
    targets::{FileId, Target},
    waitfor,
};

/// The pseudo process of shared-lock nodes (locks in MAP_SHARED memory).
const SHARED_PID: u32 = u32::MAX - 1;

/// Contended futex words listed in the summary.
const CONTENTION_SHOWN: usize = 5;

pub struct Session {
    pub probes: Probes,
    watchdog: Watchdog,
    classes: Classes,
    /// The lock-order graph of lock classes.
    class_graph: LockOrderGraph,
    /// The instance dependency behind each class dependency.
    class_edges: HashMap<(LockId, LockId), Dependency>,
    same_class_reported: HashSet<LockId>,
    /// Identities of locks in shared memory: (dev, inode, offset) -> node.
    shared_locks: HashMap<(u64, u64, u64), LockId>,
    /// The lock sets of reported inversions, to link deadlocks to them.
    inversions: Vec<(BTreeSet<LockId>, u64)>,
    symbolizer: Symbolizer,
    graph: LockOrderGraph,
    reporter: Reporter,
    started: Instant,
    records: u64,
    undecodable: u64,
    /// Exited processes whose locks and dependencies were forgotten, and
    /// how many dependencies went with them (the class graph keeps its
    /// edges).
    forgotten_processes: u64,
    forgotten_dependencies: u64,
    /// Lock classes of libraries' own code nested within themselves (not
    /// reported, see `on_class_dependency`).
    library_same_class: u64,
    /// Instance cycles of wake-up hand-offs, judged when found (not
    /// reported; see `is_handoff_cycle`).
    handoff_cycles: u64,
    /// Probe lock libraries that processes map while we run.
    follow_libraries: bool,
    /// Lock libraries that could not be probed (reported once).
    unprobeable: HashSet<FileId>,
    /// Findings numbered so far (ids).
    pub findings: u64,
    /// Findings that count for `--exit-code`: all but guarded cycles (notes).
    pub alarms: u64,
}

impl Session {
    pub fn new(
        probes: Probes,
        symbolizer: Symbolizer,
        reporter: Reporter,
        hang_threshold: Duration,
    ) -> Self {
        Session {
            probes,
            watchdog: Watchdog::new(hang_threshold),
            classes: Classes::new(),
            class_graph: LockOrderGraph::new(),
            class_edges: HashMap::new(),
            same_class_reported: HashSet::new(),
            shared_locks: HashMap::new(),
            inversions: Vec::new(),
            symbolizer,
            graph: LockOrderGraph::new(),
            reporter,
            started: Instant::now(),
            forgotten_processes: 0,
            forgotten_dependencies: 0,
            library_same_class: 0,
            handoff_cycles: 0,
            follow_libraries: false,
            unprobeable: HashSet::new(),
            records: 0,
            undecodable: 0,
            findings: 0,
            alarms: 0,
        }
    }

    /// Traces until `stop` completes, then drains what is left and writes the
    /// summary.
    pub async fn run_until(&mut self, stop: impl Future<Output = ()>) -> Result<()> {
        let ring = self.probes.take_events()?;
        // SAFETY (both): the map owns its file descriptor for as long as the
        // AsyncFd owns the map.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(|_| anyhow!("cannot poll the ring buffer"))?;
        let mut logger = match self.probes.take_logger() {
            Some(l) => Some(
                unsafe { AsyncFd::register(l) }
                    .map_err(|_| anyhow!("cannot poll the kernel log"))?,
            ),
            None => None,
        };
        tokio::pin!(stop);
        // A periodic drain as a safety net: the ring buffer wakes us up only
        // when the kernel side asks for it.
        // Also how soon a newly mapped libc gets its probes, and a new
        // Python process its description (before it creates its locks).
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        // Deadlocks are confirmed by two scans in a row: reported within a
        // second of the last thread blocking.
        let mut scan = tokio::time::interval(Duration::from_millis(400));
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    self.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                }
                Some(guard) = async {
                    match logger.as_mut() {
                        Some(l) => Some(l.readable_mut().await),
                        None => None,
                    }
                } => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    // Keep the mapping records drained even when no lock
                    // event comes: the perf buffers are finite.
                    self.symbolizer.sync();
                    self.probe_new_libraries();
                    self.drain(ring.get_mut())?;
                }
                _ = scan.tick() => {
                    self.drain(ring.get_mut())?;
                    self.check_waits()?;
                }
                _ = &mut stop => break,
            }
        }
        self.drain(ring.get_mut())?;
        if let Some(l) = logger.as_mut() {
            l.get_mut().flush();
        }
        self.write_summary()
    }

    /// Probe, as they appear, the lock libraries processes map (a container
    /// started now, a program run with another copy of libc).
    pub fn follow_new_libraries(&mut self, follow: bool) {
        self.follow_libraries = follow;
    }

    /// Looks for a Python interpreter in the given processes (all those
    /// running when the session starts, in the filter's scope).
    pub fn check_pythons(&mut self, pids: impl IntoIterator<Item = u32>) {
        for pid in pids {
            if self.probes.may_trace(pid) {
                self.symbolizer.pythons.check(&mut self.probes, pid);
            }
        }
    }

    /// Attaches the probes to lock libraries mapped since the last call.
    /// A process that maps a libc new to us runs on meanwhile: its lock
    /// operations before the attach (usually its first milliseconds) are
    /// not seen, which the log says.
    fn probe_new_libraries(&mut self) {
        // New programs first: a Python one needs its interpreter described
        // before it takes locks.
        let programs = self.symbolizer.spaces().take_new_programs();
        self.check_pythons(programs);
        let new = self.symbolizer.spaces().take_new_libraries();
        if !self.follow_libraries {
            return;
        }
        for (pid, m) in new {
            let id = FileId {
                dev: m.dev,
                inode: m.inode,
            };
            if self.probes.is_probed(id)
                || self.unprobeable.contains(&id)
                || !self.probes.may_trace(pid)
            {
                continue;
            }
            let Some(target) = Target::from_mapping(pid, &m) else {
                warn!(pid, file = %m.path.display(), "cannot probe a newly mapped lock library: the process exited before it could be opened");
                continue;
            };
            if !target.is_lock_library_file() {
                debug!(file = %m.path.display(), "not a lock library (no sem_wait and pthread_mutex_lock of its own)");
                self.unprobeable.insert(id);
                continue;
            }
            let attached = self.probes.attach_file(&target);
            match attached {
                Ok(missing) => info!(
                    pid,
                    file = %m.path.display(),
                    ?missing,
                    "probing a newly mapped lock library; the process's lock operations before now were not seen"
                ),
                Err(e) => {
                    warn!(pid, file = %m.path.display(), "cannot probe a newly mapped lock library: {e:#}");
                    self.unprobeable.insert(id);
                }
            }
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        let mut queue = VecDeque::new();
        loop {
            // Take in what arrived while the last record was processed (a
            // record can take a millisecond to unwind and symbolize).
            if self.take_in(ring, &mut queue) {
                // Mappings created before these events are now in the perf
                // buffer.
                self.symbolizer.sync();
                self.probe_new_libraries();
            }
            let Some(record) = queue.pop_front() else {
                return Ok(());
            };
            self.process(record)?;
        }
    }

    /// Moves the ring buffer's records to `queue`; returns whether any came.
    /// Python frames are resolved at once: they are read from the process's
    /// memory, where a code object may not live long (a module's top-level
    /// code is freed once the module ran).
    fn take_in(&mut self, ring: &mut RingBuf<MapData>, queue: &mut VecDeque<Record>) -> bool {
        let before = queue.len();
        while let Some(item) = ring.next() {
            self.records += 1;
            let record = match ingest::decode(&item) {
                Ok(record) => record,
                Err(e) => {
                    self.undecodable += 1;
                    warn!("dropping a ring-buffer record: {e:#}");
                    continue;
                }
            };
            // A process first seen here (forked before its parent was found
            // to run Python, as mod_wsgi daemons may be) is looked at now, so
            // that its next events carry Python frames; this record's Python
            // frames are resolved at once (see above).
            let python = match &record {
                Record::Dependency(d) | Record::SelfDeadlock(d) => Some((d.pid, &d.python)),
                Record::LockReset {
                    pid, py_creator, ..
                } => Some((*pid, py_creator)),
                Record::ProcessExit { .. } => None,
            };
            if let Some((pid, frames)) = python {
                if !self.symbolizer.pythons.is_checked(pid) {
                    self.symbolizer.pythons.check(&mut self.probes, pid);
                }
                self.symbolizer.pythons.resolve(pid, frames);
            }
            queue.push_back(record);
        }
        queue.len() > before
    }

    fn process(&mut self, record: Record) -> Result<()> {
        match record {
            Record::Dependency(d) => self.on_dependency(d),
            Record::SelfDeadlock(d) => self.on_self_deadlock(d),
            Record::ProcessExit { pid } => self.on_process_exit(pid),
            Record::LockReset {
                pid,
                addr,
                init_site,
                py_creator,
                py_code,
                init_stack,
            } => {
                let lock = LockId { pid, addr };
                if py_creator.is_empty() {
                    self.symbolizer.pythons.forget_lock(lock);
                } else {
                    self.symbolizer
                        .pythons
                        .note_created(lock, &py_creator, &py_code);
                }
                match init_site {
                    Some(site) => {
                        // Unwound only when the class is first needed (most
                        // locks never are): keep the copied stack till then.
                        let caller = init_stack;
                        self.classes.note_init(lock, site, caller)
                    }
                    None => self.classes.forget_lock(lock),
                }
                self.on_lock_reset(lock)
            }
        }
    }

    /// A lock in memory mapped MAP_SHARED is one node for every process
    /// that maps it: identified, as the kernel identifies a shared futex, by
    /// the mapping's device and inode and the offset in it.
    fn note_shared(&mut self, lock: LockId) {
        let Some(m) = self.symbolizer.spaces().find(lock.pid, lock.addr) else {
            trace!(pid = lock.pid, addr = lock.addr, "lock in no known mapping");
            return;
        };
        trace!(pid = lock.pid, addr = lock.addr, path = %m.path.display(), shared = m.shared, inode = m.inode, "lock mapping");
        if !m.shared || m.inode == 0 {
            return;
        }
        let key = (m.dev, m.inode, m.file_offset_of(lock.addr));
        let next = LockId {
            pid: SHARED_PID,
            addr: self.shared_locks.len() as u64,
        };
        let id = *self.shared_locks.entry(key).or_insert(next);
        self.graph.set_identity(lock, id);
    }

    /// The class of a lock: one class per shared lock, whatever process
    /// takes it.
    fn class_of(&mut self, lock: LockId, first_site: u64) -> LockId {
        let id = self.graph.identity(lock);
        if id.pid == SHARED_PID {
            let key = format!(
                "shared@{}",
                self.symbolizer
                    .shared_identity(lock.pid, lock.addr)
                    .unwrap_or_default()
            );
            return self.classes.class_named(id, key);
        }
        self.classes
            .class_of(lock, first_site, &mut self.symbolizer)
    }

    /// The class view of an instance dependency: same-class nesting, or an
    /// edge of the class graph whose cycles no instance cycle covers (an
    /// inversion split across processes or instances).
    fn on_class_dependency(&mut self, from: LockId, to: LockId, dep: &Dependency) -> Result<()> {
        let class_name = |c: LockId, classes: &Classes| classes.name(c).unwrap_or("?").to_string();
        trace!(
            pid = dep.pid,
            from = %class_name(from, &self.classes),
            to = %class_name(to, &self.classes),
            "class dependency"
        );
        if from == to {
            // CPython creates every lock through one sem_init call site: its
            // locks are all one class until Python-level classes exist.
            let python_style = dep.from_kind == LockKind::Semaphore;
            // A library's own per-object locks (mod_wsgi's per-thread
            // mutexes, made through APR) nest within their class by design;
            // lockdep wants annotations for that. Reported for the program's
            // own code; counted otherwise.
            let name = class_name(from, &self.classes);
            if is_library_class(&name) {
                if self.same_class_reported.insert(from) {
                    self.library_same_class += 1;
                    debug!(class = %name, "same-class nesting in a library's own locks");
                }
                return Ok(());
            }
            if !python_style && self.same_class_reported.insert(from) {
                self.findings += 1;
                self.alarms += 1;
                let name = class_name(from, &self.classes);
                let finding =
                    report::same_class_nesting(dep, &name, &mut self.symbolizer, self.findings);
                self.reporter
                    .finding(&finding)
                    .context("cannot write the report")?;
            }
            return Ok(());
        }
        self.class_edges
            .entry((from, to))
            .or_insert_with(|| dep.clone());
        let class_dep = Dependency {
            from,
            to,
            ..dep.clone()
        };
        for cycle in self.class_graph.insert(class_dep) {
            let edges: Vec<Dependency> = cycle
                .edges
                .iter()
                .filter_map(|e| self.class_edges.get(&(e.from, e.to)).cloned())
                .collect();
            let n = edges.len();
            // One bug, one finding: a cycle of instances is reported by the
            // instance graph.
            // At each lock of the cycle, the two edges meet on one instance:
            // the same lock, or the same shared lock (whose class is its
            // identity; the instance graph may have forgotten an exited
            // worker's mapping of it).
            let closes = (0..n).all(|i| {
                let shared_class = self
                    .classes
                    .name(cycle.edges[i].to)
                    .is_some_and(|c| c.starts_with("shared@"));
                shared_class
                    || self.graph.identity(edges[i].to)
                        == self.graph.identity(edges[(i + 1) % n].from)
            });
            trace!(n, closes, classes = cycle.edges.len(), "class cycle");
            if n < 2 || closes {
                continue;
            }
            let classes: Vec<String> = cycle
                .edges
                .iter()
                .map(|e| class_name(e.from, &self.classes))
                .collect();
            self.findings += 1;
            self.alarms += 1;
            let instance_cycle = crate::graph::Cycle { edges, gate: None };
            let mut finding =
                report::inversion(&instance_cycle, &mut self.symbolizer, self.findings);
            if let report::Finding::LockOrderInversion(inv) = &mut finding {
                inv.level = "class";
                inv.classes = classes;
            }
            debug!(locks = n, "class-level cycle");
            self.reporter
                .finding(&finding)
                .context("cannot write the report")?;
        }
        Ok(())
    }

    /// Looks for deadlocks and hangs among the traced threads.
    fn check_waits(&mut self) -> Result<()> {
        let pids = if self.probes.is_host_wide() {
            waitfor::all_pids()
        } else {
            self.probes.traced_pids()?
        };
        let held = self.probes.held_stacks()?;
        let starts = self.probes.futex_waits()?;
        let inversions = &self.inversions;
        let inversion_of = |locks: &BTreeSet<LockId>| {
            inversions
                .iter()
                .find(|(l, _)| l == locks)
                .map(|(_, id)| *id)
        };
        let findings_so_far = &mut self.findings;
        let mut next_id = || {
            *findings_so_far += 1;
            *findings_so_far
        };
        let found = self.watchdog.check(
            &pids,
            &held,
            &starts,
            &mut self.symbolizer,
            &inversion_of,
            &mut next_id,
        );
        for finding in found {
            debug!(id = finding.id(), "blocking finding");
            self.alarms += 1;
            self.reporter
                .finding(&finding)
                .context("cannot write the report")?;
        }
        Ok(())
    }

    /// The stack of a request: unwound from the probe's registers, and,
    /// for an event made at a function's return, that function first.
    fn request_stack(&mut self, d: &DependencyRecord) -> Vec<u64> {
        let mut stack = self.symbolizer.unwind(d.pid, d.ip, d.sp, d.bp, &d.stack);
        if d.entry_ip != 0 {
            // The unwound stack starts at the return address in the caller;
            // with the lock function first it reads like any other request.
            stack.insert(0, d.entry_ip);
        }
        stack
    }

    /// A traced process exited: its lock instances leave the instance graph
    /// and the kernel's cache (its pid may be reused by another program),
    /// which keeps memory bounded under process churn. Its lock classes and
    /// their dependencies stay: an order seen in a dead worker still counts.
    fn on_process_exit(&mut self, pid: u32) -> Result<()> {
        let removed = self.graph.forget_process(pid);
        self.classes.forget_process(pid);
        self.symbolizer.pythons.forget_process(pid);
        self.forgotten_processes += 1;
        self.forgotten_dependencies += removed.len() as u64;
        trace!(pid, dependencies = removed.len(), "process exit");
        self.forget_in_kernel(&removed)
    }

    fn forget_in_kernel(&mut self, removed: &[Dependency]) -> Result<()> {
        let keys: Vec<DependencyKey> = removed
            .iter()
            .map(|d| {
                DependencyKey::new(
                    d.pid,
                    if d.handoff {
                        EVENT_HANDOFF
                    } else {
                        EVENT_DEPENDENCY
                    },
                    (d.from.addr, d.from_kind as u32),
                    (d.to.addr, d.to_kind as u32),
                    d.gate_key,
                )
            })
            .collect();
        self.probes.forget_dependencies(&keys)
    }

    /// A lock was initialized or destroyed: its memory is a new lock from
    /// now on. Its dependencies leave the graph and the kernel's cache, so
    /// that the new lock's are sent and judged afresh.
    fn on_lock_reset(&mut self, lock: LockId) -> Result<()> {
        let removed = self.graph.forget_lock(lock);
        if removed.is_empty() {
            return Ok(());
        }
        trace!(
            pid = lock.pid,
            addr = lock.addr,
            dependencies = removed.len(),
            "lock reset"
        );
        self.forget_in_kernel(&removed)
    }

    fn on_self_deadlock(&mut self, d: DependencyRecord) -> Result<()> {
        let Some(held) = d.from.first() else {
            return Ok(());
        };
        let stack = self.request_stack(&d);
        let lock = LockId {
            pid: d.pid,
            addr: d.to.addr,
        };
        let dep = Dependency {
            from: lock,
            to: lock,
            from_kind: ingest::lock_kind(held.kind),
            to_kind: ingest::lock_kind(d.to.kind),
            pid: d.pid,
            tid: d.tid,
            thread: d.thread,
            timestamp_ns: d.timestamp_ns,
            held_callsite: held.callsite,
            stack,
            gates: Vec::new(),
            gate_key: 0,
            python: self.symbolizer.pythons.resolve(d.pid, &d.python),
            handoff: d.handoff,
        };
        self.findings += 1;
        self.alarms += 1;
        let finding = report::self_deadlock(&dep, &mut self.symbolizer, self.findings);
        self.reporter
            .finding(&finding)
            .context("cannot write the report")
    }

    fn on_dependency(&mut self, d: DependencyRecord) -> Result<()> {
        let stack = self.request_stack(&d);
        let python = self.symbolizer.pythons.resolve(d.pid, &d.python);
        trace!(
            pid = d.pid,
            tid = d.tid,
            to = d.to.addr,
            n = d.from.len(),
            frames = stack.len(),
            "dependency"
        );
        let all_held = d.held.iter().fold(0, |h, &a| h ^ gate_mix(a));
        for from in &d.from {
            let mut gates: Vec<LockId> = d
                .held
                .iter()
                .filter(|&&a| a != from.addr && a != d.to.addr)
                .map(|&addr| LockId { pid: d.pid, addr })
                .collect();
            gates.sort_unstable();
            gates.dedup();
            let dep = Dependency {
                from: LockId {
                    pid: d.pid,
                    addr: from.addr,
                },
                to: LockId {
                    pid: d.pid,
                    addr: d.to.addr,
                },
                from_kind: ingest::lock_kind(from.kind),
                to_kind: ingest::lock_kind(d.to.kind),
                pid: d.pid,
                tid: d.tid,
                thread: d.thread.clone(),
                timestamp_ns: d.timestamp_ns,
                held_callsite: from.callsite,
                stack: stack.clone(),
                gates,
                gate_key: gate_fingerprint(all_held, from.addr),
                python: python.clone(),
                handoff: d.handoff,
            };
            self.note_shared(dep.from);
            self.note_shared(dep.to);
            let from_class = self.class_of(dep.from, from.callsite);
            let to_class = self.class_of(dep.to, d.to.callsite);
            self.on_class_dependency(from_class, to_class, &dep)?;
            for cycle in self.graph.insert(dep) {
                if self.is_handoff_cycle(&cycle) {
                    self.handoff_cycles += 1;
                    debug!(locks = cycle.edges.len(), "cycle of wake-up hand-offs");
                    continue;
                }
                self.findings += 1;
                if cycle.gate.is_none() {
                    self.alarms += 1;
                }
                self.inversions
                    .push((cycle.locks().into_iter().collect(), self.findings));
                debug!(locks = cycle.edges.len(), "lock-order cycle");
                let finding = report::inversion(&cycle, &mut self.symbolizer, self.findings);
                self.reporter
                    .finding(&finding)
                    .context("cannot write the report")?;
            }
        }
        Ok(())
    }

    /// A cycle where each thread held only its own wake-up mutex (one it
    /// alone waits on conditions with) and requested another thread's, as
    /// far as the kernel side knows now: mod_wsgi's workers wake the next
    /// idle one by locking its mutex. The cycle cannot close (a thread's
    /// wake-up mutex is requested by others while it waits, not holding it).
    /// Judged with what is known now, not at each occurrence: a worker's
    /// first hand-off may come before its own first wait.
    fn is_handoff_cycle(&self, cycle: &crate::graph::Cycle) -> bool {
        cycle.edges.iter().all(|e| {
            e.handoff
                || (e.gates.is_empty()
                    && self.probes.wakeup_mutex_owner(e.pid, e.from.addr) == Some(e.tid)
                    && self
                        .probes
                        .wakeup_mutex_owner(e.pid, e.to.addr)
                        .is_some_and(|owner| owner != e.tid))
        })
    }

    fn write_summary(&mut self) -> Result<()> {
        // Mappings of processes that made no event yet name the contended
        // futex words.
        self.symbolizer.sync();
        let counters = self.probes.counters()?;
        let get = |c: Counter| {
            counters
                .iter()
                .find(|(k, _)| *k == c)
                .map_or(0, |(_, v)| *v)
        };
        let summary = Summary {
            events: get(Counter::Acquire) + get(Counter::Release),
            dependencies: self.graph.dependencies_seen(),
            locks: self.graph.locks_seen(),
            cycles: self.graph.cycle_count() as u64,
            lost_events: get(Counter::LostEvents) + self.undecodable,
            truncated_cycle_searches: self.graph.truncated_searches(),
            contention: report::contention(
                self.probes.futex_stats()?,
                &mut self.symbolizer,
                CONTENTION_SHOWN,
            ),
            counters: counters
                .iter()
                .map(|(c, v)| (c.name().to_string(), *v))
                .collect(),
            library_same_class_nesting: self.library_same_class,
            handoff_cycles: self.graph.handoff_cycles() + self.handoff_cycles,
            forgotten_processes: self.forgotten_processes,
            forgotten_dependencies: self.forgotten_dependencies,
            probed_files: self
                .probes
                .probed_files()
                .map(|p| p.display().to_string())
                .collect(),
            duration_s: self.started.elapsed().as_secs_f64(),
        };
        self.reporter
            .summary(&summary)
            .context("cannot write the report")?;
        Ok(())
    }
}

/// Whether a class is made by a shared library's code (`init@libX.so+...`).
fn is_library_class(name: &str) -> bool {
    name.strip_prefix("init@")
        .and_then(|site| site.split('+').next())
        .is_some_and(|module| module.contains(".so"))
}
