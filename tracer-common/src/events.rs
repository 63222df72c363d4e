//! Ring-buffer records: what the kernel side tells the collector. The first
//! `u32` of every record is its [`EventKind`].

use crate::{
    HeldLock, PyCodeCopy, PyFrameRaw, PyStack, MAX_HELD, PY_CODE_COPIES, PY_CREATOR_FRAMES,
};

/// What a ring-buffer record is (its first `u32`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`DependencyEvent`]: new dependencies `from[i] -> to`.
    Dependency = 1,
    /// A [`DependencyEvent`] with `from[0] == to`: a thread requested, with
    /// a blocking or timed operation, a non-recursive lock it already holds.
    SelfDeadlock = 2,
    /// A [`LockEvent`]: a lock was initialized or destroyed, so its address
    /// will be a new lock instance (reused memory must not inherit old
    /// dependencies).
    LockReset = 3,
    /// A [`LockEvent`] (only `pid` is meaningful): a traced process exited;
    /// its lock instances can be forgotten and its pid may be reused.
    ProcessExit = 4,
    /// A [`DependencyEvent`] that is a wake-up hand-off: the thread holds
    /// only its own wake-up mutexes (mutexes it alone waits on conditions
    /// with) and requests another thread's (mod_wsgi's worker threads each
    /// own a mutex and lock the next idle one's to wake it). Sent apart from
    /// ordinary occurrences of the same dependency (its own dedup key).
    Handoff = 5,
    /// A [`LockEvent`] (only `pid`, and `addr`: the exec's CLOCK_MONOTONIC
    /// ns, are meaningful): a traced process exec'd a new program. Its address space is new: the lock instances of the
    /// previous image (the same addresses, in a non-PIE program) are other
    /// locks, and their dependencies must not join the new image's.
    ProcessExec = 6,
    /// A [`FreeEvent`]: `free` released heap memory that held a lock named
    /// in a dependency. Its locks are gone: memory reused without a destroy
    /// (a statically initialized or zeroed heap mutex) must not inherit
    /// their dependencies.
    MemoryFreed = 7,
    /// A [`crate::PyCodeSnapshot`]: a code object of a CPython process, as
    /// the next records may name it.
    PyCode = 8,
}

impl EventKind {
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Dependency),
            2 => Some(Self::SelfDeadlock),
            3 => Some(Self::LockReset),
            4 => Some(Self::ProcessExit),
            5 => Some(Self::Handoff),
            6 => Some(Self::ProcessExec),
            7 => Some(Self::MemoryFreed),
            8 => Some(Self::PyCode),
            _ => None,
        }
    }
}

/// Bytes of user stack copied, from the stack pointer up, when a new
/// dependency is emitted: the collector unwinds them with `.eh_frame` (libc
/// has no frame pointers, so the kernel's own stack walk stops too early).
pub const STACK_BYTES: usize = 12288;
/// The stack is copied in page-sized chunks so that a stack ending less than
/// `STACK_BYTES` above the stack pointer is still captured up to its end.
pub const STACK_CHUNK: usize = 4096;

pub const COMM_LEN: usize = 16;

/// Bytes of stack copied at a lock's initialization.
pub const INIT_STACK_BYTES: usize = 256;

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
    pub bp: u64,
    pub init_stack_len: u32,
    /// Kernel side only: the program image (exec count) of a held-back
    /// init.
    pub _pad: u32,
    pub init_stack: [u8; INIT_STACK_BYTES],
}

/// Heap memory `[start, end)` of process `pid` was freed, and a lock named
/// in a dependency may have lived in it (`EventKind::MemoryFreed`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FreeEvent {
    pub event: u32,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
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
    /// The thread's cgroup v2 id (the inode of its cgroup's directory): where
    /// the process ran, even if it is gone when the collector reads this.
    pub cgroup_id: u64,
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
    /// Every lock held at the request (`n_held` of them), for the chain key
    /// of each dependency.
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

/// Stack bytes kept with a deferred dependency: enough for the collector to
/// unwind the few frames above the lock call.
pub const DEFERRED_STACK_BYTES: usize = 256;

/// A dependency the ring buffer had no room for (map `DEFERRED`, keyed by
/// its [`crate::DependencyKey`]): delayed, not lost. The collector reads and
/// deletes these; their stack is a short window above the stack pointer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeferredDependency {
    /// An [`EventKind`] as `u32` (`Dependency` or `Handoff`).
    pub event: u32,
    pub pid: u32,
    pub tid: u32,
    pub n_held: u32,
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; crate::COMM_LEN],
    pub from: HeldLock,
    pub to: HeldLock,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub held: [u64; MAX_HELD],
    pub stack_len: u32,
    pub _pad: u32,
    pub stack: [u8; DEFERRED_STACK_BYTES],
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data, valid for any bit pattern.
unsafe impl aya::Pod for DeferredDependency {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LockEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_keep_their_wire_values() {
        let kinds = [
            (EventKind::Dependency, 1),
            (EventKind::SelfDeadlock, 2),
            (EventKind::LockReset, 3),
            (EventKind::ProcessExit, 4),
            (EventKind::Handoff, 5),
            (EventKind::ProcessExec, 6),
            (EventKind::MemoryFreed, 7),
            (EventKind::PyCode, 8),
        ];
        for (kind, raw) in kinds {
            assert_eq!(kind as u32, raw);
            assert_eq!(EventKind::from_raw(raw), Some(kind));
        }
        assert_eq!(EventKind::from_raw(0), None);
        assert_eq!(EventKind::from_raw(9), None);
    }
}
