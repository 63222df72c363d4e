//! The vocabulary of lock-order analysis, in the words of the kernel's
//! lockdep (Documentation/locking/lockdep-design.rst):
//! - a lock *instance* is one lock object: an address in one process
//!   ([`LockInstance`]), or, for a lock in shared memory, the same object
//!   in every process that maps it ([`LockIdentity::Shared`]);
//! - a lock *class* is "the same lock in the program's code" ([`ClassKey`],
//!   interned as [`ClassId`]);
//! - a *dependency* `from -> to` means `to` was requested while `from` was
//!   held ([`Dependency`], with the evidence of the occurrence kept);
//! - the *chain key* fingerprints the other locks held at a request;
//! - a *cycle* of dependencies is a potential deadlock ([`Cycle`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use tracer_common::LockKind;

/// A lock instance: the address of a lock object in one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockInstance {
    pub pid: u32,
    pub addr: u64,
}

/// A lock in memory mapped `MAP_SHARED`, identified as the kernel identifies
/// a shared futex: by the mapping's device and inode and the offset in it.
/// `path` names the mapping for people and takes no part in the identity.
#[derive(Clone, Debug)]
pub struct SharedLock {
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
    pub path: String,
}

impl SharedLock {
    fn id(&self) -> (u64, u64, u64) {
        (self.dev, self.inode, self.offset)
    }
}

impl PartialEq for SharedLock {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}
impl Eq for SharedLock {}
impl Hash for SharedLock {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}
impl PartialOrd for SharedLock {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SharedLock {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id().cmp(&other.id())
    }
}

impl fmt::Display for SharedLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dev {}:{} inode {} offset {:#x} ({})",
            major(self.dev),
            minor(self.dev),
            self.inode,
            self.offset,
            self.path
        )
    }
}

/// glibc's `major()`/`minor()` of a `dev_t`.
fn major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}
fn minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// The node of a lock object in the instance graph. Private locks sort
/// before shared ones, so that a cycle starts at a process's own lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockIdentity {
    Private(LockInstance),
    /// Interned: the index of the shared lock (see `identity.rs`).
    Shared(u32),
}

/// A lock class, interned (see `classes.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub u32);

/// A code address as a class sees it: stable across the processes and
/// restarts of one binary.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CodeSite {
    /// The file name of the mapped binary or library (empty for an
    /// address in no file: then `offset` is the address).
    pub module: String,
    /// The file offset of the address in it.
    pub offset: u64,
    /// The function holding it, if known (for people; not identity).
    pub function: Option<String>,
    /// The binary's ELF build-id, if it has one: two builds of one program
    /// (the same file name, another version beside it) are other code.
    pub build: Option<Arc<str>>,
}

impl CodeSite {
    /// An address in no mapped file: only its process knows it.
    pub fn unmapped(addr: u64) -> Self {
        CodeSite {
            module: String::new(),
            offset: addr,
            function: None,
            build: None,
        }
    }
}

impl fmt::Display for CodeSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.module.is_empty() {
            return write!(f, "{:#x}", self.offset);
        }
        write!(f, "{}+{:#x}", self.module, self.offset)?;
        if let Some(function) = &self.function {
            write!(f, " ({function})")?;
        }
        Ok(())
    }
}

/// What makes two lock instances the same lock class, in order of
/// preference (see `classes.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClassKey {
    /// A lock created by Python code: the line that created it, and its
    /// function (qualified from 3.11), so that the same lock made in two
    /// workers, or once per request, is one class.
    PythonLine {
        file: String,
        line: u32,
        function: String,
    },
    /// A lock created by Python code at a line that could not be read: a
    /// class of its own, never merged with unrelated locks.
    PythonUnnamed(LockInstance),
    /// A lock set up by `pthread_mutex_init`, `sem_init`...: the init call
    /// site, and, when that site is in a shared library's lock-creating
    /// function, the site that called it.
    InitSite {
        site: CodeSite,
        /// Boxed: most classes have none, and a key is kept per class.
        caller: Option<Box<CodeSite>>,
    },
    /// A global or static lock: its binary (file name and build-id, if it
    /// has one) and symbol.
    Global {
        module: String,
        symbol: String,
        build: Option<Arc<str>>,
    },
    /// A lock in shared memory: one class, whatever process takes it.
    Shared(SharedLock),
    /// Otherwise: the call site of its first acquisition seen.
    FirstUse(CodeSite),
}

