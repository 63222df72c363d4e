//! Deadlock and hang reports, and `locktrace snapshot`: each thread with the
//! lock it waits for, the locks it holds (and where it took them) and its
//! current stack, unwound from its own memory (the thread is asleep, so that
//! is reliable), with its Python stack in a Python process.

use std::collections::HashMap;

use tracer_analysis::model::{LockKind, Waiter};
use tracer_analysis::waits::{self, Holder, Waiting};

use crate::enrich::Enricher;
use crate::host::{proc, waitfor};
use crate::kernel::decode::lock_kind;
use crate::kernel::maps::HeldByThread;
use crate::report::findings::{
    kind_name, Deadlock, Finding, HeldReport, Lock, LockWaitTimeout, ThreadReport,
};
use crate::symbolize::Resolve;

/// What a scan of the wait-for graph saw: the kernel side's held-lock
/// stacks and every waiter (a thread may hold locks it was not seen taking,
/// that others wait for with it as owner).
#[derive(Clone, Copy)]
pub struct Scan<'a> {
    pub held: &'a HeldByThread,
    pub waiters: &'a [Waiter],
}

impl Scan<'_> {
    fn by_tid(&self) -> HashMap<u32, &Waiter> {
        self.waiters.iter().map(|w| (w.blocked.tid, w)).collect()
    }
}

/// A deadlock verdict's finding.
pub fn deadlock(
    id: u64,
    threads: &[Waiting],
    inversion: Option<u64>,
    scan: &Scan<'_>,
    en: &mut Enricher,
) -> Finding {
    let (held, by_tid) = (scan.held, scan.by_tid());
    let pid = threads.first().map_or(0, |t| t.waiter.blocked.pid);
    let threads = threads
        .iter()
        .map(|t| {
            let w = &t.waiter;
            describe(
                w.blocked.pid,
                w.blocked.tid,
                Some(w),
                t.waited_s,
                held,
                &by_tid,
                en,
            )
        })
        .collect();
    Finding::Deadlock(Deadlock {
        id,
        pid,
        comm: en.process_name(pid),
        origin: en.origin(pid),
        threads,
        inversion,
    })
}

/// A hang verdict's finding: the waiter, and what each holder is doing.
pub fn hang(
    id: u64,
    waiting: &Waiting,
    holders: &[Holder],
    scan: &Scan<'_>,
    en: &mut Enricher,
) -> Finding {
    let (held, by_tid) = (scan.held, scan.by_tid());
    let w = &waiting.waiter;
    let pid = w.blocked.pid;
    let waiter = describe(
        pid,
        w.blocked.tid,
        Some(w),
        waiting.waited_s,
        held,
        &by_tid,
        en,
    );
    let holders = holders
        .iter()
        .map(|h| {
            let as_waiter = h.waiting.as_ref().map(|hw| &hw.waiter);
            let waited = h.waiting.as_ref().and_then(|hw| hw.waited_s);
            let holder_pid = proc::tgid_of(h.tid).unwrap_or(pid);
            describe(holder_pid, h.tid, as_waiter, waited, held, &by_tid, en)
        })
        .collect();
    Finding::LockWaitTimeout(LockWaitTimeout {
        id,
        pid,
        comm: en.process_name(pid),
        origin: en.origin(pid),
        waiter,
        holders,
    })
}

/// Frames of a parked thread's stack in which its lock function must be: the
/// futex wait functions, then glibc's lock function.
const PARK_FRAMES: usize = 4;

