//! Findings built from verdicts: locks named, stacks symbolized, once per
//! finding (through [`Resolve`]).

use std::collections::HashMap;

use tracer_analysis::detector::{self, Verdict};
use tracer_analysis::model::{Dependency, LockInstance as LockId, LockKind};

use crate::enrich::Enricher;
use crate::report::blocking::{self, Scan};
use crate::report::findings::{
    kind_name, Edge, Finding, Inversion, Lock, SameClassNesting, SelfDeadlock,
};
use crate::symbolize::Resolve;

/// The finding of a verdict. Deadlocks and hangs describe live threads
/// (their state, stacks and held locks) as the last scan saw them.
/// `restored` gives the evidence of a class dependency restored from an
/// earlier run's state by its tag.
pub fn finding(
    verdict: &Verdict,
    enricher: &mut Enricher,
    scan: &Scan<'_>,
    restored: &dyn Fn(u64) -> Option<Edge>,
) -> Finding {
    match verdict {
        Verdict::Inversion(inv) => inversion_with(inv, enricher, restored),
        Verdict::SameClassNesting {
            id,
            dep,
            class,
            opposite,
        } => same_class_nesting(dep, opposite.as_deref(), class, enricher, *id),
        Verdict::SelfDeadlock { id, dep } => self_deadlock(dep, enricher, *id),
        Verdict::Deadlock {
            id,
            threads,
            inversion,
        } => blocking::deadlock(*id, threads, *inversion, scan, enricher),
        Verdict::Hang {
            id,
            waiting,
            holders,
        } => blocking::hang(*id, waiting, holders, scan, enricher),
    }
}

/// The finding for `dep`, whose two locks are of class `class`: a note, or
/// a warning when `opposite` nested two of them the other way.
pub fn same_class_nesting(
    dep: &Dependency,
    opposite: Option<&Dependency>,
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
        origin: names.resolve.origin(dep.pid),
        tid: dep.tid,
        thread: dep.thread.to_string(),
        class: class.to_string(),
        held,
        requested,
        stack: names.resolve.frames(dep.pid, &dep.stack, true),
        held_stack: names.resolve.frames(dep.pid, &dep.held_stack, false),
        python_stack: dep.python.to_vec(),
        note: opposite.is_none(),
        opposite: opposite.map(|o| Box::new(names.edge(o))),
    })
}

/// The finding for a self-deadlock observed as `dep` (`from == to`).
pub fn self_deadlock(dep: &Dependency, resolve: &mut dyn Resolve, id: u64) -> Finding {
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
        origin: names.resolve.origin(dep.pid),
        tid: dep.tid,
        thread: dep.thread.to_string(),
        lock,
        stack: names.resolve.frames(dep.pid, &dep.stack, true),
        held_stack: names.resolve.frames(dep.pid, &dep.held_stack, false),
    })
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
        let image = self.resolve.image_lock(id.pid, id.addr);
        Lock {
            addr: id.addr,
            kind: kind_name(kind),
            name,
            shared,
            build_id: image
                .as_ref()
                .and_then(|i| Some(i.build_id.as_deref()?.to_string())),
            file_offset: image.map(|i| i.file_offset),
            pid: id.pid,
        }
    }

    /// One dependency, named and symbolized.
    fn edge(&mut self, d: &Dependency) -> Edge {
        Edge {
            from: self.lock(d.from, d.from_kind),
            to: self.lock(d.to, d.to_kind),
            pid: d.pid,
            tid: d.tid,
            comm: self.comm(d.pid),
            origin: self.resolve.origin(d.pid),
            thread: d.thread.to_string(),
            stack: self.resolve.frames(d.pid, &d.stack, true),
            held_stack: self.resolve.frames(d.pid, &d.held_stack, false),
            held_python_stack: d.held_python.iter().map(|f| (**f).clone()).collect(),
            python_stack: d.python.to_vec(),
            restored: None,
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

/// One dependency, named and symbolized (for the agent's state).
pub fn edge(dep: &Dependency, resolve: &mut dyn Resolve) -> Edge {
    Names {
        resolve,
        locks: HashMap::new(),
        comms: HashMap::new(),
    }
    .edge(dep)
}

/// The finding for a cycle, symbolized with `resolve`.
pub fn inversion(cycle: &detector::Inversion, resolve: &mut dyn Resolve) -> Finding {
    inversion_with(cycle, resolve, &|_| None)
}

/// The finding for a cycle, some of whose class dependencies may have been
/// restored from an earlier run: `restored` gives their evidence by tag
/// (a tag it does not know is named as a dependency of this run would be).
pub fn inversion_with(
    cycle: &detector::Inversion,
    resolve: &mut dyn Resolve,
    restored: &dyn Fn(u64) -> Option<Edge>,
) -> Finding {
    let mut names = Names {
        resolve,
        locks: HashMap::new(),
        comms: HashMap::new(),
    };
    let edges: Vec<Edge> = cycle
        .edges
        .iter()
        .enumerate()
        .map(
            |(i, d)| match cycle.restored.get(i).copied().flatten().and_then(restored) {
                Some(saved) => saved,
                None => names.edge(d),
            },
        )
        .collect();
    let locks = edges.iter().map(|e| e.from.clone()).collect();
    // The finding's process is one of this run's, when one took part.
    let live = edges
        .iter()
        .find(|e| e.restored.is_none())
        .or(edges.first());
    let (pid, comm, origin) = match live {
        Some(e) => (e.pid, e.comm.clone(), e.origin.clone()),
        None => (0, String::new(), None),
    };
    let gate = cycle.gate.map(|g| names.lock(g, LockKind::Mutex));
    Finding::LockOrderInversion(Inversion {
        id: cycle.id,
        pid,
        comm,
        origin,
        locks,
        cycle: edges,
        guarded: gate.is_some(),
        gate,
        level: cycle.level,
        classes: cycle.classes.clone(),
    })
}
