//! One tracing session: the loop. Records flow kernel -> enrich -> detect ->
//! report, each stage once; on ticks, new libraries get probes, new Python
//! processes are described to the kernel side, and the wait-for graph is
//! scanned.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracer_analysis::limits::{self, Tally};
use tracer_analysis::model::{Blocked, ClassKey, LockInstance, Waiter};
use tracer_analysis::waits::WaitScan;
use tracer_analysis::{Detector, Verdict};
use tracer_common::{Counter, DependencyKey};
use tracing::{debug, info, warn};

use crate::budget::Slicer;
use crate::enrich::{Enricher, Facts, Pending};
use crate::host::{proc, waitfor};
use crate::kernel::decode::{self, Record};
use crate::kernel::events::KernelStreams;
use crate::kernel::follow::Follower;
use crate::kernel::load::{Filter, Probes};
use crate::kernel::maps::HeldByThread;
use crate::report::blocking::Scan;
use crate::report::class_waits::{ClassWaitNs, ClassWaits};
use crate::report::{self, graph, summary, Reporter, Summary};
use crate::reuse::{ReuseGate, ReuseStats};

/// Contended futex words listed in the summary.
const CONTENTION_SHOWN: usize = 5;

/// Futex words whose blocked threads' stacks are kept for the coverage.
const MAX_UNTRACED_SITES: usize = 256;

/// Records are processed in slices of this much time, between which the
/// loop answers signals and timers: whatever the load, a stop is seen
/// within a slice.
const SLICE: Duration = Duration::from_millis(50);
/// Records read from the ring buffer at once (about a millisecond's
/// work): a flood cannot keep a read going while nothing is processed.
const READ_BATCH: usize = 1024;
/// With records queued, the ring buffer is read at most this often.
const TAKE_IN_EVERY: Duration = Duration::from_millis(2);
/// Deferred records kept back while the ring buffer keeps delivering (see
/// `take_in`); beyond this they are queued anyway.
const MAX_DEFERRED_WAITING: usize = 100_000;
/// The longest an exit read from the ring buffer waits for the kernel's
/// deferred dependencies (older than it) to be taken.
const EXITS_WAIT: Duration = Duration::from_secs(2);

/// Why tracing stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A signal (SIGINT, SIGTERM) or the end of `--duration`: what is left is processed for at most
    /// 0.3 s, the rest counted (`unprocessed_records`), so that the
    /// tracer ends within a second.
    Signal,
    /// The traced command exited: everything left is processed (for at
    /// most a minute), so that its findings are complete.
    Finished,
}

impl Stop {
    fn drain_budget(self) -> Duration {
        match self {
            Stop::Signal => Duration::from_millis(300),
            Stop::Finished => Duration::from_secs(60),
        }
    }
}

/// What a long-running caller (the agent) learns while tracing: each
/// finding as it is reported, and the live counts after every scan.
pub trait Observer {
    /// `alarm`: a warning (not a note: a guarded cycle, a same-class
    /// nesting in one address order).
    /// `time`: when it was reported (RFC 3339, as its JSON line says).
    fn finding(&mut self, finding: &report::Finding, alarm: bool, time: &str);
    fn progress(&mut self, live: &Live);
    /// After each scan of the wait-for graph: every thread blocked on a
    /// lock now, as (pid, tid, lock address). A deadlock or hang whose
    /// waits are gone has cleared.
    fn waits(&mut self, _blocked: &[(u32, u32, u64)]) {}
    /// Class dependencies new to the class graph between classes that
    /// outlive the run (see [`Session::learn_class_dependencies`]).
    fn learned(&mut self, _orders: &[LearnedOrder]) {}
}

/// A class dependency with its occurrence, named and symbolized: what the
/// agent saves (`learned`), and what it restores at its next start.
#[derive(Clone, Debug)]
pub struct LearnedOrder {
    pub from: ClassKey,
    pub to: ClassKey,
    pub edge: report::Edge,
}

/// The session's counts so far (those of the end-of-run [`Summary`]).
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub events: u64,
    pub lost_events: u64,
    pub dependencies: u64,
    pub locks: u64,
    pub lock_classes: u64,
    /// Dependencies not kept in the instance graph (at its cap).
    pub dropped_dependencies: u64,
    /// Lock instances evicted from the instance graph at its cap, and the
    /// dependencies that left with them.
    pub evicted_locks: u64,
    pub evicted_dependencies: u64,
    pub traced_processes: u64,
    pub probed_files: u64,
    /// Threads in a deadlock reported and still blocked, at the last scan.
    pub deadlocked_threads: u64,
    /// Waits longer than the hang threshold at the last scan.
    pub waits_over_threshold: u64,
    /// Lock wait time by class since the last report (read every
    /// [`crate::report::class_waits::READ_EVERY`]: empty in between).
    pub class_waits: ClassWaitNs,
}