impl ClassKey {
    /// Whether the key names a class soundly enough to judge locks by it:
    /// the first-use site does not (the same kind of lock is first taken at
    /// different sites, and different kinds at one), nor a code address in
    /// no file. Such classes take part in no class-level finding.
    pub fn is_sound(&self) -> bool {
        match self {
            ClassKey::FirstUse(_) => false,
            ClassKey::InitSite { site, .. } => !site.module.is_empty(),
            _ => true,
        }
    }

    /// Whether the key names the same code in another run: a global lock
    /// of a binary with a build-id (another build is other code), or a
    /// Python line. Other keys are file offsets without a build, or
    /// depend on this run's processes.
    pub fn outlives_the_run(&self) -> bool {
        matches!(
            self,
            ClassKey::Global { build: Some(_), .. } | ClassKey::PythonLine { .. }
        )
    }

    /// Whether the class is made by a shared library's own code (a class
    /// `init@libX.so+...`), or by Python's `threading.py` for itself (a
    /// thread's tstate lock, which `join` takes while the joining thread
    /// holds its own): its per-object locks nest by design.
    pub fn is_library_init(&self) -> bool {
        match self {
            ClassKey::InitSite { site, .. } => site.module.contains(".so"),
            ClassKey::PythonLine { file, .. } => is_threading_module(file),
            _ => false,
        }
    }
}

impl fmt::Display for ClassKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassKey::PythonLine {
                file,
                line,
                function,
            } => write!(f, "python:{file}:{line} ({function})"),
            ClassKey::PythonUnnamed(l) => write!(f, "python-lock@{}:{:#x}", l.pid, l.addr),
            ClassKey::InitSite { site, caller } => {
                write!(f, "init@{site}")?;
                match caller {
                    Some(caller) => write!(f, " <- {caller}"),
                    None => Ok(()),
                }
            }
            ClassKey::Global { module, symbol, .. } => write!(f, "{module}:{symbol}"),
            ClassKey::Shared(lock) => write!(f, "shared@{lock}"),
            ClassKey::FirstUse(site) => write!(f, "first@{site}"),
        }
    }
}

/// Which graph a cycle was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// A cycle of lock instances (in one process, or through shared locks).
    Instance,
    /// A cycle of lock classes only, split across processes or instances
    /// (prefork workers running the same code).
    Class,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Instance => "instance",
            Level::Class => "class",
        }
    }
}

/// Whether `file` is CPython's `threading` module: Python code that makes
/// and takes locks on the script's behalf (a thread's tstate lock, 2.7's
/// `RLock`), so that its own frames name no script line.
pub fn is_threading_module(file: &str) -> bool {
    file.ends_with("/threading.py")
}

/// One Python frame, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PyFrame {
    /// `co_qualname`, e.g. `Condition.wait`.
    pub function: String,
    /// `co_filename`.
    pub file: String,
    /// 0 if the instruction has no line (CPython's -1).
    pub line: u32,
}

/// A lock a thread holds or requests, as the kernel side saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldAt {
    pub addr: u64,
    pub kind: LockKind,
    /// Where it was taken (or requested): the return address into the code
    /// that called the lock function, then, when that code is a lock wrapper
    /// (`lck_lock()`), the wrapper's callers up to the first one outside
    /// wrappers. The last entry is the site that stands for the lock's first
    /// use (its class when it has no better one).
    pub taken_at: Vec<u64>,
    /// The innermost Python frame that took it, for a lock Python code
    /// took (resolved when the record was read).
    pub python: Option<PyFrame>,
}

