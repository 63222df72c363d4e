//! What the collector may keep, per traced process and in all: one kind of
//! bound for every table a traced program can grow (lock instances,
//! dependencies, records waiting to be processed). A program that makes
//! locks or lock orders without end, or more records than the collector can
//! process, fills its own share; what does not fit is dropped and counted
//! (the summary says how many), and the other processes keep theirs.

use crate::FastMap;

/// A bound on one kind of thing: at most `per_process` for any one process,
/// at most `total` in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub per_process: usize,
    pub total: usize,
}

impl Limit {
    /// Whether `new` more fit beside `of_process` of the process's and
    /// `in_all` of everyone's.
    pub fn admits(&self, of_process: usize, in_all: usize, new: usize) -> bool {
        of_process.saturating_add(new) <= self.per_process
            && in_all.saturating_add(new) <= self.total
    }
}

/// Lock instances in the instance graph (about 520 bytes each: at most
/// about 100 MB per process, 1 GB in all).
pub const LOCKS: Limit = Limit {
    per_process: 200_000,
    total: 2_000_000,
};

/// Dependencies in the instance graph (about 200 bytes each, plus the
/// request's stack when it made only one: at most about 200 MB per
/// process, 800 MB in all).
pub const DEPENDENCIES: Limit = Limit {
    per_process: 500_000,
    total: 2_000_000,
};

/// Locks whose class, init site and init stack the collector keeps (about
/// 400 bytes each with the stack copied at the init: at most about 80 MB
/// per process, 400 MB in all). Past it a lock's class is worked out again
/// at each of its dependencies, and its init site is not kept: it is then
/// classed by its first use, which takes part in no class-level finding (a
/// lost finding, never a false one).
pub const LOCK_FACTS: Limit = Limit {
    per_process: 200_000,
    total: 1_000_000,
};

/// Bytes of records taken from the kernel side and not processed yet (a
/// record copies up to 12 KiB of its thread's stack). Beyond a process's
/// share its new dependency records are dropped; beyond the total, nothing
/// more is taken in (the kernel side then defers or loses records, and
/// counts them). The share is half the total: a burst of new dependencies
/// from one process (20,000 in a tight loop, `trust.rs`) outran a 32 MiB
/// share on a loaded machine and lost 118 of them.
pub const PENDING_BYTES: Limit = Limit {
    per_process: 64 << 20,
    total: 128 << 20,
};

/// Amounts held against a [`Limit`], by process and in all, with what was
/// refused.
#[derive(Debug)]
pub struct Tally {
    limit: Limit,
    by_pid: FastMap<u32, usize>,
    total: usize,
    /// Things refused because a share was full.
    pub dropped: u64,
}

impl Tally {
    pub fn new(limit: Limit) -> Self {
        Tally {
            limit,
            by_pid: FastMap::default(),
            total: 0,
            dropped: 0,
        }
    }

    /// Holds `n` for process `pid` if its share and the total have room;
    /// else counts one drop and holds nothing.
    pub fn take(&mut self, pid: u32, n: usize) -> bool {
        if !self.limit.admits(self.of(pid), self.total, n) {
            self.dropped += 1;
            return false;
        }
        self.force(pid, n);
        true
    }

    /// Holds `n` for `pid` whatever the limit (what must never be dropped:
    /// it frees memory, or is rare), so that it counts against the others.
    pub fn force(&mut self, pid: u32, n: usize) {
        *self.by_pid.entry(pid).or_default() += n;
        self.total += n;
    }

    /// Gives back `n` held for `pid`.
    pub fn give_back(&mut self, pid: u32, n: usize) {
        if let Some(held) = self.by_pid.get_mut(&pid) {
            let n = n.min(*held);
            *held -= n;
            self.total -= n;
            if *held == 0 {
                self.by_pid.remove(&pid);
            }
        }
    }

    /// What `pid` holds.
    pub fn of(&self, pid: u32) -> usize {
        self.by_pid.get(&pid).copied().unwrap_or(0)
    }

    /// What everyone holds.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether the total is at its limit: take nothing more in.
    pub fn is_full(&self) -> bool {
        self.total >= self.limit.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limit = Limit {
        per_process: 10,
        total: 25,
    };

    #[test]
    fn a_process_fills_its_share_and_the_others_keep_theirs() {
        let mut t = Tally::new(SMALL);
        assert!(t.take(1, 6));
        assert!(t.take(1, 4));
        assert!(!t.take(1, 1), "process 1's share is full");
        assert_eq!(t.dropped, 1);
        assert!(t.take(2, 10));
        assert!(t.take(3, 5));
        assert!(!t.take(3, 1), "the total is full");
        assert!(t.is_full());
        assert_eq!(t.dropped, 2);
        t.give_back(1, 4);
        assert!(t.take(3, 4));
        assert_eq!(t.of(3), 9);
        assert_eq!(t.total(), 25);
    }

    #[test]
    fn forced_amounts_count_and_giving_back_never_underflows() {
        let mut t = Tally::new(SMALL);
        t.force(1, 30);
        assert!(t.is_full());
        assert!(!t.take(2, 1));
        t.give_back(1, 100);
        assert_eq!((t.of(1), t.total()), (0, 0));
        t.give_back(7, 3);
        assert_eq!(t.total(), 0);
        assert!(t.take(2, 1));
    }
}
