//! Lock identity: which lock object an instance is. A lock in memory mapped
//! `MAP_SHARED` (a file, `/dev/shm`, SysV shm, shared anonymous memory) is
//! one lock for every process that maps it, wherever each maps it; any
//! other lock is its process's own.

use std::collections::HashMap;

use crate::model::{LockIdentity, LockInstance, SharedLock};
use crate::FastMap;

#[derive(Default)]
pub struct Identities {
    /// Instances in shared memory, by instance.
    shared_of: FastMap<LockInstance, u32>,
    /// Shared locks, interned: index = `LockIdentity::Shared` number.
    shared: Vec<SharedLock>,
    index: HashMap<SharedLock, u32>,
}

impl Identities {
    /// Notes that `lock` lives in shared memory as `shared`.
    pub fn note_shared(&mut self, lock: LockInstance, shared: SharedLock) {
        let next = self.shared.len() as u32;
        let id = *self.index.entry(shared.clone()).or_insert(next);
        if id == next {
            self.shared.push(shared);
        }
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
        self.shared_of.remove(&lock);
    }

    /// The process exited: its mappings of shared locks are gone (the
    /// shared locks stay, other processes may map them).
    pub fn forget_process(&mut self, pid: u32) {
        self.shared_of.retain(|l, _| l.pid != pid);
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
}
