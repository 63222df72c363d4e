//! The CPython processes of a session: found by their symbols (see
//! `python::detect`), described to the kernel side (map `PY_PROCESSES`) so
//! that its events carry the requesting thread's Python frames, and the
//! frames resolved here while the process still lives.

use std::collections::{HashMap, HashSet};

use tracer_common::{HeldLock, LockKind, PyCodeCopy, PyFrameRaw, PyProcess};
use tracing::{debug, info, warn};

use tracer_analysis::model::{is_threading_module, LockInstance as LockId, Waiter};

use crate::host::proc::children_of;
use crate::python::layout::FrameKind;
use crate::python::memory::{
    self, CopiedFirst, ProcessMemory, ReadError, Reader, Snapshots, Unparsable,
};
use crate::python::{self, CodeCache, Interpreter, PyFrame};

/// Failures to parse a process's memory after which it is marked and its
/// Python frames skipped: a list read while it changes can look like a
/// loop once; a forged one does every time.
const MAX_STRIKES: u32 = 3;
/// Distinct "unsupported" reasons said (they name files a process maps).
const MAX_REASONS: usize = 256;
/// Bytes of creation-site names kept per process and in total (a process
/// creating a million locks from forged frames must not grow the
/// collector): past them, a lock Python created is unnamed (a class of its
/// own).
const CREATED_PROCESS_BYTES: usize = 16 << 20;
const CREATED_BYTES: usize = 128 << 20;
/// Bytes of code-object copies kept per process and in total (see
/// `PyCodeSnapshot`; a few KiB per code object): past them, a new copy is
/// not kept, and its frames are read from the process as before.
const COPIES_PROCESS_BYTES: usize = 16 << 20;
const COPIES_BYTES: usize = 128 << 20;

/// What the kernel side needs to know of a CPython process: where its
/// threads' stacks are. Written into the kernel by the stage that owns it.
pub struct Description {
    pub pid: u32,
    pub process: PyProcess,
    /// The `PyThreadState` of each thread known now: (tid, address).
    pub threads: Vec<(u32, u64)>,
}

#[derive(Default)]
pub struct Pythons {
    /// By pid: the interpreter, or None for a process checked and found
    /// without (supported) Python.
    interpreters: HashMap<u32, Option<Interpreter>>,
    cache: CodeCache,
    /// Reasons already reported (each once per session).
    unsupported: HashSet<String>,
    /// Processes found with an interpreter that cannot be read.
    unsupported_pids: HashSet<u32>,
    /// Processes checked and found with no Python at all (not one found
    /// with an interpreter it cannot read).
    without_python: HashSet<u32>,
    /// Locks Python code created (`threading.Lock()`), with the creating
    /// frame when it could be read (a module's top-level code object is
    /// freed once the module ran: a lock created there may be unnamed).
    created_at: HashMap<LockId, Option<PyFrame>>,
    /// Bytes of `created_at`'s names, by process and in total.
    created_bytes: HashMap<u32, usize>,
    created_total: usize,
    /// Semaphores that threads wait on for a module's import lock: the
    /// module.
    import_waits: HashMap<LockId, String>,
    /// Failures to parse, by process (see [`MAX_STRIKES`]).
    strikes: HashMap<u32, u32>,
    /// Processes whose memory does not parse as CPython's: no Python frames
    /// are read from them until they exit (their lock events count as any).
    unparsable: HashSet<u32>,
    /// How many processes were marked so (the summary's
    /// `unparsable_processes`).
    unparsable_count: u64,
    /// Code objects the kernel side copied, by process: read before the
    /// process's memory (it may have freed them, or exited).
    copies: HashMap<u32, Snapshots>,
    copies_total: usize,
    /// When each interpreter was found (CLOCK_MONOTONIC ns): one found
    /// after an exec is the new program's (see [`Pythons::forget_exec`]).
    found_at: HashMap<u32, u64>,
}