/// What a reload (the agent's SIGHUP) changes while tracing goes on: the
/// probes, the graphs and what was reported stay.
#[derive(Default)]
pub struct Change {
    /// Trace what this filter names from now on (see `Probes::retrace`).
    pub filter: Option<Filter>,
    pub hang_threshold: Option<Duration>,
    /// The instance graph's caps: (lock instances, dependencies).
    pub caps: Option<(usize, usize)>,
}

pub struct Session {
    pub probes: Probes,
    observer: Option<Box<dyn Observer>>,
    /// Reloads to apply, between two scans.
    changes: Option<Receiver<Change>>,
    enricher: Enricher,
    detector: Detector,
    reporter: Reporter,
    follower: Follower,
    /// Records taken in and not processed yet.
    queue: VecDeque<Pending>,
    /// Bytes of the records waiting (`queue` and `deferred_records`), by
    /// process: bounded by [`limits::PENDING_BYTES`].
    pending: Tally,
    /// Records were dropped at the last take-in: see [`Session::backlogged`].
    dropping: bool,
    /// Records left unprocessed at exit (see [`Stop`]).
    unprocessed: u64,
    /// Stacks of threads caught blocked on futex words that are not locks
    /// the tracer knows, by (pid, word).
    untraced_sites: HashMap<(u32, u64), Vec<u64>>,
    /// Processes seen to exit since their held-back inits were last
    /// deleted in the kernel.
    exited: Vec<u32>,
    /// Processes whose exit the kernel deferred (ring buffer full), or that
    /// exited with deferred dependencies left: queued after them.
    deferred_exits: Vec<u32>,
    /// Since when exits wait in `deferred_exits`.
    exits_waiting_since: Option<Instant>,
    /// Records the kernel deferred (dependencies, and inits the ring
    /// buffer had no room for): queued after the next records taken in.
    deferred_records: Vec<Pending>,
    /// Scans since the last sweep of held-back inits of vanished processes
    /// (whose exit record the ring buffer had no room for).
    scans_since_sweep: u32,
    started: Instant,
    /// Wait time by lock class, for the observer (the agent's metrics).
    class_waits: ClassWaits,
    /// Findings that count for `--exit-code`: all but guarded cycles (notes).
    pub alarms: u64,
    /// With an overhead budget: the slices of probed lock traffic.
    slicer: Option<Slicer>,
    /// Dependencies of locks whose memory may be reused unseen: kept out
    /// until their process's frees are watched.
    reuse: ReuseGate,
    /// The frees of every traced process are watched from its fork on
    /// (`run`), rather than from its first heap lock's dependency.
    watch_frees_at_fork: bool,
    /// The evidence of the class dependencies restored from an earlier
    /// run, by tag (see [`Session::restore_class_graph`]).
    restored: HashMap<u64, report::Edge>,
}

impl Session {
    pub fn new(
        probes: Probes,
        enricher: Enricher,
        reporter: Reporter,
        hang_threshold: Duration,
    ) -> Self {
        Session {
            probes,
            observer: None,
            changes: None,
            enricher,
            detector: Detector::new(hang_threshold),
            reporter,
            follower: Follower::new(false),
            queue: VecDeque::new(),
            pending: Tally::new(limits::PENDING_BYTES),
            dropping: false,
            unprocessed: 0,
            untraced_sites: HashMap::new(),
            exited: Vec::new(),
            deferred_exits: Vec::new(),
            exits_waiting_since: None,
            deferred_records: Vec::new(),
            scans_since_sweep: 0,
            started: Instant::now(),
            class_waits: ClassWaits::default(),
            alarms: 0,
            slicer: None,
            reuse: ReuseGate::default(),
            watch_frees_at_fork: false,
            restored: HashMap::new(),
        }
    }

    /// Tells the observer of every class dependency new to the class graph
    /// between classes that outlive the run (a global lock of a binary with
    /// a build-id, a Python line): what the agent saves.
    pub fn learn_class_dependencies(&mut self) {
        self.detector.learn_class_dependencies();
    }

    /// Puts the class dependencies an earlier run learned in the class
    /// graph: a cycle one of them closes with this run's dependencies is
    /// reported, with their evidence (`edge.restored` says so); cycles of
    /// restored dependencies alone are not (the earlier run judged them).
    pub fn restore_class_graph(&mut self, orders: Vec<LearnedOrder>) {
        for (tag, order) in (0u64..).zip(orders) {
            let kinds = (
                report::findings::kind_named(order.edge.from.kind),
                report::findings::kind_named(order.edge.to.kind),
            );
            let (Some(from_kind), Some(to_kind)) = kinds else {
                continue;
            };
            self.detector
                .restore_class_dependency(order.from, order.to, (from_kind, to_kind), tag);
            self.restored.insert(tag, order.edge);
        }
    }

    /// Symbolizes the class dependencies the detector learned, for the
    /// observer (while their processes still run).
    fn tell_learned(&mut self) {
        let learned = self.detector.take_learned();
        let Some(observer) = &mut self.observer else {
            return;
        };
        if learned.is_empty() {
            return;
        }
        let orders: Vec<LearnedOrder> = learned
            .into_iter()
            .map(|l| LearnedOrder {
                edge: report::build::edge(&l.dep, &mut self.enricher),
                from: l.from,
                to: l.to,
            })
            .collect();
        observer.learned(&orders);
    }

