//! Lock identity: which lock object an instance is. A lock in memory mapped
//! `MAP_SHARED` (a file, `/dev/shm`, SysV shm, shared anonymous memory) is
//! one lock for every process that maps it, wherever each maps it; any
//! other lock is its process's own.

use std::collections::HashMap;

use crate::limits::{self, Limit, Tally};
use crate::model::{LockIdentity, LockInstance, SharedLock};
use crate::FastMap;

pub struct Identities {
    /// Instances in shared memory, by instance.
    shared_of: FastMap<LockInstance, u32>,
    /// Shared locks, interned: index = `LockIdentity::Shared` number. Kept
    /// for good (other processes may map them), at most `limit.total`.
    shared: Vec<SharedLock>,
    index: HashMap<SharedLock, u32>,
    /// `shared_of`'s entries by process, under [`limits::LOCK_FACTS`].
    kept: Tally,
    limit: Limit,
}

impl Default for Identities {
    fn default() -> Self {
        Self::with_limit(limits::LOCK_FACTS)
    }
}

impl Identities {
    /// Identities keeping at most `limit` shared-memory locks (tests).
    pub fn with_limit(limit: Limit) -> Self {
        Identities {
            shared_of: FastMap::default(),
            shared: Vec::new(),
            index: HashMap::new(),
            kept: Tally::new(limit),
            limit,
        }
    }

    /// Times a lock in shared memory was left its process's own, for want
    /// of room: it then closes no cycle across processes (a lost finding,
    /// never a false one).
    pub fn not_kept(&self) -> u64 {
        self.kept.dropped
    }

    /// Notes that `lock` lives in shared memory as `shared`.
    pub fn note_shared(&mut self, lock: LockInstance, shared: SharedLock) {
        let known = self.index.get(&shared).copied();
        if known.is_none() && self.shared.len() >= self.limit.total {
            self.kept.dropped += 1;
            return;
        }
        if !self.shared_of.contains_key(&lock) && !self.kept.take(lock.pid, 1) {
            return;
        }
        let id = known.unwrap_or_else(|| {
            let next = self.shared.len() as u32;
            self.index.insert(shared.clone(), next);
            self.shared.push(shared);
            next
        });
        self.shared_of.insert(lock, id);
    }

    /// The lock object `lock` is.
    pub fn of(&self, lock: LockInstance) -> LockIdentity {
        match self.shared_of.get(&lock) {
            Some(&id) => LockIdentity::Shared(id),
            None => LockIdentity::Private(lock),
        }
    }

    /// The shared lock of an identity, if it is one.
    pub fn shared(&self, id: LockIdentity) -> Option<&SharedLock> {
        match id {
            LockIdentity::Shared(i) => self.shared.get(i as usize),
            LockIdentity::Private(_) => None,
        }
    }

    /// `lock`'s memory became another lock (destroyed, re-initialized).
    pub fn forget_lock(&mut self, lock: LockInstance) {
        if self.shared_of.remove(&lock).is_some() {
            self.kept.give_back(lock.pid, 1);
        }
    }

    /// The process exited: its mappings of shared locks are gone (the
    /// shared locks stay, other processes may map them).
    pub fn forget_process(&mut self, pid: u32) {
        self.shared_of.retain(|l, _| l.pid != pid);
        self.kept.give_back(pid, self.kept.of(pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_shared_lock_are_one_identity() {
        let mut ids = Identities::default();
        let shared = SharedLock {
            dev: 1,
            inode: 7,
            offset: 0x28,
            path: "/dev/shm/x".into(),
        };
        let a = LockInstance {
            pid: 1,
            addr: 0x1000,
        };
        let b = LockInstance {
            pid: 2,
            addr: 0x7000,
        };
        ids.note_shared(a, shared.clone());
        ids.note_shared(b, shared.clone());
        assert_eq!(ids.of(a), ids.of(b));
        assert_eq!(ids.shared(ids.of(a)), Some(&shared));
        let private = LockInstance {
            pid: 1,
            addr: 0x2000,
        };
        assert_eq!(ids.of(private), LockIdentity::Private(private));
        ids.forget_process(1);
        assert_eq!(ids.of(a), LockIdentity::Private(a));
        assert_eq!(ids.of(b), LockIdentity::Shared(0));
    }

    #[test]
    fn shared_locks_are_bounded() {
        let mut ids = Identities::with_limit(Limit {
            per_process: 2,
            total: 4,
        });
        let shared = |offset| SharedLock {
            dev: 1,
            inode: 7,
            offset,
            path: "/dev/shm/x".into(),
        };
        let lock = |pid, addr| LockInstance { pid, addr };
        for i in 0..3 {
            ids.note_shared(lock(1, 0x1000 + i), shared(i));
        }
        assert_eq!(ids.not_kept(), 1, "process 1's share is 2");
        assert!(matches!(ids.of(lock(1, 0x1002)), LockIdentity::Private(_)));
        // Another process maps a known shared lock: one identity.
        ids.note_shared(lock(2, 0x7000), shared(0));
        assert_eq!(ids.of(lock(2, 0x7000)), ids.of(lock(1, 0x1000)));
        // One more mapping fits in all; the next does not.
        ids.note_shared(lock(3, 0x10), shared(5));
        ids.note_shared(lock(3, 0x20), shared(6));
        assert!(matches!(ids.of(lock(3, 0x20)), LockIdentity::Private(_)));
        assert_eq!(ids.not_kept(), 2);
        ids.forget_process(1);
        ids.note_shared(lock(4, 0x10), shared(0));
        assert!(matches!(ids.of(lock(4, 0x10)), LockIdentity::Shared(_)));
    }
}
