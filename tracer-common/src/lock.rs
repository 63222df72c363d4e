//! Lock kinds and the held-lock stack the kernel side keeps per thread.

use crate::PyFrameRaw;

/// Locks one thread can hold at once that the kernel side tracks; deeper
/// nesting is counted in [`Counter::HeldOverflow`](crate::Counter::HeldOverflow),
/// never silently ignored.
pub const MAX_HELD: usize = 16;

/// What kind of lock an address is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// A pthread mutex (normal, error-checking or adaptive).
    Mutex = 1,
    /// A recursive pthread mutex (known once it was re-locked by its holder).
    RecursiveMutex = 2,
    /// A pthread rwlock held or requested for reading.
    RwlockRead = 3,
    /// A pthread rwlock held or requested for writing.
    RwlockWrite = 4,
    /// A pthread spinlock.
    Spinlock = 5,
    /// A POSIX semaphore used as a lock (CPython's `threading.Lock`).
    Semaphore = 6,
}

impl LockKind {
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Mutex),
            2 => Some(Self::RecursiveMutex),
            3 => Some(Self::RwlockRead),
            4 => Some(Self::RwlockWrite),
            5 => Some(Self::Spinlock),
            6 => Some(Self::Semaphore),
            _ => None,
        }
    }

    /// Whether holding the lock in this mode excludes other holders in
    /// `other` mode (readers never exclude readers).
    pub fn conflicts_with(self, other: LockKind) -> bool {
        !(self == LockKind::RwlockRead && other == LockKind::RwlockRead)
    }
}

/// The lock was taken with a try operation: it is held, but its acquisition
/// could not block, so it adds no dependency of its own (lockdep's rule).
pub const HELD_FLAG_TRY: u32 = 1;
/// The lock was requested with a timed operation (it may fail with a
/// timeout; like a try operation, its acquisition adds no dependency).
pub const HELD_FLAG_TIMED: u32 = 2;

/// The cookie of a lock probe (`bpf_get_attach_cookie`): the kind of lock
/// its function takes and the `HELD_FLAG_*` of the request. One program
/// serves every blocking lock function, and one every try or timed one, so
/// that the verifier walks the acquisition path once, not once per kind.
#[inline(always)]
pub const fn probe_cookie(kind: LockKind, flags: u32) -> u64 {
    kind as u64 | (flags as u64) << 32
}

/// The lock kind and flags of a probe cookie (see [`probe_cookie`]).
#[inline(always)]
pub const fn cookie_request(cookie: u64) -> (u32, u32) {
    (cookie as u32, (cookie >> 32) as u32)
}

/// A lock a thread holds, with where it was taken.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldLock {
    /// Address of the lock object in the holder's address space.
    pub addr: u64,
    /// Return address into the code that called the lock function.
    pub callsite: u64,
    /// A [`LockKind`] as `u32`.
    pub kind: u32,
    /// `HELD_FLAG_*` bits.
    pub flags: u32,
    /// The stack pointer and frame pointer at the lock call, and the stack
    /// words above the return address: when the caller is a lock wrapper
    /// (`lck_lock()` calling `pthread_mutex_lock`), its frame and its own
    /// return address are here, and the collector unwinds it to find who
    /// took the lock.
    pub sp: u64,
    pub bp: u64,
    pub above: [u64; CALLER_WORDS],
    /// For a semaphore taken in a CPython process: the innermost Python
    /// frame of the acquisition (its code object and instruction; zero when
    /// no Python code ran it), so that a report shows where Python code took
    /// each held lock, not only the interpreter's native call site.
    pub py: PyFrameRaw,
    /// The frame that called `py` (zero when none): where Python code
    /// took a lock through a Python-level lock (2.7's `RLock.acquire` in
    /// `threading.py` takes its `Lock`), the script's line is this one.
    pub py_caller: PyFrameRaw,
}

/// Stack words kept above a held lock's return address: a wrapper frame of
/// up to 40 bytes and its return address.
pub const CALLER_WORDS: usize = 6;

/// The held-lock stack of one thread (map `HELD`, keyed by tid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeldStack {
    pub depth: u32,
    /// The thread's id in its own pid namespace, as glibc writes it into the
    /// owner field of a mutex it holds (0 until its namespace is known):
    /// held entries are checked against their lock's owner.
    pub ns_tid: u32,
    /// For a forked child's main thread: the namespace tid of the thread
    /// that forked it (0 otherwise). The memory it inherited still names
    /// that thread as the owner of the mutexes it held, which the child now
    /// holds.
    pub inherited_tid: u32,
    pub _pad: u32,
    pub locks: [HeldLock; MAX_HELD],
    /// Scratch for the kernel side, per thread (per-CPU scratch is not safe
    /// on a preemptible kernel): the `from` locks of new dependencies.
    pub n_new: u64,
    pub new_from: [HeldLock; MAX_HELD],
    /// What the lock program hands to the program that sends new
    /// dependencies (`emit_deps`, reached by a tail call): the requested
    /// lock, where its function was entered, the event kind, and whether
    /// the lock is pushed after (an acquisition) or not (a self-deadlock).
    pub tail_to: HeldLock,
    pub tail_entry_ip: u64,
    pub tail_event: u32,
    pub tail_push: u32,
    /// Non-zero while `py_copy` runs between two passes of `emit_deps`: the
    /// event's code objects are being copied, then it is sent.
    pub tail_py_copied: u64,
}

/// A try, timed or condition-wait operation between its entry and its
/// return (maps `PENDING_TRY` and `COND_WAITS`, keyed by tid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub lock: HeldLock,
    /// Where the function was entered (for the report's first frame when the
    /// return makes an event).
    pub entry_ip: u64,
}

// SAFETY (all): plain `#[repr(C)]` data, valid for any bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Pending {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for HeldLock {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for HeldStack {}
