//! Types shared by the kernel side (`tracer-ebpf`) and the collector (`tracer`).
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these
//! bytes into maps and the ring buffer, the collector reads them back.
//! Naming follows the lockdep design document: a *lock instance* is one lock
//! object (here: its address in one process); a *dependency* `A -> B` means
//! that B was requested while A was held.
#![no_std]

/// Locks one thread can hold at once that the kernel side tracks; deeper
/// nesting is counted in [`Counter::HeldOverflow`], never silently ignored.
pub const MAX_HELD: usize = 16;

/// Bytes of user stack copied, from the stack pointer up, when a new
/// dependency is emitted: the collector unwinds them with `.eh_frame` (libc
/// has no frame pointers, so the kernel's own stack walk stops too early).
pub const STACK_BYTES: usize = 12288;
/// The stack is copied in page-sized chunks so that a stack ending less than
/// `STACK_BYTES` above the stack pointer is still captured up to its end.
pub const STACK_CHUNK: usize = 4096;

pub const COMM_LEN: usize = 16;

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

/// The `__kind` field of glibc's `pthread_mutex_t` (x86_64: offset 16), whose
/// low bits are the mutex type.
pub const MUTEX_KIND_OFFSET: u64 = 16;
pub const MUTEX_KIND_MASK: u32 = 3;
pub const MUTEX_KIND_RECURSIVE: u32 = 1;
pub const MUTEX_KIND_ERRORCHECK: u32 = 2;

/// The lock was taken with a try operation: it is held, but its acquisition
/// could not block, so it adds no dependency of its own (lockdep's rule).
pub const HELD_FLAG_TRY: u32 = 1;
/// The lock was requested with a timed operation (it may fail with a
/// timeout; like a try operation, its acquisition adds no dependency).
pub const HELD_FLAG_TIMED: u32 = 2;
/// A held recursive mutex counts its extra acquisitions in the high half of
/// `HeldLock::flags`.
pub const HELD_RECURSION_SHIFT: u32 = 16;

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
}

/// The held-lock stack of one thread (map `HELD`, keyed by tid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeldStack {
    pub depth: u32,
    pub _pad: u32,
    pub locks: [HeldLock; MAX_HELD],
}

/// Key of the kernel-side dependency cache (map `DEPENDENCIES`): a dependency
/// is sent to the collector once per process, so a steady workload costs no
/// ring-buffer traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DependencyKey {
    /// The other locks held with `from` ([`gate_fingerprint`]): the same
    /// pair taken under another set of locks is sent again, so that a cycle
    /// is judged guarded (by a common gate lock) only if every occurrence of
    /// each edge was.
    pub gates: u64,
    pub pid: u32,
    /// `from` kind | `to` kind << 8 | event << 16: a read->read dependency
    /// does not hide a later read->write one of the same pair.
    pub kinds: u32,
    pub from: u64,
    pub to: u64,
}

impl DependencyKey {
    /// The key of `from -> to` (lock addresses and [`LockKind`]s as `u32`)
    /// for `event`, in process `pid`, under the held locks of fingerprint
    /// `gates`. The kernel side inserts these and the collector removes them:
    /// both build them here.
    #[inline(always)]
    pub fn new(pid: u32, event: u32, from: (u64, u32), to: (u64, u32), gates: u64) -> Self {
        DependencyKey {
            gates,
            pid,
            kinds: (from.1 & 0xff) | (to.1 & 0xff) << 8 | event << 16,
            from: from.0,
            to: to.0,
        }
    }
}

/// Ring-buffer event kinds (first `u32` of every event).
pub const EVENT_DEPENDENCY: u32 = 1;
/// A `DependencyEvent` with `from[0] == to`: a thread requested, with a
/// blocking or timed operation, a non-recursive lock it already holds.
pub const EVENT_SELF_DEADLOCK: u32 = 2;
/// A [`LockEvent`]: a lock was initialized or destroyed, so its address will
/// be a new lock instance (reused memory must not inherit old dependencies).
pub const EVENT_LOCK_RESET: u32 = 3;

