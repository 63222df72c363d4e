//! Real deadlocks and hangs, from the wait-for graph of [`crate::waitfor`]:
//! a cycle of waits is a deadlock, reported once; a wait longer than the
//! hang threshold is a `lock_wait_timeout`, reported once per wait. Each
//! thread is shown with the lock it waits for, the locks it holds (and where
//! it took them) and its current stack, unwound from its own memory (the
//! thread is asleep, so that is reliable).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::model::{LockId, Resolve};
use crate::report::{self, Deadlock, Finding, HeldReport, Lock, LockWaitTimeout, ThreadReport};
use crate::symbolize::Symbolizer;
use crate::waitfor::{self, HeldByThread, Waiter};

/// When each thread began its current futex wait (CLOCK_MONOTONIC ns), as
/// the kernel side recorded it: tid -> (futex word, start).
pub type WaitStarts = HashMap<u32, (u64, u64)>;

/// A wait: (tid, lock).
type WaitKey = (u32, u64);

pub struct Watchdog {
    hang_threshold: Duration,
    /// Cycles of the previous scan: a cycle is reported when two scans in a
    /// row see it (one scan reads threads one after the other, not at one
    /// instant).
    previous: HashSet<Vec<WaitKey>>,
    reported_deadlocks: HashSet<Vec<WaitKey>>,
    /// Waits reported as hangs, until they end.
    reported_hangs: HashSet<WaitKey>,
    /// When this watchdog first saw each wait (for waits the kernel side did
    /// not time: begun before the tracer started).
    first_seen: HashMap<WaitKey, Instant>,
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

impl Watchdog {
    pub fn new(hang_threshold: Duration) -> Self {
        Watchdog {
            hang_threshold,
            previous: HashSet::new(),
            reported_deadlocks: HashSet::new(),
            reported_hangs: HashSet::new(),
            first_seen: HashMap::new(),
        }
    }