/// Every blocked thread of `pids` and the deadlocks among them, once, with
/// no tracer running (`locktrace snapshot`): holders come from the owner
/// field of pthread mutexes.
pub fn snapshot(pids: &[u32], en: &mut Enricher) -> Vec<Finding> {
    let held = HeldByThread::new();
    let (waiters, others) = waitfor::scan(pids, &held);
    let waiters = en.pythons.resolve_import_waits(waiters);
    let by_tid: HashMap<u32, &Waiter> = waiters.iter().map(|w| (w.blocked.tid, w)).collect();
    let mut findings: Vec<Finding> = waiters
        .iter()
        .map(|w| {
            Finding::BlockedThread(describe(
                w.blocked.pid,
                w.blocked.tid,
                Some(w),
                None,
                &held,
                &by_tid,
                en,
            ))
        })
        .collect();
    // Threads glibc parked after the kernel refused their PI mutex: blocked
    // for good, on a mutex no probe named (the park word is on their
    // stack, the mutex's address only in a register).
    // Only when its stack says it is in a mutex lock function: a program's
    // own wait on a zero word of its stack looks the same to the futex.
    for b in others.iter().filter(|b| waitfor::parked_in_lock(b)) {
        let mut thread = describe(b.pid, b.tid, None, None, &held, &by_tid, en);
        let in_lock = thread.stack.iter().take(PARK_FRAMES).any(|f| {
            f.function.as_deref().is_some_and(|name| {
                [
                    "pthread_mutex_lock",
                    "pthread_mutex_clocklock",
                    "pthread_mutex_timedlock",
                ]
                .iter()
                .any(|lock| name.contains(lock))
            })
        });
        if in_lock {
            thread.refused_lock = true;
            findings.push(Finding::BlockedThread(thread));
        }
    }
    for (i, cycle) in waits::deadlocks(&waiters).into_iter().enumerate() {
        let pid = cycle[0].blocked.pid;
        let threads = cycle
            .iter()
            .map(|w| {
                describe(
                    w.blocked.pid,
                    w.blocked.tid,
                    Some(w),
                    None,
                    &held,
                    &by_tid,
                    en,
                )
            })
            .collect();
        findings.push(Finding::Deadlock(Deadlock {
            id: i as u64 + 1,
            pid,
            comm: en.process_name(pid),
            origin: en.origin(pid),
            threads,
            inversion: None,
        }));
    }
    findings
}

/// One thread: its state, what it waits for, what it holds, its stack.
fn describe(
    pid: u32,
    tid: u32,
    waiter: Option<&Waiter>,
    waiting_s: Option<f64>,
    held: &HeldByThread,
    waiters: &HashMap<u32, &Waiter>,
    en: &mut Enricher,
) -> ThreadReport {
    let (state, thread) = proc::thread_state(pid, tid);
    let lock = |en: &mut Enricher, pid: u32, addr: u64, kind: LockKind| {
        let image = en.image_lock(pid, addr);
        Lock {
            addr,
            kind: kind_name(kind),
            name: en.lock_name(pid, addr),
            shared: en.shared_identity(pid, addr),
            build_id: image
                .as_ref()
                .and_then(|i| Some(i.build_id.as_deref()?.to_string())),
            file_offset: image.map(|i| i.file_offset),
            pid,
        }
    };
    let mut holds: Vec<HeldReport> = held
        .get(&tid)
        .into_iter()
        .flatten()
        // A blocked thread's own request is on its stack already (pushed at
        // the lock call's entry): it is not held yet.
        .filter(|h| waiter.is_none_or(|w| h.addr != w.lock))
        // A mutex unlocked since it was taken (unlocks are not probed).
        .filter(|h| waitfor::still_held(pid, tid, h))
        .map(|h| HeldReport {
            lock: lock(en, pid, h.addr, lock_kind(h.kind)),
            taken_at: en.frames(pid, &[h.callsite], false),
            // The thread is blocked: the frame that took the lock still
            // runs (or its code object is alive), readable now.
            taken_at_python: en.pythons.resolve_held(pid, h).into_iter().collect(),
        })
        .collect();
    // Locks it holds that the tracer did not see taken (before it started):
    // those other threads wait for with this one as owner.
    // (The address is the waiter's: a process-shared mutex may be mapped
    // elsewhere in this process.)
    for w in waiters.values() {
        if w.holders.contains(&tid) && !holds.iter().any(|h| h.lock.addr == w.lock) {
            holds.push(HeldReport {
                lock: lock(en, w.blocked.pid, w.lock, w.kind),
                taken_at: Vec::new(),
                taken_at_python: Vec::new(),
            });
        }
    }
    let stack = match waitfor::syscall_registers(pid, tid) {
        Some((sp, pc)) => {
            let bytes = waitfor::read_stack(pid, sp);
            let addrs = en.symbolizer.unwind(pid, pc, sp, 0, &bytes);
            en.frames(pid, &addrs, true)
        }
        None => Vec::new(),
    };
    let python_stack = en.pythons.thread_stack(pid, tid);
    ThreadReport {
        pid,
        comm: en.process_name(pid),
        origin: en.origin(pid),
        tid,
        thread,
        state,
        waits_for: waiter.map(|w| lock(en, pid, w.lock, w.kind)),
        refused_lock: false,
        waiting_s,
        held_by: waiter.map(|w| w.holders.clone()).unwrap_or_default(),
        holds,
        stack,
        python_stack,
    }
}
