//! Lock classes, as lockdep has them: "the same lock in the program's code",
//! stable across the processes of one binary (prefork workers) and across
//! restarts. A class is, in this order of preference:
//! - for a global or static lock: its binary and symbol (`ab_ba:mutex_a`);
//! - for a lock set up by `pthread_mutex_init`, `sem_init`...: the init call
//!   site (binary + file offset of the return address);
//! - otherwise: the call site of its first acquisition seen.
//!
//! The class graph is a [`LockOrderGraph`] whose nodes are classes (in the
//! pseudo process [`CLASS_PID`]); an inversion split across two processes,
//! or across two instances of the same classes, closes a cycle there.

use std::collections::HashMap;
use std::path::Path;

use crate::model::{LockId, Resolve};
use crate::symbolize::Symbolizer;

/// The pseudo process of class nodes in the class graph.
pub const CLASS_PID: u32 = u32::MAX;

/// The stack pointer at an init function's entry and the bytes above it.
type InitStack = (u64, Vec<u8>);

#[derive(Default)]
pub struct Classes {
    /// The class of each lock instance seen.
    by_lock: HashMap<LockId, LockId>,
    /// Init call sites of locks set up by an init function.
    /// With the stack copied at the init (stack pointer, bytes), to find
    /// the caller of a library's lock-creating function when the class is
    /// first needed.
    init_sites: HashMap<LockId, (u64, Option<InitStack>)>,
    /// Class keys, and their display names by class id (the `addr` of the
    /// class node).
    ids: HashMap<String, u64>,
    names: Vec<String>,
}

impl Classes {
    pub fn new() -> Self {
        Self::default()
    }

    /// A lock was initialized at `site`: that is its class from now on.
    /// `stack`: the stack pointer at the init function's entry and the
    /// bytes above it, if copied.
    pub fn note_init(&mut self, lock: LockId, site: u64, stack: Option<InitStack>) {
        self.by_lock.remove(&lock);
        self.init_sites.insert(lock, (site, stack));
    }

    /// A lock was destroyed: its memory may become another lock.
    pub fn forget_lock(&mut self, lock: LockId) {
        self.by_lock.remove(&lock);
        self.init_sites.remove(&lock);
    }

    /// Forget the instances of an exited process (its classes stay: an
    /// order seen in a dead worker still counts).
    pub fn forget_process(&mut self, pid: u32) {
        self.by_lock.retain(|l, _| l.pid != pid);
        self.init_sites.retain(|l, _| l.pid != pid);
    }

    /// The class node of `lock`, first acquired at `first_site`.
    pub fn class_of(&mut self, lock: LockId, first_site: u64, sym: &mut Symbolizer) -> LockId {
        if let Some(&class) = self.by_lock.get(&lock) {
            return class;
        }
        let key = self.key(lock, first_site, sym);
        self.class_named(lock, key)
    }

    /// The class of `lock` given by `key` (e.g. a shared lock's identity);
    /// a lock keeps the class it was first given.
    pub fn class_named(&mut self, lock: LockId, key: String) -> LockId {
        if let Some(&class) = self.by_lock.get(&lock) {
            return class;
        }
        let next = self.names.len() as u64;
        let id = *self.ids.entry(key.clone()).or_insert(next);
        if id == next {
            self.names.push(key);
        }
        let class = LockId {
            pid: CLASS_PID,
            addr: id,
        };
        self.by_lock.insert(lock, class);
        class
    }

    /// The display name of a class node.
    pub fn name(&self, class: LockId) -> Option<&str> {
        self.names.get(class.addr as usize).map(String::as_str)
    }

    pub fn class_count(&self) -> usize {
        self.names.len()
    }

    fn key(&self, lock: LockId, first_site: u64, sym: &mut Symbolizer) -> String {
        // A lock Python code created: every one comes from the interpreter's
        // PyThread_allocate_lock, so the Python line that created it is the
        // class; one whose creating frame could not be read is a class of
        // its own (never merged with unrelated locks).
        match sym.pythons.creation(lock) {
            Some(Some(site)) => return format!("python:{}:{}", site.file, site.line),
            Some(None) => return format!("python-lock@{}:{:#x}", lock.pid, lock.addr),
            None => {}
        }
        if let Some((site, stack)) = self.init_sites.get(&lock) {
            let site = *site;
            let caller = stack
                .as_ref()
                .filter(|_| in_library(sym, lock.pid, site))
                .and_then(|(sp, bytes)| init_caller(sym, lock.pid, site, *sp, bytes));
            // A shared library's lock-creating function (APR's
            // apr_thread_mutex_create, GLib's g_mutex_init...) makes every
            // lock of its callers: where it was called is the class.
            if let Some(caller) = caller {
                return format!(
                    "init@{} <- {}",
                    site_key(sym, lock.pid, site),
                    site_key(sym, lock.pid, caller)
                );
            }
            return format!("init@{}", site_key(sym, lock.pid, site));
        }
        if let Some(name) = sym.lock_name(lock.pid, lock.addr) {
            let module = module_of(sym, lock.pid, lock.addr).unwrap_or_default();
            return format!("{module}:{name}");
        }
        format!("first@{}", site_key(sym, lock.pid, first_site))
    }
}

/// The caller of the code that called a lock's init function: the return
/// address after `site`, unwound from the stack copied at the init
/// function's entry (`sp` points at `site`).
fn init_caller(sym: &mut Symbolizer, pid: u32, site: u64, sp: u64, stack: &[u8]) -> Option<u64> {
    let above = stack.get(8..)?;
    let frames = sym.unwind(pid, site, sp + 8, 0, above);
    frames.get(1).copied().filter(|&a| a != 0)
}

/// Whether `addr` is in a shared library (not in the program itself).
fn in_library(sym: &mut Symbolizer, pid: u32, addr: u64) -> bool {
    let Some(m) = sym.spaces().find(pid, addr) else {
        return false;
    };
    let name = m
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.contains(".so")
}

/// The file name of the module mapped at `addr`.
fn module_of(sym: &mut Symbolizer, pid: u32, addr: u64) -> Option<String> {
    let m = sym.spaces().find(pid, addr)?;
    Some(
        Path::new(&m.path)
            .file_name()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// A code address as `module+0xFILE_OFFSET (function)`: stable across
/// processes and restarts of the same binary.
fn site_key(sym: &mut Symbolizer, pid: u32, addr: u64) -> String {
    let Some(m) = sym.spaces().find(pid, addr).cloned() else {
        return format!("{addr:#x}");
    };
    let module = Path::new(&m.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let offset = m.file_offset_of(addr);
    let function = sym
        .frames(pid, &[addr], false)
        .into_iter()
        .next()
        .and_then(|f| f.function);
    match function {
        Some(f) => format!("{module}+{offset:#x} ({f})"),
        None => format!("{module}+{offset:#x}"),
    }
}