impl HeldAt {
    /// The call site outside lock wrappers.
    pub fn site(&self) -> u64 {
        self.taken_at.last().copied().unwrap_or(0)
    }
}

/// A blocking request the kernel side reported: thread `tid` requested `to`
/// while holding each lock of `from`, and none of those dependencies had
/// been sent before. Stacks are unwound and Python frames resolved.
#[derive(Clone, Debug)]
pub struct Request {
    pub pid: u32,
    pub tid: u32,
    /// The thread's name (its comm).
    pub thread: String,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) of the request.
    pub timestamp_ns: u64,
    pub to: HeldAt,
    pub from: Vec<HeldAt>,
    /// Every lock the thread held at the request.
    pub held: Vec<u64>,
    /// Where `to` was requested: the lock function first, then return
    /// addresses, innermost first.
    pub stack: Vec<u64>,
    /// The thread's Python frames, innermost first.
    pub python: Vec<PyFrame>,
    /// Sent as a wake-up hand-off (see `handoff.rs` of the kernel side).
    pub handoff: bool,
}

/// One edge of a lock-order graph, with the evidence of the occurrence kept
/// for it: `to` was requested while `from` was held, by thread `tid` of
/// process `pid`.
#[derive(Clone, Debug)]
pub struct Dependency {
    pub from: LockInstance,
    pub to: LockInstance,
    pub from_kind: LockKind,
    pub to_kind: LockKind,
    pub pid: u32,
    pub tid: u32,
    /// The thread's name (its comm), shared by the dependencies of a
    /// request.
    pub thread: Arc<str>,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) of the request.
    pub timestamp_ns: u64,
    /// Where `from` was taken: its call site, and through lock wrappers
    /// (see [`HeldAt::taken_at`]).
    pub held_stack: Box<[u64]>,
    /// Where Python code took `from` (its innermost frame), for a lock
    /// Python code took.
    pub held_python: Option<Box<PyFrame>>,
    /// Where `to` was requested: the probe's instruction pointer first (inside
    /// the lock function), then return addresses, innermost first.
    pub stack: Arc<[u64]>,
    /// The other locks the thread held (besides `from` and `to`), sorted: a
    /// lock held at every occurrence of every edge of a cycle is its gate.
    pub gates: Box<[LockInstance]>,
    /// The kernel's chain key of the held locks (part of its dedup key).
    pub chain_key: u64,
    /// The requesting thread's Python frames (innermost first), for a
    /// thread running Python code.
    pub python: Arc<[PyFrame]>,
    /// Every occurrence seen was a wake-up hand-off: `to` was a mutex another
    /// thread waited on a condition with.
    pub handoff: bool,
}

/// A potential deadlock: `nodes[i]` is the lock `edges[i]` holds and
/// `edges[i - 1]` requests, rotated so that `nodes[0]` is the smallest node.
#[derive(Clone, Debug)]
pub struct Cycle<N> {
    pub nodes: Vec<N>,
    /// The dependencies (instance evidence) of each hop.
    pub edges: Vec<Dependency>,
    /// A lock held at every occurrence of every edge: the cycle cannot
    /// deadlock (a guarded cycle, reported as a note).
    pub gate: Option<LockInstance>,
}

impl<N> Cycle<N> {
    /// The locks of the cycle, in order (`edges[i].from`).
    pub fn locks(&self) -> Vec<LockInstance> {
        self.edges.iter().map(|d| d.from).collect()
    }

    /// Number of edges (= number of locks).
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }
}