    /// Watches the frees of `pid` (`run`'s command, before it runs) and of
    /// every traced process it forks: a short program's heap locks are then
    /// judged from their first dependency on (see [`crate::reuse`]).
    pub fn watch_frees_from_start(&mut self, pid: u32) {
        self.watch_frees_at_fork = true;
        self.reuse
            .watch(pid, &mut self.enricher.symbolizer, &mut self.probes);
    }

    /// Probes the lock traffic in slices under an overhead budget of
    /// `pct` percent (see [`crate::budget`]).
    pub fn set_budget(&mut self, pct: f64, slice: Duration) {
        let seen = self.dependencies_seen();
        self.slicer = Some(Slicer::new(pct, slice, &self.probes, seen));
    }

    /// Dependencies taken into the graph so far (forgotten ones included).
    fn dependencies_seen(&self) -> u64 {
        let stats = self.detector.stats();
        stats.dependencies + stats.forgotten_dependencies
    }

    /// Tells `observer` of every finding, and of the counts after every
    /// scan (a few times a second).
    pub fn observe(&mut self, observer: Box<dyn Observer>) {
        self.observer = Some(observer);
    }

    /// Caps the instance graph at `locks` lock instances and
    /// `dependencies` dependencies (see `Detector::set_limits`).
    pub fn cap_instances(&mut self, locks: usize, dependencies: usize) {
        self.detector.set_limits(locks, dependencies);
    }

    /// Applies the changes `changes` brings, between two scans.
    pub fn take_changes(&mut self, changes: Receiver<Change>) {
        self.changes = Some(changes);
    }

    fn apply_changes(&mut self) {
        while let Some(change) = self.changes.as_ref().and_then(|c| c.try_recv().ok()) {
            if let Some(threshold) = change.hang_threshold {
                self.detector.set_hang_threshold(threshold);
            }
            if let Some((locks, dependencies)) = change.caps {
                self.detector.set_limits(locks, dependencies);
            }
            if let Some(filter) = change.filter {
                self.retrace(&filter);
            }
        }
    }

    /// Traces what `filter` names from now on. A process no longer traced
    /// is forgotten as if it exited (after its records already taken):
    /// what it does untraced is unseen, its locks may be destroyed and
    /// their memory reused meanwhile. The class graph keeps what it taught.
    fn retrace(&mut self, filter: &Filter) {
        match self.probes.retrace(filter) {
            Ok(r) => {
                info!(
                    added = r.added.len(),
                    removed = r.removed.len(),
                    "filter reloaded: processes traced from now on, and no longer"
                );
                self.deferred_exits.extend(r.removed);
                self.check_pythons(r.added);
            }
            Err(e) => warn!("cannot apply the new filter: {e:#}"),
        }
    }

    /// Probe, as they appear, the lock libraries processes map (a container
    /// started now, a program run with another copy of libc).
    pub fn follow_new_libraries(&mut self, follow: bool) {
        self.follower = Follower::new(follow);
    }

    /// Looks for a Python interpreter in the given processes (all those
    /// running when the session starts, in the filter's scope), and
    /// describes those found to the kernel side.
    pub fn check_pythons(&mut self, pids: impl IntoIterator<Item = u32>) {
        self.look_for_pythons(pids, false);
    }

    /// [`Session::check_pythons`] of a command just exec'd by `run`: if it
    /// does not run Python yet, its first record looks again.
    pub fn check_python_at_exec(&mut self, pid: u32) {
        self.check_pythons([pid]);
        self.enricher.pythons.recheck_if_not_python(pid);
    }

    /// New programs (exec'd since the last look): described if they run a
    /// readable Python already, else looked at again at their first record.
    fn check_new_programs(&mut self, pids: Vec<u32>) {
        self.look_for_pythons(pids, true);
    }

    fn look_for_pythons(&mut self, pids: impl IntoIterator<Item = u32>, just_exec: bool) {
        for pid in pids {
            if !self.probes.may_trace(pid) {
                continue;
            }
            self.tell_pid_ns(pid);
            // Processes traced by pid or name: their mappings now, so that
            // they stay resolvable however soon they exit (host-wide, every
            // process would be too many to read up front).
            if !self.probes.is_host_wide() {
                self.enricher.symbolizer.spaces().remember(pid);
            }
            let found = if just_exec {
                self.enricher.pythons.check_just_exec(pid)
            } else {
                self.enricher.pythons.check(pid)
            };
            self.set_pythons(found);
        }
    }

    /// Tells the kernel side the pid namespace of `pid` if it is traced and
    /// not in ours (see `Probes::set_pid_ns`).
    fn tell_pid_ns(&mut self, pid: u32) {
        if !self.probes.may_trace(pid) {
            return;
        }
        if let Err(e) = self.probes.set_pid_ns(pid) {
            warn!(
                pid,
                "cannot tell the kernel side a process's pid namespace: {e:#}"
            );
        }
    }