/// The kernel side's view of an interpreter.
fn kernel_view(i: &Interpreter) -> PyProcess {
    let o = i.offsets;
    // 2.7's names are byte strings (`PyStringObject`): its characters and
    // length are where the kernel side reads an ASCII `str`'s, and no state
    // bits are tested (mask 0).
    let (unicode_length, unicode_ascii_data) = if o.frames == FrameKind::Object27 {
        (o.bytes_size, o.bytes_data)
    } else {
        (o.unicode_length, o.unicode_ascii_data)
    };
    PyProcess {
        tstate_current: i.runtime + o.runtime_tstate_current,
        tstate_native_thread_id: o.tstate_native_thread_id,
        tstate_cframe: o.tstate_cframe,
        cframe_current_frame: o.cframe_current_frame,
        frame_code: o.frame_code,
        frame_prev_instr: o.frame_prev_instr,
        frame_previous: o.frame_previous,
        code_filename: o.code_filename,
        code_qualname: o.code_qualname,
        code_firstlineno: o.code_firstlineno,
        code_linetable: o.code_linetable,
        bytes_size: o.bytes_size,
        bytes_data: o.bytes_data,
        unicode_length,
        unicode_state: o.unicode_state,
        unicode_ascii_mask: o.unicode_ascii_mask,
        unicode_ascii_data,
        tstate_frame_direct: o.tstate_frame_direct.into(),
        pthread_tid: i.pthread_tid,
        frame_owner: o.frame_owner,
        frame_owner_cstack: o.frame_owner_cstack,
        gil_lock: i.gil.ok().flatten().unwrap_or(0),
        code_header: o.code_adaptive,
        interp_head: if o.frames == FrameKind::Object27 {
            i.runtime + o.runtime_interp_head
        } else {
            0
        },
        interp_tstate_head: o.interp_tstate_head,
        tstate_next: o.tstate_next,
    }
}

impl Pythons {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks whether `pid` runs CPython (again, after an exec): returns
    /// the descriptions the kernel side needs, of it and of its children
    /// forked before now (mod_wsgi daemons forked right after the parent
    /// loaded libpython did not inherit one in the kernel).
    #[must_use]
    pub fn check(&mut self, pid: u32) -> Vec<Description> {
        let mut found = Vec::new();
        self.check_into(pid, &mut found);
        found
    }

    fn check_into(&mut self, pid: u32, found: &mut Vec<Description>) {
        if self.unparsable.contains(&pid) {
            self.interpreters.insert(pid, None);
            return;
        }
        match python::detect(pid) {
            Ok(Some(interp)) => self.found(pid, interp, found),
            Ok(None) => {
                self.interpreters.insert(pid, None);
                self.without_python.insert(pid);
                self.checked_now(pid);
            }
            Err(unsupported) => {
                // One note per process (a second look at a process that is
                // exiting fails for another reason) and per reason. A
                // process gone meanwhile (a record read after its exit
                // record, the process forgotten) is not worth one: its
                // memory could not be read, that is all.
                let first_for_pid = self.unsupported_pids.insert(pid);
                if first_for_pid
                    && crate::host::proc::is_running(pid)
                    && self.unsupported.len() < MAX_REASONS
                    && self.unsupported.insert(unsupported.reason.clone())
                {
                    warn!(
                        pid,
                        "Python frames unavailable, native stacks only: {}", unsupported.reason
                    );
                }
                self.interpreters.insert(pid, None);
                self.checked_now(pid);
            }
        }
    }

    /// [`Pythons::check`] of a program that has just been exec'd: its
    /// loader may still be mapping its libraries (a half-mapped libpython
    /// reads as garbage), so only a readable interpreter counts; otherwise
    /// nothing is recorded or said, and its first record looks again.
    #[must_use]
    pub fn check_just_exec(&mut self, pid: u32) -> Vec<Description> {
        let mut found = Vec::new();
        if self.unparsable.contains(&pid) {
            return found;
        }
        if let Ok(Some(interp)) = python::detect(pid) {
            self.found(pid, interp, &mut found);
        }
        found
    }