/// A symbolized stack frame. `addr` is the address in the process; for return
/// addresses, file and line describe the call instruction (addr - 1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    #[serde(serialize_with = "hex", deserialize_with = "from_hex")]
    pub addr: u64,
    /// Path of the mapped file (binary or shared library) holding `addr`.
    pub module: Option<String>,
    pub function: Option<String>,
    /// Offset of `addr` into `function`, or into `module` (file offset) when
    /// the function is unknown.
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The GNU build-id of `module` (hex), when it has one: with
    /// `file_offset`, names the code on any host running the same build
    /// (`debuginfod`, `addr2line -e` a copy of the file).
    #[serde(default)]
    pub build_id: Option<String>,
    /// The file offset of `addr` in `module`.
    #[serde(default)]
    pub file_offset: Option<u64>,
}

pub fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

/// Reads back what [`hex`] wrote (`"0x7f..."`), for `locktrace report`.
pub fn from_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.strip_prefix("0x")
        .and_then(|digits| u64::from_str_radix(digits, 16).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a 0x... address")))
}

/// A thread asleep in a futex wait (from `/proc/PID/task/TID/syscall`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub pid: u32,
    pub tid: u32,
    /// The futex word.
    pub uaddr: u64,
    /// The futex operation (`FUTEX_WAIT`...).
    pub op: u64,
    /// The word is private to the process (`FUTEX_PRIVATE_FLAG`): a lock
    /// that is not process-shared, whose holder must be one of its threads.
    pub private: bool,
    /// Registers at the syscall, for unwinding its stack.
    pub sp: u64,
    pub pc: u64,
}

/// A blocked thread and the lock it waits for: a vertex of the wait-for
/// graph, with its edges to the lock's holders.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiter {
    pub blocked: Blocked,
    /// The lock object (the futex word's lock).
    pub lock: u64,
    pub kind: LockKind,
    /// Threads holding it: of the same process, or of another one for a
    /// process-shared mutex (tids are host-wide).
    pub holders: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_keys_read_as_before() {
        let site = |module: &str, offset, function: Option<&str>| CodeSite {
            module: module.into(),
            offset,
            function: function.map(Into::into),
            build: None,
        };
        let init = ClassKey::InitSite {
            site: site("libapr-1.so.0", 0x1f2a, Some("apr_thread_mutex_create")),
            caller: Some(Box::new(site("mod_wsgi.so", 0x2c57, None))),
        };
        assert_eq!(
            init.to_string(),
            "init@libapr-1.so.0+0x1f2a (apr_thread_mutex_create) <- mod_wsgi.so+0x2c57"
        );
        assert!(init.is_library_init());
        let global = ClassKey::Global {
            module: "prefork_demo".into(),
            symbol: "mutex_x".into(),
            build: Some("aa01".into()),
        };
        assert_eq!(global.to_string(), "prefork_demo:mutex_x");
        assert!(!global.is_library_init());
        let python = |file: &str, line, function: &str| ClassKey::PythonLine {
            file: file.into(),
            line,
            function: function.into(),
        };
        let app = python("/srv/app.py", 7, "new_lock");
        assert_eq!(app.to_string(), "python:/srv/app.py:7 (new_lock)");
        assert!(!app.is_library_init());
        // Made by threading for itself (tstate locks): nest by design.
        let tstate = python(
            "/usr/lib/python3.11/threading.py",
            1020,
            "Thread._set_tstate_lock",
        );
        assert!(tstate.is_library_init());
        let shared = SharedLock {
            dev: libc_makedev(0, 1),
            inode: 1035,
            offset: 0x28,
            path: "/dev/zero (deleted)".into(),
        };
        assert_eq!(
            ClassKey::Shared(shared).to_string(),
            "shared@dev 0:1 inode 1035 offset 0x28 (/dev/zero (deleted))"
        );
    }

    fn libc_makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xffff_f000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffff_ff00) << 12)
            | (minor & 0xff)
    }

    #[test]
    fn a_shared_lock_is_its_identity_whatever_its_name() {
        let a = SharedLock {
            dev: 1,
            inode: 2,
            offset: 3,
            path: "/dev/shm/a".into(),
        };
        let b = SharedLock {
            path: "/dev/shm/a (deleted)".into(),
            ..a.clone()
        };
        assert_eq!(a, b);
    }
}