    fn describe_python(&mut self, pid: u32) {
        let found = self.enricher.pythons.check(pid);
        self.set_pythons(found);
    }

    fn set_pythons(&mut self, found: Vec<crate::python::registry::Description>) {
        for d in found {
            if let Err(e) = self.probes.set_python(d.pid, &d.process, &d.threads) {
                warn!(
                    pid = d.pid,
                    "cannot describe a Python process to the kernel side: {e:#}"
                );
            }
        }
    }

    /// Traces until `stop` completes, then drains what is left and writes the
    /// summary.
    pub async fn run_until(&mut self, stop: impl Future<Output = Stop>) -> Result<()> {
        let mut streams = KernelStreams::open(&mut self.probes)?;
        tokio::pin!(stop);
        // A periodic drain as a safety net: the ring buffer wakes us up only
        // when the kernel side asks for it. Also how soon a newly mapped
        // libc gets its probes, and a new Python process its description
        // (before it creates its locks).
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        // Deadlocks are confirmed by two scans in a row: reported within a
        // second of the last thread blocking.
        let mut scan = tokio::time::interval(Duration::from_millis(400));
        let why = loop {
            // Let the runtime turn its timer wheel and read its signal pipe:
            // while records keep coming, every branch below is ready at
            // once, and a task that never waits would never see the
            // duration end or a SIGINT.
            tokio::task::yield_now().await;
            tokio::select! {
                biased;
                why = &mut stop => break why,
                ready = streams.ready() => {
                    ready?;
                    self.drain(&mut streams, Instant::now() + SLICE)?;
                }
                _ = tick.tick() => {
                    let seen = self.dependencies_seen();
                    if let Some(slicer) = &mut self.slicer {
                        slicer.step(&mut self.probes, seen);
                    }
                    self.follow_host();
                    self.drain(&mut streams, Instant::now() + SLICE)?;
                }
                _ = scan.tick() => {
                    self.apply_changes();
                    self.drain(&mut streams, Instant::now() + SLICE)?;
                    self.check_waits()?;
                    self.probes.sweep_processes();
                    self.forget_pending_inits();
                    self.tell_progress(&streams);
                }
                // Records left from the last slice: go on after a look at
                // the other branches.
                _ = std::future::ready(()), if !self.queue.is_empty() => {
                    self.drain(&mut streams, Instant::now() + SLICE)?;
                }
            }
        };
        let stopping = Instant::now();
        // No new records from now on (the links close while what is left
        // is processed): a flood cannot outrun the last drain.
        self.probes.stop_tracing();
        self.take_deferred();
        self.drain_left(&mut streams, why).await?;
        debug!(elapsed = ?stopping.elapsed(), "stopping: what was left processed");
        self.unprocessed = (self.queue.len() + self.deferred_records.len()) as u64
            + streams.discard(Instant::now() + Duration::from_millis(100)) as u64;
        self.queue.clear();
        streams.flush_log();
        debug!(elapsed = ?stopping.elapsed(), "stopping: the rest counted");
        self.write_summary(&streams)?;
        debug!(elapsed = ?stopping.elapsed(), "stopping: summary written");
        // The tracer exits next: the kernel takes the graphs back at once,
        // where freeing them one allocation at a time took a few tenths of
        // a second for a graph of 300,000 dependencies on a loaded host.
        std::mem::forget(std::mem::replace(
            &mut self.detector,
            Detector::new(Duration::ZERO),
        ));
        Ok(())
    }

    /// Processes what is left once tracing stopped, within `why`'s budget;
    /// a signal meanwhile (SIGTERM or SIGINT: the command exited, and the
    /// operator will not wait for the rest) cuts it to a signal's budget,
    /// so that the tracer still stops within a second of it.
    async fn drain_left(&mut self, streams: &mut KernelStreams, why: Stop) -> Result<()> {
        let started = Instant::now();
        let mut deadline = started + why.drain_budget();
        let mut hurry = Box::pin(any_stop_signal());
        let mut hurried = false;
        loop {
            self.drain(streams, deadline.min(Instant::now() + SLICE))?;
            if self.queue.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::select! {
                biased;
                () = &mut hurry, if !hurried => {
                    hurried = true;
                    deadline = deadline.min(Instant::now() + Stop::Signal.drain_budget());
                }
                () = tokio::task::yield_now() => {}
            }
        }
    }