/// A [`LockEvent`] (only `pid` is meaningful): a traced process exited; its
/// lock instances can be forgotten and its pid may be reused.
pub const EVENT_PROCESS_EXIT: u32 = 4;
/// A [`DependencyEvent`] that is a wake-up hand-off: the thread holds only
/// its own wake-up mutexes (mutexes it alone waits on conditions with) and
/// requests another thread's (mod_wsgi's worker threads each own a mutex and
/// lock the next idle one's to wake it). Sent apart from ordinary
/// occurrences of the same dependency (its own dedup key).
pub const EVENT_HANDOFF: u32 = 5;

/// A `COND_MUTEXES` value: the thread that waits on conditions with the
/// mutex, or this bit if several threads do.
pub const COND_MUTEX_SHARED: u64 = 1 << 32;

/// Python frames captured with an event (innermost first); deeper stacks
/// are cut (the collector says so).
pub const PY_MAX_FRAMES: usize = 16;

/// Python frames captured when Python code creates a lock: its innermost
/// frames may be library wrappers (`threading.RLock()`), the caller names it.
pub const PY_CREATOR_FRAMES: usize = 4;

/// What the kernel side needs to read the Python stack of a thread of one
/// CPython process (map `PY_PROCESSES`, by tgid): addresses in the process
/// and struct offsets of its CPython version (the collector's table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyProcess {
    /// Address of `_PyRuntime.gilstate.tstate_current`: the `PyThreadState`
    /// of the thread holding the GIL.
    pub tstate_current: u64,
    /// Offsets in `PyThreadState`.
    pub tstate_native_thread_id: u64,
    pub tstate_cframe: u64,
    /// Offset in `_PyCFrame`.
    pub cframe_current_frame: u64,
    /// Offsets in `_PyInterpreterFrame`.
    pub frame_code: u64,
    pub frame_prev_instr: u64,
    pub frame_previous: u64,
    /// Offsets in `PyCodeObject`, `PyBytesObject` and `PyASCIIObject`, to
    /// copy a code object that may be freed before the collector reads it
    /// (see [`PyCodeCopy`]).
    pub code_filename: u64,
    pub code_qualname: u64,
    pub code_firstlineno: u64,
    pub code_linetable: u64,
    pub bytes_size: u64,
    pub bytes_data: u64,
    pub unicode_length: u64,
    pub unicode_state: u64,
    pub unicode_ascii_mask: u64,
    pub unicode_ascii_data: u64,
}

/// Bytes of a code object's location table copied (enough for a module's
/// top-level code of a few hundred lines; a longer table is cut).
pub const PY_LINETABLE_BYTES: usize = 512;
/// Bytes of its file name and qualified name copied (ASCII names only).
pub const PY_FILENAME_BYTES: usize = 128;
pub const PY_QUALNAME_BYTES: usize = 64;
/// Creating frames whose code object is copied.
pub const PY_CODE_COPIES: usize = 2;

/// What the collector needs of a code object, copied when a lock is
/// created: a module's top-level code, where global locks are made, is freed
/// as soon as the module ran.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyCodeCopy {
    pub code: u64,
    pub prev_instr: u64,
    pub first_line: i32,
    /// The table's full length (only the first `PY_LINETABLE_BYTES` are
    /// here); the names' lengths (0 if not copied).
    pub linetable_len: u32,
    pub filename_len: u32,
    pub qualname_len: u32,
    pub filename: [u8; PY_FILENAME_BYTES],
    pub qualname: [u8; PY_QUALNAME_BYTES],
    pub linetable: [u8; PY_LINETABLE_BYTES],
}

/// One Python frame as captured: its code object and the instruction it is
/// at (the collector reads file, function and line from the code object).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyFrameRaw {
    pub code: u64,
    pub prev_instr: u64,
}

/// The Python frames of the thread that made an event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyStack {
    /// Valid entries of `frames`; 0 when the process runs no supported
    /// Python or the thread runs no Python code.
    pub depth: u32,
    pub _pad: u32,
    pub frames: [PyFrameRaw; PY_MAX_FRAMES],
}

