//! The CPython processes of a session: found by their symbols (see
//! `python::detect`), described to the kernel side (map `PY_PROCESSES`) so
//! that its events carry the requesting thread's Python frames, and the
//! frames resolved here while the process still lives.

use std::collections::{HashMap, HashSet};

use tracer_common::{PyFrameRaw, PyProcess};
use tracing::{debug, info, warn};

use crate::{
    load::Probes,
    model::LockId,
    python::{self, CodeCache, Interpreter, PyFrame},
};

#[derive(Default)]
pub struct Pythons {
    /// By pid: the interpreter, or None for a process checked and found
    /// without (supported) Python.
    interpreters: HashMap<u32, Option<Interpreter>>,
    cache: CodeCache,
    /// Reasons already reported (each once per session).
    unsupported: HashSet<String>,
    /// Where Python code created a lock (`threading.Lock()`): its name.
    created_at: HashMap<LockId, PyFrame>,
}

/// The kernel side's view of an interpreter.
fn kernel_view(i: &Interpreter) -> PyProcess {
    let o = i.offsets;
    PyProcess {
        tstate_current: i.runtime + o.runtime_tstate_current,
        tstate_native_thread_id: o.tstate_native_thread_id,
        tstate_cframe: o.tstate_cframe,
        cframe_current_frame: o.cframe_current_frame,
        frame_code: o.frame_code,
        frame_prev_instr: o.frame_prev_instr,
        frame_previous: o.frame_previous,
    }
}

impl Pythons {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks whether `pid` runs CPython (again, after an exec) and, if so,
    /// tells the kernel side where its threads' stacks are.
    pub fn check(&mut self, probes: &mut Probes, pid: u32) {
        match python::detect(pid) {
            Ok(Some(interp)) => {
                let threads = python::thread_states(&interp).unwrap_or_default();
                if let Err(e) = probes.set_python(pid, &kernel_view(&interp), &threads) {
                    warn!(
                        pid,
                        "cannot describe a Python process to the kernel side: {e:#}"
                    );
                }
                info!(
                    pid,
                    version = ?interp.version,
                    module = %interp.module.display(),
                    threads = threads.len(),
                    "Python process: its lock events carry Python frames"
                );
                self.interpreters.insert(pid, Some(interp));
            }
            Ok(None) => {
                self.interpreters.insert(pid, None);
            }
            Err(unsupported) => {
                if self.unsupported.insert(unsupported.reason.clone()) {
                    warn!(
                        pid,
                        "Python frames unavailable, native stacks only: {}", unsupported.reason
                    );
                }
                self.interpreters.insert(pid, None);
            }
        }
    }

    /// The interpreter of `pid`: a forked child inherits its parent's (the
    /// kernel side copies the description at fork), found here on first use.
    fn interpreter(&mut self, pid: u32) -> Option<&Interpreter> {
        self.interpreters
            .entry(pid)
            .or_insert_with(|| python::detect(pid).ok().flatten())
            .as_ref()
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
        let frames: Vec<PyFrame> = raw
            .iter()
            .filter_map(|f| self.cache.resolve(&interp, f.code, f.prev_instr))
            .collect();
        debug!(
            pid,
            captured = raw.len(),
            resolved = frames.len(),
            "Python frames"
        );
        frames
    }

    /// A lock created by Python code: the creating frame names it, the
    /// first one outside `threading.py` (`RLock()` and `Condition()` are
    /// Python wrappers there; their caller is the creation site).
    pub fn note_created(&mut self, lock: LockId, creator: &[PyFrameRaw]) {
        let frames = self.resolve(lock.pid, creator);
        let site = frames
            .iter()
            .find(|f| !f.file.ends_with("/threading.py"))
            .or(frames.first());
        if let Some(frame) = site {
            self.created_at.insert(lock, frame.clone());
        }
    }

    /// The lock was destroyed: its memory may become another lock.
    pub fn forget_lock(&mut self, lock: LockId) {
        self.created_at.remove(&lock);
    }

    /// `file:line` where Python code created `lock`, if it did.
    pub fn lock_name(&self, lock: LockId) -> Option<String> {
        let f = self.created_at.get(&lock)?;
        Some(format!("{}:{}", short_path(&f.file), f.line))
    }

    /// Where Python code created `lock`, if it did.
    pub fn creation_site(&self, lock: LockId) -> Option<&PyFrame> {
        self.created_at.get(&lock)
    }

    /// A thread's Python stack read now (it is blocked: its frames are
    /// stable), for deadlock and hang reports.
    pub fn thread_stack(&mut self, pid: u32, tid: u32) -> Vec<PyFrame> {
        let Some(interp) = self.interpreter(pid).cloned() else {
            return Vec::new();
        };
        python::thread_stack(&interp, &mut self.cache, tid).unwrap_or_default()
    }

    pub fn forget_process(&mut self, pid: u32) {
        self.interpreters.remove(&pid);
        self.cache.forget_process(pid);
        self.created_at.retain(|l, _| l.pid != pid);
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
}
