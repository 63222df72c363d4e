//! Keys, values and settings of the maps the collector reads or writes
//! (the held-lock stack is in [`crate::lock`], the dependency cache's key in
//! [`crate::dependency`], Python descriptions in [`crate::python`]).

/// Which processes the kernel side traces (global `FILTER_MODE`).
pub const FILTER_ALL: u32 = 0;
/// Only the tgids in map `TRACED` (and, through fork, their children).
pub const FILTER_TRACED: u32 = 1;

/// A `COND_MUTEXES` value: the thread that waits on conditions with the
/// mutex, or this bit if several threads do.
pub const COND_MUTEX_SHARED: u64 = 1 << 32;

/// Key of map `FUTEX_STATS`: one futex word of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FutexKey {
    pub pid: u32,
    pub _pad: u32,
    pub uaddr: u64,
}

/// Key of maps `PENDING_INITS` and `KNOWN_LOCKS`: one lock of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockKey {
    pub pid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// A futex wait in progress (map `FUTEX_WAITING`, by tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FutexWait {
    pub uaddr: u64,
    pub start_ns: u64,
    /// 1 if the thread waits inside a traced lock function for this word.
    pub lock_wait: u64,
}

/// Blocking on one futex word (map `FUTEX_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FutexStats {
    pub waits: u64,
    pub wait_ns: u64,
    /// Waits made inside a traced lock function for this very word (a
    /// pthread mutex, rwlock or semaphore the probes saw requested): the
    /// others are locks the order analysis does not see.
    pub lock_waits: u64,
}

// SAFETY (both): plain `#[repr(C)]` data, valid for any bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FutexKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LockKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FutexWait {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FutexStats {}
