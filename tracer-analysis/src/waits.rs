//! The wait-for graph's rules: a cycle of waits is a deadlock, reported once
//! when two scans in a row see it; a wait longer than the hang threshold is
//! a hang, reported once per wait. The waits themselves are read from the
//! host (`/proc`, the kernel side's held-lock stacks) before they get here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::model::Waiter;

/// When each thread began its current futex wait (CLOCK_MONOTONIC ns), as
/// the kernel side recorded it: tid -> (futex word, start).
pub type WaitStarts = HashMap<u32, (u64, u64)>;

/// One scan of the wait-for graph.
pub struct WaitScan<'a> {
    pub waiters: Vec<Waiter>,
    pub starts: &'a WaitStarts,
    /// The time of the scan, on the collector's clock and on the kernel's
    /// (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`).
    pub now: Instant,
    pub now_ns: u64,
}

/// A thread of a verdict: its wait, and for how long (None: unknown, the
/// wait began before the tracer saw it and was never timed).
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub waiter: Waiter,
    pub waited_s: Option<f64>,
}

/// A holder of the lock a hung thread waits for.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    pub tid: u32,
    /// Its own wait, if it is blocked too.
    pub waiting: Option<Waiting>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WaitVerdict {
    /// Every thread waits for a lock the next one holds (the last for the
    /// first's).
    Deadlock(Vec<Waiting>),
    /// A thread blocked on a lock longer than the hang threshold.
    Hang {
        waiting: Waiting,
        holders: Vec<Holder>,
    },
}

/// A wait: (tid, lock).
type WaitKey = (u32, u64);

/// What the last scan saw blocked, for the agent's gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockedNow {
    /// Threads in a deadlock reported (seen by two scans in a row) and
    /// still there.
    pub deadlocked_threads: u64,
    /// Waits longer than the hang threshold, deadlocked threads' included.
    pub waits_over_threshold: u64,
}

pub struct Watchdog {
    hang_threshold: Duration,
    /// Cycles of the previous scan: a cycle is reported when two scans in a
    /// row see it (one scan reads threads one after the other, not at one
    /// instant).
    previous: HashSet<Vec<WaitKey>>,
    reported_deadlocks: HashSet<Vec<WaitKey>>,
    /// Waits reported as hangs, until they end.
    reported_hangs: HashSet<WaitKey>,
    /// When each wait was first seen (for waits the kernel side did not
    /// time: begun before the tracer started).
    first_seen: HashMap<WaitKey, Instant>,
    now: BlockedNow,
}

impl Watchdog {
    pub fn set_hang_threshold(&mut self, threshold: Duration) {
        self.hang_threshold = threshold;
    }

    pub fn new(hang_threshold: Duration) -> Self {
        Watchdog {
            hang_threshold,
            previous: HashSet::new(),
            reported_deadlocks: HashSet::new(),
            reported_hangs: HashSet::new(),
            first_seen: HashMap::new(),
            now: BlockedNow::default(),
        }
    }

    /// What the last scan saw blocked.
    pub fn blocked_now(&self) -> BlockedNow {
        self.now
    }

    /// Judges one scan: the deadlocks and hangs not reported before.
    pub fn check(&mut self, scan: &WaitScan<'_>) -> Vec<WaitVerdict> {
        let live: HashSet<WaitKey> = scan.waiters.iter().map(key).collect();
        self.first_seen.retain(|k, _| live.contains(k));
        self.reported_hangs.retain(|k| live.contains(k));
        for k in &live {
            self.first_seen.entry(*k).or_insert(scan.now);
        }
        let waiting = |dog: &Self, w: &Waiter| Waiting {
            waiter: w.clone(),
            waited_s: dog.waited(w, scan),
        };

        let mut verdicts = Vec::new();
        let mut cycles_now = HashSet::new();
        for cycle in deadlocks(&scan.waiters) {
            let k: Vec<WaitKey> = cycle.iter().map(key).collect();
            cycles_now.insert(k.clone());
            if !self.previous.contains(&k) || self.reported_deadlocks.contains(&k) {
                continue;
            }
            self.reported_deadlocks.insert(k);
            let threads = cycle.iter().map(|w| waiting(self, w)).collect();
            verdicts.push(WaitVerdict::Deadlock(threads));
        }

        let by_tid: HashMap<u32, &Waiter> =
            scan.waiters.iter().map(|w| (w.blocked.tid, w)).collect();
        let mut hangs = Vec::new();
        for w in &scan.waiters {
            let k = key(w);
            let Some(waited) = self.waited(w, scan) else {
                continue;
            };
            if waited < self.hang_threshold.as_secs_f64() || self.reported_hangs.contains(&k) {
                continue;
            }
            // A thread of a reported deadlock is not reported again.
            if self.reported_deadlocks.iter().any(|d| d.contains(&k)) {
                continue;
            }
            hangs.push(k);
            let holders = w
                .holders
                .iter()
                .map(|&tid| Holder {
                    tid,
                    waiting: by_tid.get(&tid).map(|hw| waiting(self, hw)),
                })
                .collect();
            verdicts.push(WaitVerdict::Hang {
                waiting: Waiting {
                    waiter: w.clone(),
                    waited_s: Some(waited),
                },
                holders,
            });
        }
        self.reported_hangs.extend(hangs);
        self.now = BlockedNow {
            deadlocked_threads: cycles_now
                .iter()
                .filter(|c| self.reported_deadlocks.contains(*c))
                .map(|c| c.len() as u64)
                .sum(),
            waits_over_threshold: scan
                .waiters
                .iter()
                .filter(|w| {
                    self.waited(w, scan)
                        .is_some_and(|s| s >= self.hang_threshold.as_secs_f64())
                })
                .count() as u64,
        };
        self.previous = cycles_now;
        verdicts
    }

