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

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;

use crate::host::{Host, InitStack};
use crate::model::{ClassId, ClassKey, CodeSite, LockInstance, SharedLock};
use crate::FastMap;

#[derive(Default)]
pub struct Classes {
    /// The class of each lock instance seen.
    by_lock: FastMap<LockInstance, ClassId>,
    /// Init call sites of locks set up by an init function, with the stack
    /// copied at the init (to find the caller of a library's lock-creating
    /// function when the class is first needed).
    init_sites: FastMap<LockInstance, (u64, Option<InitStack>)>,
    /// Every instance in `by_lock` or `init_sites`, in address order: the
    /// locks in a range of freed memory.
    ordered: BTreeSet<LockInstance>,
    /// Interned class keys: each key is kept once, in `keys`, and found by
    /// its hash (keys whose hash another key has are in `collided`).
    by_hash: FastMap<u64, ClassId>,
    collided: HashMap<ClassKey, ClassId>,
    hasher: foldhash::fast::RandomState,
    keys: Vec<ClassKey>,
}

impl Classes {
    pub fn new() -> Self {
        Self::default()
    }

    /// A lock was initialized at `site`: that is its class from now on.
    pub fn note_init(&mut self, lock: LockInstance, site: u64, stack: Option<InitStack>) {
        self.by_lock.remove(&lock);
        self.init_sites.insert(lock, (site, stack));
        self.ordered.insert(lock);
    }

    /// A lock was destroyed: its memory may become another lock.
    pub fn forget_lock(&mut self, lock: LockInstance) {
        self.by_lock.remove(&lock);
        self.init_sites.remove(&lock);
        self.ordered.remove(&lock);
    }

    /// Forget the instances of an exited process (its classes stay: an
    /// order seen in a dead worker still counts).
    pub fn forget_process(&mut self, pid: u32) {
        self.by_lock.retain(|l, _| l.pid != pid);
        self.init_sites.retain(|l, _| l.pid != pid);
        self.ordered.retain(|l| l.pid != pid);
    }

    /// The instances known (classed, or set up by an init) of process `pid`
    /// in memory `[start, end)`.
    pub fn locks_in(&self, pid: u32, start: u64, end: u64) -> Vec<LockInstance> {
        if start >= end {
            return Vec::new();
        }
        self.ordered
            .range(LockInstance { pid, addr: start }..LockInstance { pid, addr: end })
            .copied()
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
        if let Some(&class) = self.by_lock.get(&lock) {
            return class;
        }
        let key = match shared {
            Some(shared) => ClassKey::Shared(shared.clone()),
            None => self.key_for(lock, first_site, host),
        };
        let class = self.intern(key);
        self.by_lock.insert(lock, class);
        self.ordered.insert(lock);
        class
    }

    /// The class `lock` was given, if it has one yet.
    pub fn class_of_known(&self, lock: LockInstance) -> Option<ClassId> {
        self.by_lock.get(&lock).copied()
    }

    /// The key of a class.
    pub fn key(&self, class: ClassId) -> &ClassKey {
        &self.keys[class.0 as usize]
    }

    pub fn class_count(&self) -> usize {
        self.keys.len()
    }

    fn intern(&mut self, key: ClassKey) -> ClassId {
        let hash = self.hasher.hash_one(&key);
        let next = ClassId(self.keys.len() as u32);
        let id = match self.by_hash.get(&hash) {
            Some(&id) if self.keys[id.0 as usize] == key => return id,
            Some(_) => *self.collided.entry(key.clone()).or_insert(next),
            None => {
                self.by_hash.insert(hash, next);
                next
            }
        };
        if id == next {
            self.keys.push(key);
        }
        id
    }

    fn key_for(&self, lock: LockInstance, first_site: u64, host: &mut dyn Host) -> ClassKey {
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
                    return ClassKey::PythonLine {
                        file: frame.file,
                        line: frame.line,
                    }
                }
                Some(None) => return ClassKey::PythonUnnamed(lock),
                None => {}
            }
        }
        if let Some((site, caller)) = init {
            return ClassKey::InitSite {
                site,
                caller: caller.map(Box::new),
            };
        }
        if let Some((module, symbol)) = host.global_symbol(lock) {
            return ClassKey::Global { module, symbol };
        }
        ClassKey::FirstUse(site_of(host, first_site))
    }
}
