//! The instance graph's locks by when a dependency last used them: at the
//! memory cap the coldest go first (lockdep has no such need: its graph
//! holds classes, which a kernel has few of; a host's lock instances are
//! without end). "Used" means seen in a dependency the kernel side sent,
//! the only traffic that reaches the collector (it sends each dependency
//! once): a lock whose pairs are all known is as cold as one never taken
//! again, and comes back, with its dependencies, if it is taken in a new
//! pair or after its eviction (the kernel side forgets the evicted ones).

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::model::LockIdentity;
use crate::slab::Slab;
use crate::FastMap;

/// No entry: the end of a list.
const NONE: u32 = u32::MAX;

/// A place in a list, oldest first.
#[derive(Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

const UNLINKED: Links = Links {
    prev: NONE,
    next: NONE,
};

/// The ends of a list.
#[derive(Clone, Copy)]
struct Ends {
    first: u32,
    last: u32,
}

const EMPTY: Ends = Ends {
    first: NONE,
    last: NONE,
};

/// A lock, in the list of all locks and in its process's own.
struct Entry {
    lock: LockIdentity,
    all: Links,
    own: Links,
}

/// Which of an entry's two lists.
#[derive(Clone, Copy)]
enum List {
    All,
    Own,
}

impl Entry {
    fn links(&mut self, list: List) -> &mut Links {
        match list {
            List::All => &mut self.all,
            List::Own => &mut self.own,
        }
    }
}

/// Locks by last use, as doubly linked lists threaded through one slab
/// (a use moves a lock to the end of its lists: no search, no
/// allocation), oldest first: all of them, and each process's own (a lock
/// in shared memory belongs to none).
#[derive(Default)]
pub struct Recency {
    entries: Slab<Entry>,
    /// Entry ids by their lock's hash (the lock is kept once, in its entry).
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    all: Ends,
    by_pid: FastMap<u32, Ends>,
}

impl Default for Ends {
    fn default() -> Self {
        EMPTY
    }
}

fn owner(lock: LockIdentity) -> Option<u32> {
    match lock {
        LockIdentity::Private(l) => Some(l.pid),
        LockIdentity::Shared(_) => None,
    }
}

impl Recency {
    fn entry(&mut self, i: u32) -> &mut Entry {
        self.entries.get_mut(i).expect("live entry")
    }

    fn find(&self, lock: LockIdentity) -> Option<u32> {
        let hash = self.hasher.hash_one(lock);
        let entries = &self.entries;
        self.index
            .find(hash, |&i| entries.get(i).is_some_and(|e| e.lock == lock))
            .copied()
    }

    /// Takes entry `i` out of one of its lists.
    fn unlink(&mut self, i: u32, list: List, ends: &mut Ends) {
        let Links { prev, next } = *self.entry(i).links(list);
        match prev {
            NONE => ends.first = next,
            p => self.entry(p).links(list).next = next,
        }
        match next {
            NONE => ends.last = prev,
            n => self.entry(n).links(list).prev = prev,
        }
        *self.entry(i).links(list) = UNLINKED;
    }

    /// Puts entry `i` at the end (newest) of one of its lists.
    fn push(&mut self, i: u32, list: List, ends: &mut Ends) {
        let last = ends.last;
        *self.entry(i).links(list) = Links {
            prev: last,
            next: NONE,
        };
        match last {
            NONE => ends.first = i,
            l => self.entry(l).links(list).next = i,
        }
        ends.last = i;
    }

    /// `lock` was used now.
    pub fn touch(&mut self, lock: LockIdentity) {
        let i = match self.find(lock) {
            Some(i) => {
                self.unlink_everywhere(i);
                i
            }
            None => {
                let i = self.entries.insert(Entry {
                    lock,
                    all: UNLINKED,
                    own: UNLINKED,
                });
                let (entries, hasher) = (&self.entries, &self.hasher);
                let rehash = |&j: &u32| hasher.hash_one(entries.get(j).expect("live entry").lock);
                self.index.insert_unique(hasher.hash_one(lock), i, rehash);
                i
            }
        };
        let mut all = self.all;
        self.push(i, List::All, &mut all);
        self.all = all;
        if let Some(pid) = owner(lock) {
            let mut own = self.by_pid.get(&pid).copied().unwrap_or_default();
            self.push(i, List::Own, &mut own);
            self.by_pid.insert(pid, own);
        }
    }

    /// Takes entry `i` out of both its lists (it stays in the index).
    fn unlink_everywhere(&mut self, i: u32) {
        let mut all = self.all;
        self.unlink(i, List::All, &mut all);
        self.all = all;
        let Some(pid) = owner(self.entry(i).lock) else {
            return;
        };
        let mut own = self.by_pid.get(&pid).copied().unwrap_or_default();
        self.unlink(i, List::Own, &mut own);
        if own.first == NONE {
            self.by_pid.remove(&pid);
        } else {
            self.by_pid.insert(pid, own);
        }
    }

    /// Forgets entry `i`, out of its lists already.
    fn drop_entry(&mut self, i: u32) {
        let lock = self.entries.take(i).expect("live entry").lock;
        if let Ok(found) = self
            .index
            .find_entry(self.hasher.hash_one(lock), |&j| j == i)
        {
            found.remove();
        }
    }

    /// `lock` left the graph.
    pub fn remove(&mut self, lock: LockIdentity) {
        let Some(i) = self.find(lock) else {
            return;
        };
        self.unlink_everywhere(i);
        self.drop_entry(i);
    }

    /// Every lock of process `pid` left the graph.
    pub fn remove_process(&mut self, pid: u32) {
        let Some(own) = self.by_pid.remove(&pid) else {
            return;
        };
        let mut i = own.first;
        while i != NONE {
            let next = self.entry(i).own.next;
            let mut all = self.all;
            self.unlink(i, List::All, &mut all);
            self.all = all;
            self.drop_entry(i);
            i = next;
        }
    }

    /// The lock used longest ago: of process `pid`, or of all.
    pub fn coldest(&self, pid: Option<u32>) -> Option<LockIdentity> {
        let first = match pid {
            Some(pid) => self.by_pid.get(&pid)?.first,
            None => self.all.first,
        };
        (first != NONE).then(|| self.entries.get(first).expect("live entry").lock)
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

    /// The lists against a plain list of (lock, last use), through a long
    /// deterministic mix of uses, removals and process exits.
    #[test]
    fn the_lists_keep_the_order_of_last_use() {
        let mut r = Recency::default();
        let mut model: Vec<LockIdentity> = Vec::new(); // oldest first
        let mut x = 7u64;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pick = (x >> 33) % 40;
            let l = if pick < 4 {
                LockIdentity::Shared(pick as u32)
            } else {
                lock(1 + (pick % 3) as u32, pick)
            };
            match (x >> 20) % 10 {
                0 => {
                    r.remove(l);
                    model.retain(|&m| m != l);
                }
                1 => {
                    let pid = 1 + ((x >> 40) % 3) as u32;
                    r.remove_process(pid);
                    model.retain(|&m| owner(m) != Some(pid));
                }
                _ => {
                    r.touch(l);
                    model.retain(|&m| m != l);
                    model.push(l);
                }
            }
            assert_eq!(r.coldest(None), model.first().copied());
            for pid in 1..=3 {
                let oldest = model.iter().find(|&&m| owner(m) == Some(pid));
                assert_eq!(r.coldest(Some(pid)), oldest.copied());
            }
        }
        assert_eq!(r.entries.live, model.len());
        assert_eq!(r.index.len(), model.len());
    }
}
