//! What detection must ask the host: facts about code, memory and the
//! kernel side's state that only the collector can read. A narrow trait, so
//! that every rule runs in unit tests against a fake.

use crate::model::{CodeSite, LockInstance, PyFrame, SharedLock};

/// The stack copied at a lock's init: the stack pointer at the init
/// function's entry and the bytes above it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitStack {
    pub sp: u64,
    /// The frame pointer at the init function's entry: the frame above is
    /// a frame-pointer frame in code built with them.
    pub bp: u64,
    pub bytes: Vec<u8>,
}

/// A global or static lock's name: its binary's file name and build-id (if
/// it has one), and its symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalSymbol {
    pub module: String,
    pub symbol: String,
    pub build: Option<std::sync::Arc<str>>,
}

pub trait Host {
    /// A code address of process `pid` as a class site (module file name,
    /// file offset, function), if it is in a mapped file.
    fn code_site(&mut self, pid: u32, addr: u64) -> Option<CodeSite>;

    /// Whether the code at return address `addr` makes locks for its
    /// callers: a shared library's lock-creating function (APR's
    /// `apr_thread_mutex_create`), or a lock wrapper (`lck_init()`).
    fn makes_locks_for_callers(&mut self, pid: u32, addr: u64) -> bool;

    /// Whether the code at return address `addr` is a lock wrapper.
    fn is_wrapper(&mut self, pid: u32, addr: u64) -> bool;

    /// The callers above `site` (return addresses, innermost first),
    /// unwound from the stack copied at a lock's init (`stack.sp` points at
    /// `site`).
    fn init_callers(&mut self, pid: u32, site: u64, stack: &InitStack) -> Vec<u64>;

    /// For a global or static lock: its binary and its symbol.
    fn global_symbol(&mut self, lock: LockInstance) -> Option<GlobalSymbol>;

    /// For a lock in memory mapped `MAP_SHARED`: its identity.
    fn shared_lock(&mut self, lock: LockInstance) -> Option<SharedLock>;

    /// For a lock Python code created: the creating frame, if it could be
    /// read (`Some(None)`: Python made it, the line is unknown). `None` for
    /// other locks.
    fn python_creation(&mut self, lock: LockInstance) -> Option<Option<PyFrame>>;

    /// The thread that alone waits on conditions with mutex `addr` of
    /// process `pid` (its wake-up mutex), as the kernel side knows it now.
    fn wakeup_mutex_owner(&mut self, pid: u32, addr: u64) -> Option<u32>;
}