    /// What happened on the host since the last look: new programs (Python
    /// ones are described first: before they take locks), new lock
    /// libraries (probed).
    fn follow_host(&mut self) {
        // Keep the mapping records drained even when no lock event comes:
        // the perf buffers are finite.
        self.enricher.symbolizer.sync();
        let programs = self.enricher.symbolizer.spaces().take_new_programs();
        self.check_new_programs(programs);
        let libraries = self.enricher.symbolizer.spaces().take_new_libraries();
        self.follower.attach_new(&mut self.probes, libraries);
        self.take_deferred();
        // With probes per process: new traced processes get theirs, those
        // forked by traced ones and those that exec'd a traced name.
        for (pid, started) in self.enricher.symbolizer.spaces().take_forks() {
            // A watch of an older process with this pid covers it no more.
            self.probes.frees_new_program(pid, started);
            self.probes.probe_new_process(pid, Some(started));
            if self.watch_frees_at_fork && self.probes.may_trace(pid) {
                self.reuse
                    .watch(pid, &mut self.enricher.symbolizer, &mut self.probes);
            }
            // A child forked into a new pid namespace (a container's first
            // process) may run there without an exec.
            self.tell_pid_ns(pid);
        }
        for (pid, started) in self.enricher.symbolizer.spaces().take_execs() {
            self.probes.frees_new_program(pid, started);
            self.probes.probe_new_process(pid, Some(started));
        }
    }

    /// Dependencies the ring buffer had no room for, kept by the kernel side
    /// in its deferred map: queued like any record.
    fn take_deferred(&mut self) {
        // Full: the kernel side keeps them (or, its map full too, counts
        // them lost) until there is room.
        if self.backlogged() {
            return;
        }
        match self.probes.take_deferred() {
            Ok((deferred, exits)) => {
                for d in deferred {
                    // Inits the ring buffer had no room for either come
                    // first.
                    for addr in [d.from.addr, d.to.addr] {
                        let Some(bytes) = self.probes.take_pending_init(d.pid, addr) else {
                            continue;
                        };
                        match decode::decode(&bytes) {
                            Ok(init) => {
                                let pending = self.enricher.resolve_python(init);
                                self.defer(pending);
                            }
                            Err(e) => warn!("cannot decode a held-back lock init: {e:#}"),
                        }
                    }
                    let record = Record::Dependency(decode::deferred(&d));
                    let pending = self.enricher.resolve_python(record);
                    self.defer(pending);
                }
                // After the records the ring buffer still holds (the
                // process's last ones are older than its exit).
                self.deferred_exits.extend(exits);
            }
            Err(e) => warn!("cannot read the deferred dependencies: {e:#}"),
        }
    }

    /// Deletes the kernel's held-back inits of exited processes: at once for
    /// those whose exit was seen, every ten seconds for any that vanished.
    fn forget_pending_inits(&mut self) {
        self.scans_since_sweep += 1;
        let swept = if self.scans_since_sweep >= 25 {
            self.scans_since_sweep = 0;
            self.exited.clear();
            self.probes
                .forget_pending_inits(|pid| !proc::is_process(pid))
        } else if !self.exited.is_empty() {
            let exited = std::mem::take(&mut self.exited);
            self.probes
                .forget_pending_inits(|pid| exited.contains(&pid))
        } else {
            return;
        };
        if let Err(e) = swept {
            warn!("cannot delete held-back lock inits: {e:#}");
        }
    }

