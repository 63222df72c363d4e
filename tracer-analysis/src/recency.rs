//! The instance graph's locks by when a dependency last used them: at the
//! memory cap the coldest go first (lockdep has no such need: its graph
//! holds classes, which a kernel has few of; a host's lock instances are
//! without end). "Used" means seen in a dependency the kernel side sent,
//! the only traffic that reaches the collector (it sends each dependency
//! once): a lock whose pairs are all known is as cold as one never taken
//! again, and comes back, with its dependencies, if it is taken in a new
//! pair or after its eviction (the kernel side forgets the evicted ones).

use std::collections::BTreeSet;

use crate::model::LockIdentity;
use crate::FastMap;

#[derive(Default)]
pub struct Recency {
    tick: u64,
    /// Each lock's last use.
    at: FastMap<LockIdentity, u64>,
    /// Locks by last use, oldest first: all of them, and each process's
    /// own (a lock in shared memory belongs to none).
    all: BTreeSet<(u64, LockIdentity)>,
    by_pid: FastMap<u32, BTreeSet<(u64, LockIdentity)>>,
}

fn owner(lock: LockIdentity) -> Option<u32> {
    match lock {
        LockIdentity::Private(l) => Some(l.pid),
        LockIdentity::Shared(_) => None,
    }
}

impl Recency {
    /// `lock` was used now.
    pub fn touch(&mut self, lock: LockIdentity) {
        self.remove(lock);
        self.tick += 1;
        self.at.insert(lock, self.tick);
        self.all.insert((self.tick, lock));
        if let Some(pid) = owner(lock) {
            self.by_pid
                .entry(pid)
                .or_default()
                .insert((self.tick, lock));
        }
    }

    /// `lock` left the graph.
    pub fn remove(&mut self, lock: LockIdentity) {
        let Some(tick) = self.at.remove(&lock) else {
            return;
        };
        self.all.remove(&(tick, lock));
        if let Some(pid) = owner(lock) {
            if let Some(of_pid) = self.by_pid.get_mut(&pid) {
                of_pid.remove(&(tick, lock));
                if of_pid.is_empty() {
                    self.by_pid.remove(&pid);
                }
            }
        }
    }

    /// Every lock of process `pid` left the graph.
    pub fn remove_process(&mut self, pid: u32) {
        for (tick, lock) in self.by_pid.remove(&pid).unwrap_or_default() {
            self.at.remove(&lock);
            self.all.remove(&(tick, lock));
        }
    }

    /// The lock used longest ago: of process `pid`, or of all.
    pub fn coldest(&self, pid: Option<u32>) -> Option<LockIdentity> {
        let first = match pid {
            Some(pid) => self.by_pid.get(&pid)?.first(),
            None => self.all.first(),
        };
        first.map(|&(_, lock)| lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LockInstance;

    fn lock(pid: u32, addr: u64) -> LockIdentity {
        LockIdentity::Private(LockInstance { pid, addr })
    }

    #[test]
    fn the_coldest_is_the_one_used_longest_ago() {
        let mut r = Recency::default();
        for l in [
            lock(1, 0xa),
            lock(2, 0xb),
            lock(1, 0xc),
            LockIdentity::Shared(0),
        ] {
            r.touch(l);
        }
        assert_eq!(r.coldest(None), Some(lock(1, 0xa)));
        r.touch(lock(1, 0xa));
        assert_eq!(r.coldest(None), Some(lock(2, 0xb)));
        assert_eq!(r.coldest(Some(1)), Some(lock(1, 0xc)));
        r.remove(lock(1, 0xc));
        assert_eq!(r.coldest(Some(1)), Some(lock(1, 0xa)));
        r.remove_process(2);
        assert_eq!(r.coldest(None), Some(LockIdentity::Shared(0)));
        r.remove_process(1);
        r.remove(LockIdentity::Shared(0));
        assert_eq!((r.coldest(None), r.coldest(Some(1))), (None, None));
    }
}
