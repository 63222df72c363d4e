//! What the kernel side counts: everything it sees or cannot handle, so that
//! the collector can report it.

/// Per-CPU counters (map `COUNTERS`, one slot per variant): everything the
/// kernel side sees or cannot handle is counted, and the collector reports it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Lock acquisitions (including successful try operations).
    Acquire = 0,
    /// Lock releases.
    Release = 1,
    /// Dependency events written to the ring buffer.
    DependencyEvents = 2,
    /// Events dropped because the ring buffer was full.
    LostEvents = 3,
    /// Acquisitions not tracked because a thread held `MAX_HELD` locks.
    HeldOverflow = 4,
    /// Releases of a lock the thread was not seen to hold (taken before the
    /// tracer started, or past `MAX_HELD`).
    UnmatchedRelease = 5,
    /// Dependency events whose stack copy had to stop early.
    StackTruncated = 6,
    /// Dependency-cache inserts that failed (the cache is an LRU: this only
    /// happens under memory pressure).
    DependencyCacheFull = 7,
    /// Futex waits of traced threads (lock contention and other blocking;
    /// condition waits excluded).
    FutexWaits = 8,
    /// Nanoseconds spent in those waits.
    FutexWaitNs = 9,
    /// Held-lock entries dropped because the lock's own owner field said
    /// the thread no longer held it (a mutex unlocked: mutex unlocks are
    /// not probed; or a release the probes did not see).
    StaleHeld = 10,
    /// Dependencies (and process exits) the ring buffer had no room for,
    /// kept in the kernel's deferred maps instead and read from there (not
    /// lost; a dependency's stack is then a short window).
    DeferredDependencies = 11,
    /// Lock initializations kept in the kernel (map `PENDING_INITS`) instead
    /// of being sent: sent only when the lock first takes part in a
    /// dependency.
    InitsHeldBack = 12,
    /// Destructions of a lock whose initialization was never sent: the pair
    /// cost no ring-buffer traffic (a lock created and destroyed per
    /// request without ever nesting, as APR's are).
    ResetsElided = 13,
    /// Lock records written to the ring buffer (inits, destroys, process
    /// exits and execs): with `DependencyEvents`, all the ring-buffer
    /// traffic.
    LockRecords = 14,
    /// Held mutex entries dropped because the thread's tid in its pid
    /// namespace was not known yet (its process's namespace not yet told
    /// to the kernel side), so the mutex's owner could not confirm them.
    UnconfirmedHeld = 15,
    /// `free` calls (with `--watch-free`) whose memory held a lock named in
    /// a dependency, each sent as a `MemoryFreed` record.
    FreedLockMemory = 16,
}

pub const NUM_COUNTERS: u32 = 17;

impl Counter {
    pub const ALL: [Counter; NUM_COUNTERS as usize] = [
        Counter::Acquire,
        Counter::Release,
        Counter::DependencyEvents,
        Counter::LostEvents,
        Counter::HeldOverflow,
        Counter::UnmatchedRelease,
        Counter::StackTruncated,
        Counter::DependencyCacheFull,
        Counter::FutexWaits,
        Counter::FutexWaitNs,
        Counter::StaleHeld,
        Counter::DeferredDependencies,
        Counter::InitsHeldBack,
        Counter::ResetsElided,
        Counter::LockRecords,
        Counter::UnconfirmedHeld,
        Counter::FreedLockMemory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Acquire => "acquisitions",
            Counter::Release => "releases",
            Counter::DependencyEvents => "dependency_events",
            Counter::LostEvents => "lost_events",
            Counter::HeldOverflow => "held_overflow",
            Counter::UnmatchedRelease => "unmatched_releases",
            Counter::StackTruncated => "stack_truncated",
            Counter::DependencyCacheFull => "dependency_cache_full",
            Counter::FutexWaits => "futex_waits",
            Counter::FutexWaitNs => "futex_wait_ns",
            Counter::StaleHeld => "stale_held",
            Counter::DeferredDependencies => "deferred_dependencies",
            Counter::InitsHeldBack => "inits_held_back",
            Counter::ResetsElided => "resets_elided",
            Counter::LockRecords => "lock_records",
            Counter::UnconfirmedHeld => "unconfirmed_held",
            Counter::FreedLockMemory => "freed_lock_memory",
        }
    }
}