    /// One scan of `pids`. `inversion_of` gives the id of an inversion
    /// reported for a set of locks; `next_id` numbers new findings.
    pub fn check(
        &mut self,
        pids: &[u32],
        held: &HeldByThread,
        starts: &WaitStarts,
        sym: &mut Symbolizer,
        inversion_of: &dyn Fn(&BTreeSet<LockId>) -> Option<u64>,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<Finding> {
        let waiters = sym
            .pythons
            .resolve_import_waits(waitfor::waiters(pids, held));
        let now = Instant::now();
        let now_ns = monotonic_ns();
        let live: HashSet<WaitKey> = waiters.iter().map(|w| (w.blocked.tid, w.lock)).collect();
        self.first_seen.retain(|k, _| live.contains(k));
        self.reported_hangs.retain(|k| live.contains(k));
        for k in &live {
            self.first_seen.entry(*k).or_insert(now);
        }
        let waited = |w: &Waiter, first_seen: &HashMap<WaitKey, Instant>| -> Option<f64> {
            match starts.get(&w.blocked.tid) {
                Some(&(uaddr, start)) if uaddr == w.blocked.uaddr => {
                    Some(now_ns.saturating_sub(start) as f64 / 1e9)
                }
                // Begun before the tracer saw it: at least since first seen.
                _ => first_seen
                    .get(&(w.blocked.tid, w.lock))
                    .map(|t| now.duration_since(*t).as_secs_f64()),
            }
        };
        let by_tid: HashMap<u32, &Waiter> = waiters.iter().map(|w| (w.blocked.tid, w)).collect();
        if !waiters.is_empty() {
            sym.sync();
        }

        let mut findings = Vec::new();
        let mut cycles_now = HashSet::new();
        for cycle in waitfor::deadlocks(&waiters) {
            let key: Vec<WaitKey> = cycle.iter().map(|w| (w.blocked.tid, w.lock)).collect();
            cycles_now.insert(key.clone());
            if !self.previous.contains(&key) || self.reported_deadlocks.contains(&key) {
                continue;
            }
            self.reported_deadlocks.insert(key);
            let pid = cycle[0].blocked.pid;
            let locks: BTreeSet<LockId> = cycle
                .iter()
                .map(|w| LockId {
                    pid: w.blocked.pid,
                    addr: w.lock,
                })
                .collect();
            let threads = cycle
                .iter()
                .map(|w| {
                    let waiting = waited(w, &self.first_seen);
                    describe(
                        w.blocked.pid,
                        w.blocked.tid,
                        Some(w),
                        waiting,
                        held,
                        &by_tid,
                        sym,
                    )
                })
                .collect();
            findings.push(Finding::Deadlock(Deadlock {
                id: next_id(),
                pid,
                comm: sym.process_name(pid),
                threads,
                inversion: inversion_of(&locks),
            }));
        }
        self.previous = cycles_now;

        for w in &waiters {
            let key = (w.blocked.tid, w.lock);
            let Some(waiting) = waited(w, &self.first_seen) else {
                continue;
            };
            if waiting < self.hang_threshold.as_secs_f64() || self.reported_hangs.contains(&key) {
                continue;
            }
            // A thread of a reported deadlock is not reported again.
            if self.reported_deadlocks.iter().any(|d| d.contains(&key)) {
                continue;
            }
            self.reported_hangs.insert(key);
            let pid = w.blocked.pid;
            let waiter = describe(
                pid,
                w.blocked.tid,
                Some(w),
                Some(waiting),
                held,
                &by_tid,
                sym,
            );
            let holders = w
                .holders
                .iter()
                .map(|&h| {
                    let as_waiter = by_tid.get(&h).copied();
                    let waiting = as_waiter.and_then(|hw| waited(hw, &self.first_seen));
                    let holder_pid = waitfor::tgid_of(h).unwrap_or(pid);
                    describe(holder_pid, h, as_waiter, waiting, held, &by_tid, sym)
                })
                .collect();
            findings.push(Finding::LockWaitTimeout(LockWaitTimeout {
                id: next_id(),
                pid,
                comm: sym.process_name(pid),
                waiter,
                holders,
            }));
        }
        findings
    }
}

/// Every blocked thread of `pids` and the deadlocks among them, once, with
/// no tracer running (`locktrace snapshot`): holders come from the owner
/// field of pthread mutexes.
pub fn snapshot(pids: &[u32], sym: &mut Symbolizer) -> Vec<Finding> {
    let held = HeldByThread::new();
    let waiters = sym
        .pythons
        .resolve_import_waits(waitfor::waiters(pids, &held));
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
                sym,
            ))
        })
        .collect();
    for (i, cycle) in waitfor::deadlocks(&waiters).into_iter().enumerate() {
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
                    sym,
                )
            })
            .collect();
        findings.push(Finding::Deadlock(Deadlock {
            id: i as u64 + 1,
            pid,
            comm: sym.process_name(pid),
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
    sym: &mut Symbolizer,
) -> ThreadReport {
    let (state, thread) = waitfor::thread_state(pid, tid);
    let lock = |sym: &mut Symbolizer, addr: u64, kind| Lock {
        addr,
        kind: report::kind_name(kind),
        name: sym.lock_name(pid, addr),
        shared: sym.shared_identity(pid, addr),
        pid,
    };
    let mut holds: Vec<HeldReport> = held
        .get(&tid)
        .into_iter()
        .flatten()
        // A blocked thread's own request is on its stack already (pushed at
        // the lock call's entry): it is not held yet.
        .filter(|h| waiter.is_none_or(|w| h.addr != w.lock))
        .map(|h| {
            let kind = crate::ingest::lock_kind(h.kind);
            HeldReport {
                lock: lock(sym, h.addr, kind),
                taken_at: sym.frames(pid, &[h.callsite], false),
            }
        })
        .collect();
    // Locks it holds that the tracer did not see taken (before it started):
    // those other threads wait for with this one as owner.
    // (The address is the waiter's: a process-shared mutex may be mapped
    // elsewhere in this process.)
    for w in waiters.values() {
        if w.holders.contains(&tid) && !holds.iter().any(|h| h.lock.addr == w.lock) {
            let wpid = w.blocked.pid;
            holds.push(HeldReport {
                lock: Lock {
                    addr: w.lock,
                    kind: report::kind_name(w.kind),
                    name: sym.lock_name(wpid, w.lock),
                    shared: sym.shared_identity(wpid, w.lock),
                    pid: wpid,
                },
                taken_at: Vec::new(),
            });
        }
    }
    let stack = match waitfor::syscall_registers(pid, tid) {
        Some((sp, pc)) => {
            let bytes = waitfor::read_stack(pid, sp);
            let addrs = sym.unwind(pid, pc, sp, 0, &bytes);
            sym.frames(pid, &addrs, true)
        }
        None => Vec::new(),
    };
    let python_stack = sym.pythons.thread_stack(pid, tid);
    ThreadReport {
        pid,
        comm: sym.process_name(pid),
        tid,
        thread,
        state,
        waits_for: waiter.map(|w| lock(sym, w.lock, w.kind)),
        waiting_s,
        held_by: waiter.map(|w| w.holders.clone()).unwrap_or_default(),
        holds,
        stack,
        python_stack,
    }
}
