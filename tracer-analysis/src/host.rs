//! What detection must ask the host: facts about code, memory and the
//! kernel side's state that only the collector can read. A narrow trait, so
//! that every rule runs in unit tests against a fake.

use crate::model::{CodeSite, LockInstance, PyFrame, SharedLock};

/// The stack copied at a lock's init: the stack pointer at the init
/// function's entry and the bytes above it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitStack {
    pub sp: u64,
    pub bytes: Vec<u8>,
}

pub trait Host {
    /// A code address of process `pid` as a class site (module file name,
    /// file offset, function), if it is in a mapped file.
    fn code_site(&mut self, pid: u32, addr: u64) -> Option<CodeSite>;

    /// Whether `addr` is in a shared library (not in the program itself).
    fn in_library(&mut self, pid: u32, addr: u64) -> bool;

    /// The caller of the code at `site` that called a lock's init function,
    /// unwound from the stack copied at the init (`stack.sp` points at
    /// `site`).
    fn init_caller(&mut self, pid: u32, site: u64, stack: &InitStack) -> Option<u64>;

    /// For a global or static lock: its binary's file name and its symbol.
    fn global_symbol(&mut self, lock: LockInstance) -> Option<(String, String)>;

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
