//! Lock classes, as lockdep has them: "the same lock in the program's code",
//! stable across the processes of one binary (prefork workers) and across
//! restarts. A class is, in this order of preference:
//! - for a lock Python code created: the line that created it (CPython makes
//!   every lock through one `sem_init` call site);
//! - for a lock set up by `pthread_mutex_init`, `sem_init`...: the init call
//!   site (binary + file offset of the return address), with its caller when
//!   the site is a shared library's lock-creating function;
//! - for a global or static lock: its binary and symbol (`ab_ba:mutex_a`);
//! - for a lock in shared memory: its identity;
//! - otherwise: the call site of its first acquisition seen.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::host::{GlobalSymbol, Host, InitStack};
use crate::limits::{self, Limit, Tally};
use crate::model::{ClassId, ClassKey, CodeSite, LockInstance, SharedLock};
use crate::FastMap;

pub struct Classes {
    /// The class of each lock instance seen.
    /// Every instance with a class or an init site, by process and in
    /// address order (the locks in a range of freed memory), with its
    /// class once given. One small tree per process: a lock costs its
    /// address and class there, where a map of instances and a set of them
    /// in order kept the instance twice, in tables of twice its size.
    locks: FastMap<u32, BTreeMap<u64, Option<ClassId>>>,
    /// Init call sites of locks set up by an init function, with the stack
    /// copied at the init (to find the caller of a library's lock-creating
    /// function when the class is first needed).
    init_sites: FastMap<LockInstance, (u64, Option<InitStack>)>,
    /// `locks`' entries by process, under [`limits::LOCK_FACTS`].
    kept: Tally,
    /// Interned class keys: each key is kept once, in `keys`, and found by
    /// its hash in `index` (which holds ids only).
    index: HashTable<ClassId>,
    hasher: foldhash::fast::RandomState,
    keys: Vec<ClassKey>,
}

impl Default for Classes {
    fn default() -> Self {
        Self::with_limit(limits::LOCK_FACTS)
    }
}