    /// `pid` runs `interp`: its description, and those of its children
    /// not checked yet (forked before now).
    fn found(&mut self, pid: u32, interp: Interpreter, found: &mut Vec<Description>) {
        // Read again at once if it does not parse (a list read while it
        // changes), until the process is marked.
        let mem = ProcessMemory(pid);
        let threads = loop {
            match python::thread_states(&interp, &Reader::new(&mem, memory::RECORD)) {
                Ok(threads) => break threads,
                Err(ReadError::Fault { .. }) => break Vec::new(),
                Err(ReadError::Unparsable(e)) => {
                    if self.strike(pid, &e) {
                        return;
                    }
                }
            }
        };
        found.push(Description {
            pid,
            process: kernel_view(&interp),
            threads: threads.clone(),
        });
        info!(
            pid,
            version = ?interp.version,
            module = %interp.module.display(),
            threads = threads.len(),
            gil = ?interp.gil.map(|g| g.map(|a| format!("{a:#x}"))),
            "Python process: its lock events carry Python frames"
        );
        if let Err(why) = interp.gil {
            // Once per reason: every process of a pool maps the same file.
            let reason = format!(
                "{}: {why}: CPython {}.{}'s GIL is taken for a lock, and lock-order \
                 inversions through it may be reported",
                interp.module.display(),
                interp.version.0,
                interp.version.1
            );
            if self.unsupported.len() < MAX_REASONS && self.unsupported.insert(reason.clone()) {
                warn!(pid, "{reason}");
            }
        }
        self.interpreters.insert(pid, Some(interp));
        self.checked_now(pid);
        for child in children_of(pid) {
            if !self.is_checked(child) {
                self.check_into(child, found);
            }
        }
    }

    /// Forgets that `pid` was found not to run Python: checked right after
    /// its exec, its loader may not have mapped `libpython` yet (an
    /// embedding program), so its first record looks again.
    pub fn recheck_if_not_python(&mut self, pid: u32) {
        // (Not one found with an interpreter it cannot read: that was said.)
        if self.without_python.remove(&pid) {
            self.interpreters.remove(&pid);
        }
    }

    /// Whether `pid` was checked for an interpreter.
    pub fn is_checked(&self, pid: u32) -> bool {
        self.interpreters.contains_key(&pid)
    }

    /// The interpreter of `pid`: a forked child inherits its parent's (the
    /// kernel side copies the description at fork), found here on first use.
    fn interpreter(&mut self, pid: u32) -> Option<&Interpreter> {
        if self.unparsable.contains(&pid) {
            return None;
        }
        self.interpreters
            .entry(pid)
            .or_insert_with(|| python::detect(pid).ok().flatten())
            .as_ref()
    }

    /// Keeps memory of a code object of process `pid` that the kernel side
    /// copied (`Record::PyCode`), within the bounds.
    pub fn note_code_copy(&mut self, pid: u32, parts: Vec<(u64, Vec<u8>)>) {
        let size: usize = parts.iter().map(|(_, b)| b.len()).sum();
        let copies = self.copies.entry(pid).or_default();
        if copies.bytes() + size > COPIES_PROCESS_BYTES || self.copies_total + size > COPIES_BYTES {
            debug!(pid, "Python code copy not kept: at the bound");
            return;
        }
        for (addr, bytes) in parts {
            let added = copies.put(addr, bytes);
            self.copies_total = self.copies_total.saturating_add_signed(added);
        }
    }

    /// Python frames of process `pid`, resolved (innermost first); frames
    /// that cannot be read are left out.
    pub fn resolve(&mut self, pid: u32, raw: &[PyFrameRaw]) -> Vec<PyFrame> {
        if raw.is_empty() {
            return Vec::new();
        }
        let Some(interp) = self.interpreter(pid).cloned() else {
            return Vec::new();
        };
        // Out of the map while read (`strike` needs `self`).
        let copies = self.copies.remove(&pid);
        let frames = self.resolve_with(pid, &interp, copies.as_ref(), raw);
        if let Some(copies) = copies {
            self.copies.insert(pid, copies);
        }
        frames
    }