    /// Takes in and processes records until there are none or `deadline`.
    fn drain(&mut self, streams: &mut KernelStreams, deadline: Instant) -> Result<()> {
        let mut taken = Instant::now() - TAKE_IN_EVERY;
        loop {
            // Take in what arrived while the last records were processed (a
            // record can take a millisecond to unwind and symbolize); with
            // records queued, at most every TAKE_IN_EVERY, so that a flood
            // read from the ring buffer leaves time to process them.
            let due = self.queue.is_empty() || taken.elapsed() >= TAKE_IN_EVERY;
            if due && {
                taken = Instant::now();
                self.take_in(streams) > 0
            } {
                // Mappings created before these events are now in the perf
                // buffer.
                self.follow_host();
            }
            let Some(pending) = self.queue.pop_front() else {
                return Ok(());
            };
            self.pending.give_back(pending.pid(), pending.footprint());
            self.process(pending)?;
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// Moves the ring buffer's records to `queue`, with their Python frames
    /// resolved at once: they are read from the process's memory, where a
    /// code object may not live long.
    fn take_in(&mut self, streams: &mut KernelStreams) -> usize {
        // Full: nothing more is taken until processing makes room (the
        // kernel side defers what the ring buffer cannot hold, or counts it
        // lost). Not "the ring buffer looked empty": deferred records stay
        // back.
        if self.backlogged() {
            return 0;
        }
        // Dependencies the kernel deferred (the ring buffer was full) are
        // taken before the ring buffer is read and queued after what it
        // held (but before a destroy or an exit): the inits of their locks
        // that did reach the ring buffer were written before them, and must
        // be processed first (a lock classed before its init is seen gets
        // another class).
        self.take_deferred();
        let dropped = self.pending.dropped;
        let mut records = Vec::new();
        let n = streams.read(READ_BATCH, |r| records.push(r));
        for record in records {
            // A code object's copy: kept for the records after it.
            let record = match record {
                Record::PyCode { pid, parts } => {
                    self.enricher.pythons.note_code_copy(pid, parts);
                    continue;
                }
                record => record,
            };
            // A destroy or an exit forgets locks: the deferred records (older)
            // go before it.
            let forgets = matches!(
                record,
                Record::ProcessExit { .. }
                    | Record::ProcessExec { .. }
                    | Record::LockReset {
                        init_site: None,
                        ..
                    }
            );
            if forgets {
                // Look at the deferred map again first: a dependency the
                // process deferred after the look at the top of this turn
                // is older than its exit (the kernel wrote it before the
                // exit record), and an exit processed before it would
                // forget its locks, so that it closed no cycle (trust.rs's
                // burst test lost its inversion so, once in CI).
                self.take_deferred();
                self.queue
                    .extend(std::mem::take(&mut self.deferred_records));
            }
            // An exited process's held-back inits go. Not an exec'd one's:
            // the kernel side dates each init by its program image and drops
            // the old image's itself, and by the time this record is read
            // the new image may have held back inits of its own (`run`'s
            // Python, released once described, creates its module locks at
            // once): deleting them here lost their creation lines.
            if let Record::ProcessExit { pid } = &record {
                // Deferred dependencies left in the kernel's map (taken a
                // batch at a time) are older than the exit: it waits with
                // the exits the kernel deferred (lock_burst's 16,000
                // deferred dependencies, processed after its exit, lost
                // their first edges to the exit's forgetting).
                if self.probes.deferred_left() {
                    self.deferred_exits.push(*pid);
                    continue;
                }
                self.exited.push(*pid);
            }
            // A process first seen here (forked before its parent was found
            // to run Python, as mod_wsgi daemons may be) is looked at now, so
            // that its next events carry Python frames.
            if let Some(pid) = record.python_pid() {
                if !self.enricher.pythons.is_checked(pid) {
                    self.describe_python(pid);
                }
            }
            let pending = self.enricher.resolve_python(record);
            self.enqueue(pending);
        }
        // Only once the ring buffer looked empty: a read can stop early at
        // a record another CPU is still writing, with older ones behind it.
        // Deferred exits after them (a process's records come before its
        // exit).
        self.dropping = self.pending.dropped > dropped;
        // The records also when they fill a process's share of the backlog,
        // so that its new records were dropped: waiting longer would starve
        // it (its exit still waits for the ring buffer to look empty).
        if self.dropping {
            self.queue
                .extend(std::mem::take(&mut self.deferred_records));
        }
        if n == 0 || self.deferred_records.len() > MAX_DEFERRED_WAITING {
            self.queue
                .extend(std::mem::take(&mut self.deferred_records));
        }
        // Exits wait for the deferred map to be taken whole, for at most
        // EXITS_WAIT: a host whose map never empties still has its exited
        // processes forgotten.
        let waited = *self.exits_waiting_since.get_or_insert_with(Instant::now);
        if self.deferred_exits.is_empty() {
            self.exits_waiting_since = None;
        } else if (n == 0 && !self.probes.deferred_left())
            || self.deferred_records.len() > MAX_DEFERRED_WAITING
            || waited.elapsed() > EXITS_WAIT
        {
            self.exits_waiting_since = None;
            for pid in std::mem::take(&mut self.deferred_exits) {
                self.exited.push(pid);
                let pending = self.enricher.resolve_python(Record::ProcessExit { pid });
                self.enqueue(pending);
            }
        }
        n
    }

    /// Whether the records waiting fill [`limits::PENDING_BYTES`], or a
    /// process's share of it (its records were dropped at the last take-in),
    /// while some are queued: nothing more is taken in until they are
    /// processed. Reading more would only drop it, at the price of the
    /// system calls that read the kernel side's deferred records, and leave
    /// no time to process what was kept. (With none queued, the rest is the
    /// deferred records, which wait for the ring buffer to look empty: it
    /// is read, so that they can go.)
    fn backlogged(&self) -> bool {
        (self.pending.is_full() || self.dropping) && !self.queue.is_empty()
    }

    /// Holds `pending`'s bytes against its process's share of
    /// [`limits::PENDING_BYTES`]: a dependency record beyond it is dropped
    /// and counted. (Its dependencies stay in the kernel side's cache, which
    /// sends them again once it forgot them, least recently used first:
    /// forgetting each there would cost a system call per dropped record,
    /// the flood's own price.) Other records are always kept: exits and
    /// destroys free memory, inits and self-deadlocks are few.
    fn admit(&mut self, pending: Pending) -> Option<Pending> {
        let (pid, bytes) = (pending.pid(), pending.footprint());
        if !pending.is_dependency() {
            self.pending.force(pid, bytes);
            return Some(pending);
        }
        self.pending.take(pid, bytes).then_some(pending)
    }

    fn enqueue(&mut self, pending: Pending) {
        if let Some(pending) = self.admit(pending) {
            self.queue.push_back(pending);
        }
    }

    fn defer(&mut self, pending: Pending) {
        if let Some(pending) = self.admit(pending) {
            self.deferred_records.push(pending);
        }
    }

    fn process(&mut self, pending: Pending) -> Result<()> {
        if let Pending::Request {
            raw,
            self_deadlock: false,
            ..
        } = &pending
        {
            if !self
                .reuse
                .admit(raw, &mut self.enricher.symbolizer, &mut self.probes)
            {
                return Ok(());
            }
        }
        let event = self.enricher.event(pending);
        let verdicts = self.detector.on_event(
            event,
            &mut Facts {
                enricher: &mut self.enricher,
                probes: &self.probes,
            },
        );
        self.forget_in_kernel()?;
        self.tell_learned();
        let no_scan = Scan {
            held: &HeldByThread::new(),
            waiters: &[],
        };
        self.report(&verdicts, &no_scan)
    }

    fn report(&mut self, verdicts: &[Verdict], scan: &Scan<'_>) -> Result<()> {
        for verdict in verdicts {
            debug!(id = verdict.id(), "finding");
            if verdict.is_alarm() {
                self.alarms += 1;
            }
            let restored = &self.restored;
            let finding = report::finding(verdict, &mut self.enricher, scan, &|tag| {
                restored.get(&tag).cloned()
            });
            let time = report::walltime::now();
            self.reporter
                .finding(&finding, &time)
                .context("cannot write the report")?;
            if let Some(observer) = &mut self.observer {
                observer.finding(&finding, verdict.is_alarm(), &time);
            }
        }
        Ok(())
    }

    /// Dependencies that left the graph leave the kernel's dedup cache too,
    /// so that their next occurrence is sent and judged afresh (a lock
    /// reset, a process exited: its pid may be reused).
    fn forget_in_kernel(&mut self) -> Result<()> {
        let keys: Vec<DependencyKey> = self
            .detector
            .take_forgotten()
            .iter()
            .map(|d| {
                DependencyKey::of_dependency(
                    d.pid,
                    d.handoff,
                    (d.from.addr, d.from_kind as u32),
                    (d.to.addr, d.to_kind as u32),
                    d.chain_key,
                )
            })
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        self.probes.forget_dependencies(&keys)
    }

    fn tell_progress(&mut self, streams: &KernelStreams) {
        if self.observer.is_none() {
            return;
        }
        let counters = match self.probes.counters() {
            Ok(c) => c,
            Err(e) => {
                warn!("cannot read the kernel counters: {e:#}");
                return;
            }
        };
        let get = |c: Counter| {
            counters
                .iter()
                .find(|(k, _)| *k == c)
                .map_or(0, |(_, v)| *v)
        };
        let stats = self.detector.stats();
        let blocked = self.detector.blocked_now();
        let traced_processes = if self.probes.is_host_wide() {
            proc::all_pids().len()
        } else {
            self.probes.traced_pids().map_or(0, |p| p.len())
        };
        let live = Live {
            events: get(Counter::Acquire) + get(Counter::Release),
            lost_events: get(Counter::LostEvents) + streams.undecodable,
            dependencies: stats.dependencies,
            locks: stats.locks,
            lock_classes: stats.classes,
            dropped_dependencies: stats.dropped_dependencies,
            evicted_locks: stats.evicted_locks,
            evicted_dependencies: stats.evicted_dependencies,
            traced_processes: traced_processes as u64,
            probed_files: self.probes.probed_files().count() as u64,
            deadlocked_threads: blocked.deadlocked_threads,
            waits_over_threshold: blocked.waits_over_threshold,
            class_waits: if self.class_waits.due() {
                self.read_class_waits()
            } else {
                Vec::new()
            },
        };
        if let Some(observer) = &mut self.observer {
            observer.progress(&live);
        }
    }

    /// The wait time each lock class gained since the last read of the
    /// kernel side's futex statistics.
    fn read_class_waits(&mut self) -> ClassWaitNs {
        let words = match self.probes.futex_stats() {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot read the futex statistics: {e:#}");
                return Vec::new();
            }
        };
        let mut facts = Facts {
            enricher: &mut self.enricher,
            probes: &self.probes,
        };
        let detector = &self.detector;
        self.class_waits.update(&words, |pid, addr| {
            detector.class_name(LockInstance { pid, addr }, &mut facts)
        })
    }

    /// Looks for deadlocks and hangs among the traced threads.
    fn check_waits(&mut self) -> Result<()> {
        // Held stacks may be stale while the traffic links close (releases
        // no longer seen): no wait-for graph from them.
        if self.slicer.as_ref().is_some_and(Slicer::held_state_unsure) {
            return Ok(());
        }
        // A map that cannot be read now (the host left the tracer no file
        // descriptor...) skips this scan, not the tracing.
        let maps = (|| {
            let pids = if self.probes.is_host_wide() {
                proc::all_pids()
            } else {
                self.probes.traced_pids()?
            };
            Ok::<_, anyhow::Error>((pids, self.probes.held_stacks()?, self.probes.futex_waits()?))
        })();
        let (pids, held, starts) = match maps {
            Ok(m) => m,
            Err(e) => {
                warn!("cannot read the held locks for the wait-for graph: {e:#}");
                return Ok(());
            }
        };
        let (waiters, others) = waitfor::scan(&pids, &held);
        // Sites of every blocked thread: the coverage keeps those of words
        // no traced lock function took.
        let blocked: Vec<Blocked> = waiters.iter().map(|w| w.blocked).chain(others).collect();
        self.note_untraced_sites(&blocked);
        let waiters: Vec<Waiter> = self.enricher.pythons.resolve_import_waits(waiters);
        if let Some(observer) = &mut self.observer {
            let blocked: Vec<(u32, u32, u64)> = waiters
                .iter()
                .map(|w| (w.blocked.pid, w.blocked.tid, w.lock))
                .collect();
            observer.waits(&blocked);
        }
        if !waiters.is_empty() {
            self.enricher.symbolizer.sync();
        }
        let verdicts = self.detector.on_waits(&WaitScan {
            waiters: waiters.clone(),
            starts: &starts,
            now: Instant::now(),
            now_ns: monotonic_ns(),
        });
        let scan = Scan {
            held: &held,
            waiters: &waiters,
        };
        self.report(&verdicts, &scan)
    }

    /// Where threads wait on futex words that are not locks the tracer
    /// knows: the first stack caught for each word, for the summary's
    /// coverage (bounded).
    fn note_untraced_sites(&mut self, blocked: &[Blocked]) {
        for b in blocked {
            if self.untraced_sites.len() >= MAX_UNTRACED_SITES {
                return;
            }
            let key = (b.pid, b.uaddr);
            if self.untraced_sites.contains_key(&key) {
                continue;
            }
            let bytes = waitfor::read_stack(b.pid, b.sp);
            let stack = self
                .enricher
                .symbolizer
                .unwind(b.pid, b.pc, b.sp, 0, &bytes);
            self.untraced_sites.insert(key, stack);
        }
    }

    fn write_summary(&mut self, streams: &KernelStreams) -> Result<()> {
        // Mappings of processes that made no event yet name the contended
        // futex words.
        self.enricher.symbolizer.sync();
        // The summary is written whatever the host did meanwhile: a map the
        // kernel side cannot be read now leaves its counts out, with a
        // warning.
        let counters = self.probes.counters().unwrap_or_else(|e| {
            warn!("cannot read the kernel counters for the summary: {e:#}");
            Vec::new()
        });
        let get = |c: Counter| {
            counters
                .iter()
                .find(|(k, _)| *k == c)
                .map_or(0, |(_, v)| *v)
        };
        let stats = self.detector.stats();
        let futex = self.probes.futex_stats().unwrap_or_else(|e| {
            warn!("cannot read the futex statistics for the summary: {e:#}");
            Vec::new()
        });
        let summary = Summary {
            events: get(Counter::Acquire) + get(Counter::Release),
            dependencies: stats.dependencies,
            locks: stats.locks,
            cycles: stats.cycles,
            lost_events: get(Counter::LostEvents) + streams.undecodable,
            truncated_cycle_searches: stats.truncated_cycle_searches,
            contention: summary::contention(&futex, &mut self.enricher, CONTENTION_SHOWN),
            coverage: summary::coverage(
                &futex,
                &self.untraced_sites,
                &mut self.enricher,
                CONTENTION_SHOWN,
            ),
            counters: summary::counters(counters.iter().copied()),
            library_same_class_nesting: stats.library_same_class_nesting,
            same_class_notes: stats.same_class_notes,
            repeated_findings: stats.repeated_findings,
            suppressed_findings: stats.suppressed_findings,
            dropped_dependencies: stats.dropped_dependencies,
            evicted_locks: stats.evicted_locks,
            evicted_dependencies: stats.evicted_dependencies,
            lock_facts_not_kept: stats.lock_facts_not_kept,
            lock_memory: ReuseStats {
                watches_refused: self.probes.processes_refused_watches(),
                ..self.reuse.stats
            },
            unprocessed_records: self.unprocessed,
            dropped_records: self.pending.dropped,
            unopened_files: crate::host::files::unopened(),
            handoff_cycles: stats.handoff_cycles,
            unparsable_processes: self.enricher.pythons.unparsable_processes(),
            stalled_memory_reads: crate::host::remote::stalls(),
            forgotten_processes: stats.forgotten_processes,
            forgotten_dependencies: stats.forgotten_dependencies,
            probed_files: self
                .probes
                .probed_files()
                .map(|p| p.display().to_string())
                .collect(),
            processes_probed_late: self.probes.late_links().processes,
            probe_delay_max_ms: self.probes.late_links().max_delay.as_secs_f64() * 1e3,
            processes_not_probed: self.probes.processes_refused_links(),
            budget: self
                .slicer
                .as_ref()
                .map(|s| s.controller.stats(self.started.elapsed())),
            duration_s: self.started.elapsed().as_secs_f64(),
        };
        if self.reporter.format() == crate::report::Format::Json {
            let graph = self.detector.class_graph(graph::MAX_WRITTEN).into();
            self.reporter
                .graph(&graph)
                .context("cannot write the report")?;
        }
        self.reporter
            .summary(&summary)
            .context("cannot write the report")
    }
}

/// The next SIGTERM or SIGINT (listened to from now on); never, if they
/// cannot be listened to.
async fn any_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Monotonic clock in ns, as `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