impl Classes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Classes keeping the facts of at most `limit` locks (tests).
    pub fn with_limit(limit: Limit) -> Self {
        Classes {
            locks: FastMap::default(),
            init_sites: FastMap::default(),
            kept: Tally::new(limit),
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            keys: Vec::new(),
        }
    }

    /// Times a lock's facts (class, init site) were not kept for want of
    /// room (a lock past its process's share counts at each dependency).
    pub fn not_kept(&self) -> u64 {
        self.kept.dropped
    }

    /// Whether `lock`'s facts are kept (it takes a place if it has none).
    fn keep(&mut self, lock: LockInstance) -> bool {
        if self.known(lock).is_some() {
            return true;
        }
        if !self.kept.take(lock.pid, 1) {
            return false;
        }
        self.locks
            .entry(lock.pid)
            .or_default()
            .insert(lock.addr, None);
        true
    }

    /// `lock`'s entry in `locks`: `Some(its class, if given)`.
    fn known(&self, lock: LockInstance) -> Option<Option<ClassId>> {
        self.locks.get(&lock.pid)?.get(&lock.addr).copied()
    }

    /// Forgets `lock`'s class (it keeps its place in `locks`).
    fn unclass(&mut self, lock: LockInstance) {
        if let Some(class) = self
            .locks
            .get_mut(&lock.pid)
            .and_then(|of_pid| of_pid.get_mut(&lock.addr))
        {
            *class = None;
        }
    }

    /// A lock was initialized at `site`: that is its class from now on.
    pub fn note_init(&mut self, lock: LockInstance, site: u64, stack: Option<InitStack>) {
        self.unclass(lock);
        if self.keep(lock) {
            self.init_sites.insert(lock, (site, stack));
        }
    }

    /// A lock was destroyed: its memory may become another lock.
    pub fn forget_lock(&mut self, lock: LockInstance) {
        self.init_sites.remove(&lock);
        let Some(of_pid) = self.locks.get_mut(&lock.pid) else {
            return;
        };
        if of_pid.remove(&lock.addr).is_some() {
            self.kept.give_back(lock.pid, 1);
        }
        if of_pid.is_empty() {
            self.locks.remove(&lock.pid);
        }
    }

    /// Forget the instances of an exited process (its classes stay: an
    /// order seen in a dead worker still counts).
    pub fn forget_process(&mut self, pid: u32) {
        self.locks.remove(&pid);
        self.init_sites.retain(|l, _| l.pid != pid);
        self.kept.give_back(pid, self.kept.of(pid));
    }

    /// The instances known (classed, or set up by an init) of process `pid`
    /// in memory `[start, end)`.
    pub fn locks_in(&self, pid: u32, start: u64, end: u64) -> Vec<LockInstance> {
        if start >= end {
            return Vec::new();
        }
        let Some(of_pid) = self.locks.get(&pid) else {
            return Vec::new();
        };
        of_pid
            .range(start..end)
            .map(|(&addr, _)| LockInstance { pid, addr })
            .collect()
    }

    /// The class of `lock`, first acquired at `first_site`; `shared` is its
    /// identity when it lives in shared memory. A lock keeps the class it
    /// was first given.
    pub fn class_of(
        &mut self,
        lock: LockInstance,
        first_site: u64,
        shared: Option<&SharedLock>,
        host: &mut dyn Host,
    ) -> ClassId {
        if let Some(Some(class)) = self.known(lock) {
            return class;
        }
        let key = match shared {
            Some(shared) => ClassKey::Shared(shared.clone()),
            None => self.key_for(lock, first_site, host),
        };
        let class = self.intern(key);
        if self.keep(lock) {
            let of_pid = self.locks.get_mut(&lock.pid).expect("kept");
            of_pid.insert(lock.addr, Some(class));
        }
        class
    }

    /// The class `lock` was given, if it has one yet.
    pub fn class_of_known(&self, lock: LockInstance) -> Option<ClassId> {
        self.known(lock).flatten()
    }

    /// The key of a class.
    pub fn key(&self, class: ClassId) -> &ClassKey {
        &self.keys[class.0 as usize]
    }

    pub fn class_count(&self) -> usize {
        self.keys.len()
    }

    pub fn intern(&mut self, key: ClassKey) -> ClassId {
        let hash = self.hasher.hash_one(&key);
        let keys = &self.keys;
        if let Some(&id) = self.index.find(hash, |id| keys[id.0 as usize] == key) {
            return id;
        }
        let id = ClassId(self.keys.len() as u32);
        let hasher = &self.hasher;
        let rehash = |id: &ClassId| hasher.hash_one(&keys[id.0 as usize]);
        self.index.insert_unique(hash, id, rehash);
        self.keys.push(key);
        id
    }

    fn key_for(&self, lock: LockInstance, first_site: u64, host: &mut dyn Host) -> ClassKey {
        self.derived_key(lock, host).unwrap_or_else(|| {
            ClassKey::FirstUse(
                host.code_site(lock.pid, first_site)
                    .unwrap_or_else(|| CodeSite::unmapped(first_site)),
            )
        })
    }

    /// The key `lock`'s init site, Python line or symbol gives it; None if
    /// only its first acquisition's site would name it.
    pub fn derived_key(&self, lock: LockInstance, host: &mut dyn Host) -> Option<ClassKey> {
        let site_of = |host: &mut dyn Host, addr: u64| {
            host.code_site(lock.pid, addr)
                .unwrap_or_else(|| CodeSite::unmapped(addr))
        };
        // A shared library's lock-creating function (APR's
        // apr_thread_mutex_create, GLib's g_mutex_init...) or a lock
        // wrapper (lck_init) makes every lock of its callers: the first
        // caller outside wrappers is the class.
        let init = self.init_sites.get(&lock).map(|(site, stack)| {
            let site = *site;
            let caller = match stack {
                Some(stack) if host.makes_locks_for_callers(lock.pid, site) => host
                    .init_callers(lock.pid, site, stack)
                    .into_iter()
                    .find(|&c| !host.is_wrapper(lock.pid, c)),
                _ => None,
            };
            (site_of(host, site), caller.map(|c| site_of(host, c)))
        });
        // A lock CPython's own C code makes for itself (the global import
        // lock, made on first use by `_PyImport_AcquireLock`) is named by
        // that code, not by whichever Python line first needed it: that
        // line differs between processes and would split one lock into
        // classes. Locks Python code asks for (`threading.Lock()`) come
        // from the `_thread` module's static functions, not `Py*`/`_Py*`.
        let made_by_runtime = init.as_ref().is_some_and(|(_, caller)| {
            caller
                .as_ref()
                .and_then(|c| c.function.as_deref())
                .is_some_and(|f| f.starts_with("_Py") || f.starts_with("Py"))
        });
        if !made_by_runtime {
            match host.python_creation(lock) {
                Some(Some(frame)) => {
                    return Some(ClassKey::PythonLine {
                        file: frame.file,
                        line: frame.line,
                        function: frame.function,
                    })
                }
                Some(None) => return Some(ClassKey::PythonUnnamed(lock)),
                None => {}
            }
        }
        if let Some((site, caller)) = init {
            return Some(ClassKey::InitSite {
                site,
                caller: caller.map(Box::new),
            });
        }
        host.global_symbol(lock).map(
            |GlobalSymbol {
                 module,
                 symbol,
                 build,
             }| ClassKey::Global {
                module,
                symbol,
                build,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PyFrame, SharedLock};

    /// A host where every code address is in `app` at its own offset.
    struct App;

    impl Host for App {
        fn code_site(&mut self, _pid: u32, addr: u64) -> Option<CodeSite> {
            Some(CodeSite {
                module: "app".into(),
                offset: addr,
                function: None,
                build: None,
            })
        }
        fn makes_locks_for_callers(&mut self, _pid: u32, _addr: u64) -> bool {
            false
        }
        fn is_wrapper(&mut self, _pid: u32, _addr: u64) -> bool {
            false
        }
        fn init_callers(&mut self, _pid: u32, _site: u64, _stack: &InitStack) -> Vec<u64> {
            Vec::new()
        }
        fn global_symbol(&mut self, _lock: LockInstance) -> Option<GlobalSymbol> {
            None
        }
        fn shared_lock(&mut self, _lock: LockInstance) -> Option<SharedLock> {
            None
        }
        fn python_creation(&mut self, _lock: LockInstance) -> Option<Option<PyFrame>> {
            None
        }
        fn wakeup_mutex_owner(&mut self, _pid: u32, _addr: u64) -> Option<u32> {
            None
        }
    }

    fn lock(pid: u32, addr: u64) -> LockInstance {
        LockInstance { pid, addr }
    }

    /// Past a process's share, a lock's init site and class are not kept
    /// (counted); it is classed by its first use, which judges nothing; the
    /// other processes keep theirs; a destroy gives the place back.
    #[test]
    fn lock_facts_are_bounded_per_process() {
        let mut c = Classes::with_limit(Limit {
            per_process: 2,
            total: 3,
        });
        for addr in [0x10, 0x20, 0x30] {
            c.note_init(lock(1, addr), 0x1000 + addr, None);
        }
        assert_eq!(c.not_kept(), 1);
        let kept = c.class_of(lock(1, 0x10), 0x5000, None, &mut App);
        assert!(c.key(kept).is_sound(), "{}", c.key(kept));
        let past = c.class_of(lock(1, 0x30), 0x5000, None, &mut App);
        assert!(!c.key(past).is_sound(), "{}", c.key(past));
        assert_eq!(c.class_of_known(lock(1, 0x30)), None, "not cached");
        // Process 2 has its own share (one place left in all).
        c.note_init(lock(2, 0x10), 0x1010, None);
        let other = c.class_of(lock(2, 0x10), 0x5000, None, &mut App);
        assert!(c.key(other).is_sound());
        // A destroy frees a place.
        c.forget_lock(lock(1, 0x20));
        c.note_init(lock(1, 0x30), 0x1030, None);
        let now = c.class_of(lock(1, 0x30), 0x5000, None, &mut App);
        assert!(c.key(now).is_sound(), "{}", c.key(now));
        // An exit frees the process's places.
        c.forget_process(1);
        c.note_init(lock(3, 0x10), 0x1010, None);
        c.note_init(lock(3, 0x20), 0x1020, None);
        assert_eq!(c.not_kept(), 2, "the third init, and its lock's class");
        assert_eq!(c.locks_in(3, 0, 0x100).len(), 2);
    }
}