    fn waited(&self, w: &Waiter, scan: &WaitScan<'_>) -> Option<f64> {
        match scan.starts.get(&w.blocked.tid) {
            Some(&(uaddr, start)) if uaddr == w.blocked.uaddr => {
                Some(scan.now_ns.saturating_sub(start) as f64 / 1e9)
            }
            // Begun before the tracer saw it: at least since first seen.
            _ => self
                .first_seen
                .get(&key(w))
                .map(|t| scan.now.duration_since(*t).as_secs_f64()),
        }
    }
}

fn key(w: &Waiter) -> WaitKey {
    (w.blocked.tid, w.lock)
}

/// The elementary cycles of the wait-for graph (tid -> holders), each as the
/// waiters in order, starting at its smallest tid: every thread of a cycle
/// waits for the next one's lock, and the last for the first's.
pub fn deadlocks(waiters: &[Waiter]) -> Vec<Vec<Waiter>> {
    let by_tid: HashMap<u32, &Waiter> = waiters.iter().map(|w| (w.blocked.tid, w)).collect();
    let mut cycles = Vec::new();
    let mut seen: BTreeSet<Vec<u32>> = BTreeSet::new();
    let mut starts: Vec<u32> = by_tid.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        // Depth-first over waits, only through tids greater than the start,
        // so that each cycle is found once, from its smallest tid.
        let mut path = vec![start];
        // (tid, index of the next holder to follow)
        let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
        while let Some(top) = stack.len().checked_sub(1) {
            let (tid, next) = stack[top];
            let holders = &by_tid[&tid].holders;
            if next >= holders.len() {
                stack.pop();
                path.pop();
                continue;
            }
            stack[top].1 += 1;
            let h = holders[next];
            if h == start {
                if seen.insert(path.clone()) {
                    cycles.push(path.iter().map(|t| by_tid[t].clone()).collect());
                }
            } else if h > start && by_tid.contains_key(&h) && !path.contains(&h) && path.len() < 64
            {
                path.push(h);
                stack.push((h, 0));
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Blocked, LockKind};

    fn w(tid: u32, lock: u64, holders: &[u32]) -> Waiter {
        Waiter {
            blocked: Blocked {
                pid: 1,
                tid,
                uaddr: lock,
                op: 0,
                private: true,
                sp: 0,
                pc: 0,
            },
            lock,
            kind: LockKind::Mutex,
            holders: holders.to_vec(),
        }
    }

    #[test]
    fn finds_each_wait_cycle_once() {
        // 10 -> 11 -> 12 -> 10, and 13 -> 10 (waits on the cycle, not in it).
        let waiters = vec![
            w(10, 0xa, &[11]),
            w(11, 0xb, &[12]),
            w(12, 0xc, &[10]),
            w(13, 0xa, &[10]),
        ];
        let cycles = deadlocks(&waiters);
        assert_eq!(cycles.len(), 1);
        let tids: Vec<u32> = cycles[0].iter().map(|w| w.blocked.tid).collect();
        assert_eq!(tids, [10, 11, 12]);
    }

    fn wt(tid: u32, holders: &[u32]) -> Waiter {
        Waiter {
            blocked: Blocked {
                pid: 1,
                tid,
                uaddr: 0x1000 + tid as u64,
                op: 0,
                private: true,
                sp: 0,
                pc: 0,
            },
            lock: 0x1000 + tid as u64,
            kind: LockKind::Mutex,
            holders: holders.to_vec(),
        }
    }

    #[test]
    fn finds_each_cycle_once_from_its_smallest_tid() {
        let tids = |c: &Vec<Waiter>| c.iter().map(|w| w.blocked.tid).collect::<Vec<_>>();
        // 10 -> 11 -> 10, and 12 waits for 10 (blocked behind the cycle).
        let cycles = deadlocks(&[wt(10, &[11]), wt(11, &[10]), wt(12, &[10])]);
        assert_eq!(
            cycles.iter().map(tids).collect::<Vec<_>>(),
            vec![vec![10, 11]]
        );
        // Three threads.
        let cycles = deadlocks(&[wt(7, &[5]), wt(5, &[6]), wt(6, &[7])]);
        assert_eq!(
            cycles.iter().map(tids).collect::<Vec<_>>(),
            vec![vec![5, 6, 7]]
        );
        // No cycle: a chain.
        assert!(deadlocks(&[wt(1, &[2]), wt(2, &[3])]).is_empty());
    }

    fn scan<'a>(waiters: Vec<Waiter>, starts: &'a WaitStarts, t0: Instant, s: u64) -> WaitScan<'a> {
        WaitScan {
            waiters,
            starts,
            now: t0 + Duration::from_secs(s),
            now_ns: s * 1_000_000_000,
        }
    }

    #[test]
    fn a_deadlock_is_reported_once_after_two_scans() {
        let mut dog = Watchdog::new(Duration::from_secs(10));
        let starts = WaitStarts::new();
        let t0 = Instant::now();
        let pair = || vec![w(10, 0xa, &[11]), w(11, 0xb, &[10])];
        assert!(dog.check(&scan(pair(), &starts, t0, 0)).is_empty());
        let verdicts = dog.check(&scan(pair(), &starts, t0, 1));
        assert_eq!(verdicts.len(), 1);
        let WaitVerdict::Deadlock(threads) = &verdicts[0] else {
            panic!("not a deadlock: {verdicts:?}");
        };
        assert_eq!(threads.len(), 2);
        // Waits begun before tracing: timed from the first scan.
        assert_eq!(threads[0].waited_s, Some(1.0));
        assert_eq!(dog.blocked_now().deadlocked_threads, 2);
        // Never again, and its threads are not hangs either (but their
        // waits are past the threshold).
        assert!(dog.check(&scan(pair(), &starts, t0, 60)).is_empty());
        assert_eq!(
            dog.blocked_now(),
            BlockedNow {
                deadlocked_threads: 2,
                waits_over_threshold: 2
            }
        );
        // The deadlock is gone (its process killed): nothing blocked.
        dog.check(&scan(vec![], &starts, t0, 61));
        assert_eq!(dog.blocked_now(), BlockedNow::default());
    }

    #[test]
    fn a_wait_past_the_threshold_is_one_hang_until_it_ends() {
        let mut dog = Watchdog::new(Duration::from_secs(10));
        // Timed by the kernel side: waiting since 5 s.
        let starts = WaitStarts::from([(10, (0xa, 5_000_000_000))]);
        let t0 = Instant::now();
        let one = || vec![w(10, 0xa, &[11])];
        assert!(dog.check(&scan(one(), &starts, t0, 14)).is_empty());
        assert_eq!(dog.blocked_now().waits_over_threshold, 0);
        let verdicts = dog.check(&scan(one(), &starts, t0, 16));
        let [WaitVerdict::Hang { waiting, holders }] = verdicts.as_slice() else {
            panic!("not one hang: {verdicts:?}");
        };
        assert_eq!(waiting.waited_s, Some(11.0));
        assert_eq!(
            holders,
            &[Holder {
                tid: 11,
                waiting: None
            }]
        );
        assert!(dog.check(&scan(one(), &starts, t0, 30)).is_empty());
        assert_eq!(
            dog.blocked_now(),
            BlockedNow {
                deadlocked_threads: 0,
                waits_over_threshold: 1
            }
        );
        // The wait ends, and a new one on the same lock is a new hang.
        assert!(dog.check(&scan(vec![], &starts, t0, 31)).is_empty());
        let starts = WaitStarts::from([(10, (0xa, 40_000_000_000))]);
        assert_eq!(dog.check(&scan(one(), &starts, t0, 51)).len(), 1);
    }
}