    fn resolve_with(
        &mut self,
        pid: u32,
        interp: &Interpreter,
        copies: Option<&Snapshots>,
        raw: &[PyFrameRaw],
    ) -> Vec<PyFrame> {
        let mem = CopiedFirst {
            copies,
            process: ProcessMemory(pid),
        };
        let reader = Reader::new(&mem, memory::RECORD);
        let mut frames = Vec::new();
        for f in raw {
            match self.cache.resolve(interp, &reader, f.code, f.prev_instr) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {}
                Err(e) => {
                    self.strike(pid, &e);
                    return Vec::new();
                }
            }
        }
        debug!(
            pid,
            captured = raw.len(),
            resolved = frames.len(),
            "Python frames"
        );
        frames
    }

    /// Where Python code took held lock `held` of process `pid`: its
    /// innermost frame, or that frame's caller when the innermost is in
    /// `threading.py` and the caller is not (2.7's `RLock` is Python code:
    /// its `acquire` takes the lock the kernel sees, for the script's line,
    /// the caller). None when there is no frame (`code` 0) or it cannot be
    /// read.
    pub fn resolve_held(&mut self, pid: u32, held: &HeldLock) -> Option<PyFrame> {
        let in_threading = |f: &PyFrame| is_threading_module(&f.file);
        if held.py.code == 0 {
            return None;
        }
        let innermost = self.resolve(pid, &[held.py]).pop()?;
        if !in_threading(&innermost) || held.py_caller.code == 0 {
            return Some(innermost);
        }
        let caller = self.resolve(pid, &[held.py_caller]).pop();
        Some(caller.filter(|c| !in_threading(c)).unwrap_or(innermost))
    }

    /// The frames of Python code that created a lock in process `pid`,
    /// resolved now (innermost first; None for a frame that cannot be
    /// read). The kernel's copy of a code object first: a module's
    /// top-level code is freed once the module ran, often before we read it.
    pub fn creating_frames(
        &mut self,
        pid: u32,
        creator: &[PyFrameRaw],
        copies: &[PyCodeCopy],
    ) -> Vec<Option<PyFrame>> {
        // A lock made by Python code in a process whose memory does not
        // parse is unnamed (a class of its own), not taken for one C code
        // made (all CPython's locks would be one class).
        let unnamed = vec![None; creator.len()];
        let Some(interp) = self.interpreter(pid).cloned() else {
            return if self.unparsable.contains(&pid) {
                unnamed
            } else {
                Vec::new()
            };
        };
        let mem = ProcessMemory(pid);
        let reader = Reader::new(&mem, memory::RECORD);
        let mut frames = Vec::with_capacity(creator.len());
        for raw in creator {
            let copied = copies
                .iter()
                .find(|c| c.code == raw.code && c.prev_instr == raw.prev_instr)
                .and_then(|c| python::frame_from_copy(interp.offsets, c));
            let frame = match copied {
                Some(f) => Some(f),
                None => match self
                    .cache
                    .resolve(&interp, &reader, raw.code, raw.prev_instr)
                {
                    Ok(f) => f,
                    Err(e) => {
                        self.strike(pid, &e);
                        return unnamed;
                    }
                },
            };
            frames.push(frame);
        }
        frames
    }

    /// A lock created by Python code (`frames`: see [`Self::creating_frames`]):
    /// the creating frame names it, the first one outside `threading.py`
    /// (`RLock()` and `Condition()` are Python wrappers there; their caller
    /// is the creation site) and `queue.py` (a `Queue`'s lock is made in its
    /// `__init__`: by queue's line, every queue of a process would be one
    /// class, and two unrelated queues could close a class-level cycle).
    pub fn note_created(&mut self, lock: LockId, frames: &[Option<PyFrame>]) {
        if frames.is_empty() {
            return;
        }
        // Frame by frame: an unreadable frame stops the search (naming the
        // lock by an outer frame would be wrong).
        // A lock threading.py makes for itself (a thread's tstate lock) is
        // named by its innermost frame.
        // A lock threading.py makes while it is imported (the main
        // thread's tstate lock, `_shutdown_locks_lock`) is named by
        // threading's own outermost line: the import machinery's line, the
        // next frame out, is the same for all of them and would make
        // different locks one class (a false class-level inversion between
        // a thread's tstate lock and `_shutdown_locks_lock`).
        let mut site = None;
        let mut in_threading = None;
        let mut outermost_threading = None;
        for frame in frames {
            match frame {
                // A frame whose line could not be found (a long module's
                // line table cut in the copy, its code object freed): by
                // file alone it would make every lock that module creates
                // one class. Unnamed, the lock is a class of its own.
                Some(f) if f.line == 0 => break,
                Some(f) if is_threading_module(&f.file) => {
                    in_threading.get_or_insert(f.clone());
                    outermost_threading = Some(f.clone());
                }
                Some(f) if f.file.ends_with("/queue.py") => {
                    in_threading.get_or_insert(f.clone());
                }
                Some(f)
                    if f.file.starts_with("<frozen importlib") && outermost_threading.is_some() =>
                {
                    site = outermost_threading.take();
                    break;
                }
                found => {
                    site = found.clone();
                    break;
                }
            }
        }
        debug!(
            pid = lock.pid,
            addr = lock.addr,
            ?site,
            ?in_threading,
            frames = frames.len(),
            "lock created by Python code"
        );
        let mut site = site.or(in_threading);
        let size = site.as_ref().map_or(0, |f| f.file.len() + f.function.len());
        let used = self.created_bytes.entry(lock.pid).or_default();
        if *used + size > CREATED_PROCESS_BYTES || self.created_total + size > CREATED_BYTES {
            site = None;
        } else {
            *used += size;
            self.created_total += size;
        }
        self.forget_lock(lock);
        self.created_at.insert(lock, site);
    }

    /// For a lock Python code created: the creating frame, if it could be
    /// read. None for other locks.
    pub fn creation(&self, lock: LockId) -> Option<Option<PyFrame>> {
        self.created_at.get(&lock).cloned()
    }

    /// The lock was destroyed: its memory may become another lock.
    pub fn forget_lock(&mut self, lock: LockId) {
        if let Some(Some(f)) = self.created_at.remove(&lock) {
            let size = f.file.len() + f.function.len();
            if let Some(used) = self.created_bytes.get_mut(&lock.pid) {
                *used = used.saturating_sub(size);
            }
            self.created_total = self.created_total.saturating_sub(size);
        }
    }

    /// Python 3's per-module import locks have no holder the kernel side
    /// can see (see `python::ImportState`): a thread blocked on one waits
    /// on a semaphore of its own. For such waiters in Python processes, the
    /// holders are the threads running that module's import, read from
    /// their frames.
    /// Waits on a semaphore the waiter holds itself that are not import
    /// waits are dropped (their releaser is unknown: a condition, an event).
    pub fn resolve_import_waits(&mut self, mut waiters: Vec<Waiter>) -> Vec<Waiter> {
        for w in waiters.iter_mut() {
            let tid = w.blocked.tid;
            if w.kind != LockKind::Semaphore || w.holders != [tid] {
                continue;
            }
            let pid = w.blocked.pid;
            let Some(interp) = self.interpreter(pid).cloned() else {
                continue;
            };
            // One budget for the whole wait: the thread list is read once.
            let mem = ProcessMemory(pid);
            let reader = Reader::new(&mem, memory::RECORD);
            let read = |cache: &mut CodeCache| -> Result<_, ReadError> {
                let threads = python::thread_states(&interp, &reader)?;
                let state = python::import_state(&interp, cache, &reader, &threads, tid)?;
                debug!(pid, tid, ?state, "waits on a semaphore of its own");
                let Some(module) = state.waiting_for else {
                    return Ok(None);
                };
                let mut holders = Vec::new();
                for &(t, _) in threads.iter().filter(|&&(t, _)| t != tid) {
                    match python::import_state(&interp, cache, &reader, &threads, t) {
                        Ok(s) if s.importing.contains(&module) => holders.push(t),
                        Ok(_) | Err(ReadError::Fault { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(Some((module, holders)))
            };
            let (module, holders) = match read(&mut self.cache) {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    debug!(pid, tid, "cannot read the import state: {e:#}");
                    if let ReadError::Unparsable(e) = e {
                        self.strike(pid, &e);
                    }
                    continue;
                }
            };
            w.holders = holders;
            debug!(pid, tid, module, holders = ?w.holders, "waits for a module's import");
            self.import_waits
                .insert(LockId { pid, addr: w.lock }, module);
        }
        waiters.retain(|w| w.holders != [w.blocked.tid]);
        waiters
    }

    /// `file:line` where Python code created `lock`, if it did; for the
    /// semaphore of a module import lock, `import of MODULE`; for the global
    /// import lock, `import lock` (C code makes it, maybe under whichever
    /// Python line first imported something in a thread).
    pub fn lock_name(&self, lock: LockId) -> Option<String> {
        if let Some(module) = self.import_waits.get(&lock) {
            return Some(format!("import of {module}"));
        }
        if self.is_import_lock(lock) {
            return Some("import lock".into());
        }
        let f = self.created_at.get(&lock)?.as_ref()?;
        Some(format!("{}:{}", short_path(&f.file), f.line))
    }

    /// Whether `lock` is the global import lock of its process: the lock
    /// its `import_lock` variable points to now.
    fn is_import_lock(&self, lock: LockId) -> bool {
        let Some(Some(interp)) = self.interpreters.get(&lock.pid) else {
            return false;
        };
        let Some(variable) = interp.import_lock else {
            return false;
        };
        let mem = ProcessMemory(lock.pid);
        Reader::new(&mem, memory::RECORD)
            .u64(variable)
            .is_ok_and(|points_to| points_to == lock.addr)
    }

    /// A thread's Python stack read now (it is blocked: its frames are
    /// stable), for deadlock and hang reports.
    pub fn thread_stack(&mut self, pid: u32, tid: u32) -> Vec<PyFrame> {
        let Some(interp) = self.interpreter(pid).cloned() else {
            return Vec::new();
        };
        let mem = ProcessMemory(pid);
        let reader = Reader::new(&mem, memory::RECORD);
        match python::thread_stack(&interp, &mut self.cache, &reader, tid) {
            Ok(stack) => stack,
            Err(ReadError::Unparsable(e)) => {
                self.strike(pid, &e);
                Vec::new()
            }
            Err(ReadError::Fault { .. }) => Vec::new(),
        }
    }

    /// A record of `pid` did not parse: marks the process at the
    /// [`MAX_STRIKES`]th time (its cached code objects dropped, said once
    /// with -v). Returns whether it is marked.
    fn strike(&mut self, pid: u32, why: &Unparsable) -> bool {
        if self.unparsable.contains(&pid) {
            return true;
        }
        let strikes = self.strikes.entry(pid).or_default();
        *strikes += 1;
        debug!(
            pid,
            strikes = *strikes,
            "Python memory does not parse: {why}"
        );
        if *strikes < MAX_STRIKES {
            return false;
        }
        self.unparsable.insert(pid);
        self.unparsable_count += 1;
        self.interpreters.insert(pid, None);
        self.cache.forget_process(pid);
        info!(
            pid,
            "process {pid} poses as CPython but its memory does not parse ({why}): \
             its Python frames are skipped from now on (its lock events still count)"
        );
        true
    }

    /// Processes marked because their memory does not parse as CPython's.
    pub fn unparsable_processes(&self) -> u64 {
        self.unparsable_count
    }

    /// `pid` was just checked: what was found is the program it runs now.
    fn checked_now(&mut self, pid: u32) {
        self.found_at
            .insert(pid, crate::host::proc::clock_ns(libc::CLOCK_MONOTONIC));
    }

    /// Process `pid` exec'd at `at_ns` (CLOCK_MONOTONIC): what belongs to its
    /// old program goes. Not an interpreter found after the exec (`run`
    /// describes its command once exec'd, often before this record is
    /// read), nor the code copies sent after it: a script that exits at
    /// once could not be looked at again.
    pub fn forget_exec(&mut self, pid: u32, at_ns: u64) {
        let found_after = at_ns != 0 && self.found_at.get(&pid).is_some_and(|&t| t > at_ns);
        if !found_after {
            self.forget_process(pid);
            return;
        }
        let interpreter = self.interpreters.remove(&pid);
        let copies = self.copies.remove(&pid);
        let found_at = self.found_at.remove(&pid);
        // An unsupported one was said once (a second look, at an exiting
        // process, failed for another reason: a second note).
        let said = self.unsupported_pids.contains(&pid);
        let without = self.without_python.contains(&pid);
        self.forget_process(pid);
        if said {
            self.unsupported_pids.insert(pid);
        }
        if without {
            self.without_python.insert(pid);
        }
        if let Some(interpreter) = interpreter {
            self.interpreters.insert(pid, interpreter);
        }
        if let Some(copies) = copies {
            self.copies.insert(pid, copies);
        }
        if let Some(t) = found_at {
            self.found_at.insert(pid, t);
        }
    }

    pub fn forget_process(&mut self, pid: u32) {
        self.interpreters.remove(&pid);
        self.found_at.remove(&pid);
        self.without_python.remove(&pid);
        self.unsupported_pids.remove(&pid);
        self.cache.forget_process(pid);
        if let Some(copies) = self.copies.remove(&pid) {
            self.copies_total = self.copies_total.saturating_sub(copies.bytes());
        }
        self.strikes.remove(&pid);
        self.unparsable.remove(&pid);
        if let Some(used) = self.created_bytes.remove(&pid) {
            self.created_total = self.created_total.saturating_sub(used);
        }
        self.created_at.retain(|l, _| l.pid != pid);
        self.import_waits.retain(|l, _| l.pid != pid);
    }
}

/// The last two components of a path (`app/views.py`): enough to know the
/// file, short enough for a lock name.
pub fn short_path(path: &str) -> &str {
    let mut cut = path.len();
    for _ in 0..2 {
        match path[..cut].rfind('/') {
            Some(i) => cut = i,
            None => return path,
        }
    }
    &path[cut + 1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_paths() {
        assert_eq!(short_path("/srv/app/views.py"), "app/views.py");
        assert_eq!(short_path("app/views.py"), "app/views.py");
        assert_eq!(short_path("views.py"), "views.py");
    }

    fn frame(file: &str, function: &str, line: u32) -> Option<PyFrame> {
        Some(PyFrame {
            function: function.into(),
            file: file.into(),
            line,
        })
    }

    fn named(frames: &[Option<PyFrame>]) -> Option<PyFrame> {
        let mut pythons = Pythons::new();
        let lock = LockId { pid: 1, addr: 0x10 };
        pythons.note_created(lock, frames);
        pythons.creation(lock).flatten()
    }

    /// The cause of the tstate-lock false positive (an inversion between a
    /// thread's tstate lock and `_shutdown_locks_lock`, about one run in
    /// 40): the main thread's tstate lock and `_shutdown_locks_lock` are
    /// both made while `threading` is imported, and were both named by the
    /// import machinery's line, one class.
    #[test]
    fn locks_made_by_importing_threading_are_named_by_its_lines() {
        let threading = "/usr/lib/python3.11/threading.py";
        let bootstrap = "<frozen importlib._bootstrap>";
        let main_tstate = [
            frame(threading, "Thread._set_tstate_lock", 1013),
            frame(threading, "_MainThread.__init__", 1420),
            frame(threading, "<module>", 1532),
            frame(bootstrap, "_call_with_frames_removed", 241),
        ];
        let shutdown = [
            frame(threading, "<module>", 819),
            frame(bootstrap, "_call_with_frames_removed", 241),
        ];
        assert_eq!(named(&main_tstate).unwrap().line, 1532);
        assert_eq!(named(&shutdown).unwrap().line, 819);
        // A thread's own tstate lock: threading's innermost line.
        let tstate = [
            frame(threading, "Thread._set_tstate_lock", 1013),
            frame(threading, "Thread._bootstrap_inner", 1038),
            None,
        ];
        assert_eq!(named(&tstate).unwrap().line, 1013);
        // A user's RLock: its caller; a module's top-level lock, imported:
        // the module's line.
        let user = [
            frame(threading, "RLock", 133),
            frame("/srv/app.py", "<module>", 7),
        ];
        assert_eq!(named(&user).unwrap().file, "/srv/app.py");
        let module = [
            frame("/srv/shared_lock.py", "<module>", 3),
            frame(bootstrap, "_call_with_frames_removed", 241),
        ];
        assert_eq!(named(&module).unwrap().line, 3);
        // threading's top-level code is too long for the line table copy:
        // its frame has no line, and names nothing (the two locks it makes
        // while imported were one class "threading.py:0").
        let shutdown_unread = [
            frame(threading, "<module>", 0),
            frame(bootstrap, "_call_with_frames_removed", 241),
        ];
        assert_eq!(named(&shutdown_unread), None);
        let main_unread = [
            frame(threading, "Thread._set_tstate_lock", 1013),
            frame(threading, "_MainThread.__init__", 1420),
            frame(threading, "<module>", 0),
        ];
        assert_eq!(named(&main_unread).unwrap().line, 1013);
    }

    /// A `queue.Queue`'s lock is named by the line that made the queue, so
    /// that two queues are two classes.
    #[test]
    fn a_queues_lock_is_named_by_the_line_that_made_the_queue() {
        let queue = "/usr/lib/python3.11/queue.py";
        let made = |line| {
            [
                frame(queue, "Queue.__init__", 40),
                frame("/srv/app.py", "Worker.__init__", line),
            ]
        };
        let (a, b) = (named(&made(12)).unwrap(), named(&made(13)).unwrap());
        assert_eq!((a.file.as_str(), a.line), ("/srv/app.py", 12));
        assert_eq!(b.line, 13);
        // A queue queue.py makes for itself: its own line.
        let own = [frame(queue, "Queue.__init__", 40), None];
        assert_eq!(named(&own).unwrap().line, 40);
    }
}