/// A small event about one lock.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LockEvent {
    pub event: u32,
    pub pid: u32,
    pub tid: u32,
    /// Non-zero for an initialization (`*_init`), zero for a destruction.
    pub init: u32,
    pub addr: u64,
    /// Return address into the code that called the function: a lock's
    /// init call site is its lock class.
    pub callsite: u64,
    /// For a lock created by Python code (`threading.Lock()`): the Python
    /// frames that created it, innermost first (zero otherwise).
    pub py_creator: [PyFrameRaw; PY_CREATOR_FRAMES],
    /// Copies of the code objects of the first creating frames.
    pub py_code: [PyCodeCopy; PY_CODE_COPIES],
    /// For an initialization: the stack pointer at the init function's
    /// entry and the stack above it, to find the caller of the code that
    /// called it (a library's lock-creating function, such as APR's
    /// `apr_thread_mutex_create`, is not a lock class by itself).
    pub sp: u64,
    pub init_stack_len: u32,
    pub _pad: u32,
    pub init_stack: [u8; INIT_STACK_BYTES],
}

/// Bytes of stack copied at a lock's initialization.
pub const INIT_STACK_BYTES: usize = 256;

/// One lock's share of a [`gate_fingerprint`].
#[inline(always)]
pub fn gate_mix(addr: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

/// The fingerprint of the set of held locks other than `from`: the XOR of
/// [`gate_mix`] over all held locks (`all`), with `from`'s share taken out.
#[inline(always)]
pub fn gate_fingerprint(all: u64, from: u64) -> u64 {
    all ^ gate_mix(from)
}

/// Emitted when a thread requests `to` while holding locks it has not been
/// seen to nest `to` under before: one event carries every such new
/// dependency `from[i] -> to` and the stack of the request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DependencyEvent {
    pub event: u32,
    pub pid: u32,
    pub tid: u32,
    /// Valid entries in `from`.
    pub n_from: u32,
    pub timestamp_ns: u64,
    /// The thread's name.
    pub comm: [u8; COMM_LEN],
    /// The lock requested, and where.
    pub to: HeldLock,
    /// When non-zero, the lock function's address at entry: the event was
    /// made at its return (a re-acquisition after a condition wait), and
    /// `ip` is the return address in the caller.
    pub entry_ip: u64,
    /// Registers at the probe, for unwinding the copied stack.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The held locks for which `from[i] -> to` is new.
    pub from: [HeldLock; MAX_HELD],
    /// Every lock held at the request (`n_held` of them), for the gate
    /// locks of each dependency.
    pub held: [u64; MAX_HELD],
    pub n_held: u32,
    pub _pad2: u32,
    /// The Python frames of the requesting thread.
    pub py: PyStack,
    /// Valid bytes in `stack` (copied from `sp` upwards).
    pub stack_len: u32,
    pub _pad: u32,
    pub stack: [u8; STACK_BYTES],
}

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
}

pub const NUM_COUNTERS: u32 = 10;

/// Key of map `FUTEX_STATS`: one futex word of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FutexKey {
    pub pid: u32,
    pub _pad: u32,
    pub uaddr: u64,
}

/// Blocking on one futex word (map `FUTEX_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FutexStats {
    pub waits: u64,
    pub wait_ns: u64,
}

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
        }
    }
}

/// Which processes the kernel side traces (global `FILTER_MODE`).
pub const FILTER_ALL: u32 = 0;
/// Only the tgids in map `TRACED` (and, through fork, their children).
pub const FILTER_TRACED: u32 = 1;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain `#[repr(C)]` data, valid for any bit pattern.
    unsafe impl aya::Pod for HeldLock {}
    unsafe impl aya::Pod for HeldStack {}
    unsafe impl aya::Pod for DependencyKey {}
    unsafe impl aya::Pod for FutexKey {}
    unsafe impl aya::Pod for FutexStats {}
    unsafe impl aya::Pod for PyProcess {}
}
