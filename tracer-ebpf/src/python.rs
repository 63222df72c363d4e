//! Python frames: CPython's locks are created and taken by Python code, so
//! the Python stack names them (a creation line is a lock class) and shows
//! where they were taken. The collector describes each CPython process
//! (`PY_PROCESSES`); the kernel side walks the thread's frames with it.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{HashMap, LruHashMap, RingBuf},
};
use tracer_common::{
    EventKind, HeldLock, HeldStack, LockKind, PyCodeCopy, PyCodeKey, PyCodeSnapshot,
    PyFrameRaw, PyProcess, PyStack, MAX_HELD, PY_CODE_COPIES, PY_CREATOR_FRAMES, PY_MAX_FRAMES,
    PY_SNAPSHOT_STR,
};

use crate::context::{read_user_bytes, read_user_u32, read_user_u64, BPF_F_NO_PREALLOC};

/// CPython processes (by tgid): where to find their threads' Python stacks.
/// Set by the collector; inherited by forked children (a mod_wsgi daemon is
/// a fork of an Apache process that loaded libpython).
#[map]
static PY_PROCESSES: HashMap<u32, PyProcess> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);
/// `PyThreadState` of Python threads (by tid), learned while they held the
/// GIL: a thread that blocks on a lock has released it.
#[map]
static PY_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

/// Code objects already copied for the collector (see `PyCodeSnapshot`),
/// with their `[filename, qualname, linetable]` pointers then. LRU: one
/// evicted is only copied again.
#[map]
static PY_CODE_COPIED: LruHashMap<PyCodeKey, [u64; 3]> = LruHashMap::with_max_entries(8192, 0);

/// The current thread's `PyThreadState` in CPython process `py`: the GIL
/// holder's if that is this thread (remembered for later if `remember`),
/// else the one remembered.
#[inline(always)]
fn py_thread_state(py: &PyProcess, tid: u32, remember: bool) -> u64 {
    let current = read_user_u64(py.tstate_current);
    if current != 0 && native_tid(py, current) == tid {
        if remember {
            let _ = PY_THREADS.insert(&tid, &current, 0);
        }
        return current;
    }
    // SAFETY: map value, copied.
    if let Some(known) = unsafe { PY_THREADS.get(&tid) }.copied() {
        return known;
    }
    let listed = listed_thread_state(py, tid);
    if listed != 0 {
        let _ = PY_THREADS.insert(&tid, &listed, 0);
    }
    listed
}

/// Thread states searched for one thread's (see `PyProcess::interp_head`):
/// a new thread's is put first in the list, so the threads a program just
/// started are found.
const LISTED_THREADS: usize = 8;

/// The `PyThreadState` of thread `tid` in the main interpreter's list of
/// CPython 2.7 process `py`, searched among its first `LISTED_THREADS`
/// (0: not found, or not 2.7).
#[inline(always)]
fn listed_thread_state(py: &PyProcess, tid: u32) -> u64 {
    if py.interp_head == 0 {
        return 0;
    }
    let interp = read_user_u64(py.interp_head);
    if interp == 0 {
        return 0;
    }
    let mut tstate = read_user_u64(interp + py.interp_tstate_head);
    for _ in 0..LISTED_THREADS {
        if tstate == 0 {
            return 0;
        }
        if native_tid(py, tstate) == tid {
            return tstate;
        }
        tstate = read_user_u64(tstate + py.tstate_next);
    }
    0
}

/// The Linux tid of `PyThreadState` `tstate`: its `native_thread_id`, or
/// up to 3.10 the tid glibc keeps in the `pthread_t` it has instead.
#[inline(always)]
fn native_tid(py: &PyProcess, tstate: u64) -> u32 {
    let id = read_user_u64(tstate + py.tstate_native_thread_id);
    if py.pthread_tid == 0 || id == 0 {
        return id as u32;
    }
    read_user_u32(id + py.pthread_tid)
}

#[inline(always)]
fn read_user_u8(addr: u64) -> u8 {
    // SAFETY: the helper handles faults (0 then).
    unsafe { bpf_probe_read_user(addr as *const u8) }.unwrap_or(0)
}

/// Notes the `PyThreadState` of the current thread if it holds the GIL (a
/// failed first `sem_trywait` of a CPython lock: the thread will release
/// the GIL and block).
#[inline(always)]
pub fn note_py_thread(tgid: u32, tid: u32) {
    // SAFETY: map value, read only.
    if let Some(py) = unsafe { PY_PROCESSES.get(&tgid) } {
        py_thread_state(py, tid, true);
    }
}

/// Whether semaphore `sem` is the GIL of CPython 2.7 process `tgid`: the
/// one `interpreter_lock` points to now (see `PyProcess::gil_lock`). It is
/// not taken as a lock: every blocking Python `acquire` releases the GIL
/// first, so no Python code can deadlock on it, yet a thread re-takes it
/// holding the lock it just took, and takes locks holding it: ordered, it
/// makes a cycle with every Python lock. A pointer that cannot be read (0)
/// matches no semaphore: the GIL is then a lock, as before.
#[inline(always)]
pub fn is_gil(tgid: u32, sem: u64) -> bool {
    // SAFETY: map value, read only.
    let Some(py) = (unsafe { PY_PROCESSES.get(&tgid) }) else {
        return false;
    };
    py.gil_lock != 0 && sem != 0 && read_user_u64(py.gil_lock) == sem
}

/// The innermost `_PyInterpreterFrame` (or `PyFrameObject`) of the
/// current thread of CPython process `py` (0: none, or not known).
#[inline(always)]
fn current_frame(py: &PyProcess, tid: u32, remember: bool) -> u64 {
    let tstate = py_thread_state(py, tid, remember);
    if tstate == 0 {
        return 0;
    }
    // Versions differ as data: 3.11 and 3.12 reach the frame through a
    // `_PyCFrame`, 3.13 and those up to 3.10 point to it directly.
    let cframe = read_user_u64(tstate + py.tstate_cframe);
    if cframe == 0 || py.tstate_frame_direct != 0 {
        cframe
    } else {
        read_user_u64(cframe + py.cframe_current_frame)
    }
}

/// `frame`, or if it is a shim frame the Python frame that made the C call
/// (3.12+ only: `frame_owner_cstack` is 0 before). A shim's `previous` is
/// never another shim: one hop (in the caller's slot: a variable slot index
/// would multiply the verifier's states).
#[inline(always)]
fn past_shim(py: &PyProcess, frame: u64) -> u64 {
    if frame != 0
        && py.frame_owner_cstack != 0
        && read_user_u8(frame + py.frame_owner) as u64 == py.frame_owner_cstack
    {
        read_user_u64(frame + py.frame_previous)
    } else {
        frame
    }
}

/// The code object and instruction of frame `frame`.
#[inline(always)]
fn frame_at(py: &PyProcess, frame: u64) -> PyFrameRaw {
    PyFrameRaw {
        code: read_user_u64(frame + py.frame_code),
        prev_instr: read_user_u64(frame + py.frame_prev_instr),
    }
}

/// Notes in `lock`, a semaphore the current thread takes, the innermost
/// Python frame taking it and that frame's caller, if its process runs
/// CPython: where Python code took a held lock (`threading.Lock`, `RLock`
/// and the import locks are semaphores; 2.7's `RLock` is Python code whose
/// `acquire` takes a `Lock`: its caller is the script's line, which the
/// collector shows). Only those two frames (a few reads), and no read at
/// all for other lock kinds or processes.
#[inline(always)]
pub fn note_python_site(tgid: u32, tid: u32, lock: &mut HeldLock) {
    if lock.kind != LockKind::Semaphore as u32 {
        return;
    }
    // SAFETY: map value, read only.
    let Some(py) = (unsafe { PY_PROCESSES.get(&tgid) }) else {
        return;
    };
    let frame = past_shim(py, current_frame(py, tid, false));
    if frame == 0 {
        return;
    }
    lock.py = frame_at(py, frame);
    let caller = past_shim(py, read_user_u64(frame + py.frame_previous));
    if caller != 0 {
        lock.py_caller = frame_at(py, caller);
    }
}

/// Reads the current thread's innermost Python frames into `out`
/// (innermost first), if its process runs CPython: returns the process's
/// description and how many frames were read. Slots past them are left as
/// they were.
#[inline(always)]
fn python_frames<const N: usize>(
    tgid: u32,
    tid: u32,
    out: &mut [PyFrameRaw; N],
) -> Option<(&'static PyProcess, u32)> {
    // SAFETY: map value, read only.
    let py = unsafe { PY_PROCESSES.get(&tgid) }?;
    let mut frame = current_frame(py, tid, true);
    let mut depth = 0u32;
    for slot in out.iter_mut() {
        frame = past_shim(py, frame);
        if frame == 0 {
            break;
        }
        *slot = frame_at(py, frame);
        depth += 1;
        frame = read_user_u64(frame + py.frame_previous);
    }
    Some((py, depth))
}

/// Fills `out` with the current thread's Python frames (innermost first),
/// if its process runs CPython.
#[inline(always)]
pub fn python_stack(tgid: u32, tid: u32, out: &mut PyStack) {
    out.depth = python_frames(tgid, tid, &mut out.frames).map_or(0, |(_, depth)| depth);
}

/// The length of an ASCII `str` object at `s` with its characters copied
/// into `dst` (0 if it is not ASCII or cannot be read). A mask of 0 tests
/// nothing: 2.7's byte strings (see `kernel_view`).
#[inline(always)]
fn copy_ascii<const N: usize>(py: &PyProcess, s: u64, dst: &mut [u8; N]) -> u32 {
    if s == 0 {
        return 0;
    }
    // SAFETY: the helper handles faults (0 then).
    let state: u32 =
        unsafe { bpf_probe_read_user((s + py.unicode_state) as *const u32) }.unwrap_or(0);
    if py.unicode_ascii_mask != 0 && u64::from(state) & py.unicode_ascii_mask == 0 {
        return 0;
    }
    let len = read_user_u64(s + py.unicode_length);
    read_user_bytes(dst, s + py.unicode_ascii_data, len)
}

/// Copies what the collector needs of the code object of a creating frame.
#[inline(always)]
fn copy_code(py: &PyProcess, frame: PyFrameRaw, out: &mut PyCodeCopy) {
    out.code = frame.code;
    out.prev_instr = frame.prev_instr;
    out.linetable_len = 0;
    out.filename_len = 0;
    out.qualname_len = 0;
    if frame.code == 0 {
        return;
    }
    // SAFETY: the helper handles faults (0 then).
    out.first_line =
        unsafe { bpf_probe_read_user((frame.code + py.code_firstlineno) as *const i32) }
            .unwrap_or(0);
    let table = read_user_u64(frame.code + py.code_linetable);
    if table != 0 {
        let len = read_user_u64(table + py.bytes_size);
        if read_user_bytes(&mut out.linetable, table + py.bytes_data, len) != 0 {
            out.linetable_len = len as u32;
        }
    }
    out.filename_len = copy_ascii(
        py,
        read_user_u64(frame.code + py.code_filename),
        &mut out.filename,
    );
    out.qualname_len = copy_ascii(
        py,
        read_user_u64(frame.code + py.code_qualname),
        &mut out.qualname,
    );
}

/// Fills `frames` with the innermost Python frames of the current thread
/// and `codes` with copies of the first ones' code objects. Both must come
/// zeroed (see `write_lock_event`): the collector reads up to the first
/// zero frame, and copies whose `code` is zero.
#[inline(always)]
pub fn python_creator(
    tgid: u32,
    tid: u32,
    frames: &mut [PyFrameRaw; PY_CREATOR_FRAMES],
    codes: &mut [PyCodeCopy; PY_CODE_COPIES],
) {
    let Some((py, _)) = python_frames(tgid, tid, frames) else {
        return;
    };
    for i in 0..PY_CODE_COPIES {
        copy_code(py, frames[i], &mut codes[i]);
    }
}

/// Whether process `tgid` runs a CPython the collector described.
#[inline(always)]
pub fn is_python(tgid: u32) -> bool {
    // SAFETY: presence check only.
    unsafe { PY_PROCESSES.get(&tgid) }.is_some()
}

/// Sends to `events`, before the event that names them, a copy of each
/// code object of the current thread's Python frames and of the frames
/// where its new dependencies' held locks were taken (`new_from[..n_new]`),
/// unless it was sent already: the collector then names the frames of a
/// process that exited right after its event.
#[inline(always)]
pub fn copy_event_codes(events: &RingBuf, tgid: u32, tid: u32, held: &HeldStack) {
    // SAFETY: map value, read only.
    let Some(py) = (unsafe { PY_PROCESSES.get(&tgid) }) else {
        return;
    };
    let mut frame = current_frame(py, tid, false);
    for _ in 0..PY_MAX_FRAMES {
        frame = past_shim(py, frame);
        if frame == 0 {
            break;
        }
        copy_code_once(events, tgid, py, read_user_u64(frame + py.frame_code));
        frame = read_user_u64(frame + py.frame_previous);
    }
    let n = held.n_new as usize;
    for i in 0..MAX_HELD {
        if i >= n {
            break;
        }
        copy_code_once(events, tgid, py, held.new_from[i].py.code);
        copy_code_once(events, tgid, py, held.new_from[i].py_caller.code);
    }
}

/// Sends a `PyCodeSnapshot` of code object `code` of process `tgid` unless
/// one of it as it is now (same name and table objects) was sent.
#[inline(always)]
fn copy_code_once(events: &RingBuf, tgid: u32, py: &PyProcess, code: u64) {
    if code == 0 {
        return;
    }
    let ident = [
        read_user_u64(code + py.code_filename),
        read_user_u64(code + py.code_qualname),
        read_user_u64(code + py.code_linetable),
    ];
    let key = PyCodeKey {
        tgid,
        _pad: 0,
        code,
    };
    // SAFETY: map value, read only.
    if unsafe { PY_CODE_COPIED.get(&key) }.is_some_and(|sent| *sent == ident) {
        return;
    }
    let Some(mut entry) = events.reserve::<PyCodeSnapshot>(0) else {
        // A full ring buffer (the event is deferred): not marked sent, the
        // next event naming it tries again; the collector reads this one's
        // frames from the process, as it can.
        return;
    };
    let s = entry.as_mut_ptr();
    // SAFETY: `s` points to a reserved, exclusively owned ring-buffer slot.
    unsafe {
        (*s).event = EventKind::PyCode as u32;
        (*s).pid = tgid;
        (*s).code = code;
        (*s).filename = ident[0];
        (*s).qualname = ident[1];
        (*s).linetable = ident[2];
        (*s).code_len = read_user_bytes(&mut (*s).code_bytes, code, py.code_header);
        (*s).filename_len = copy_str(py, &mut (*s).filename_bytes, ident[0]);
        (*s).qualname_len = copy_str(py, &mut (*s).qualname_bytes, ident[1]);
        let table = py.bytes_data + read_user_u64(ident[2] + py.bytes_size);
        (*s).linetable_len = read_user_bytes(&mut (*s).linetable_bytes, ident[2], table);
    }
    entry.submit(0);
    let _ = PY_CODE_COPIED.insert(&key, &ident, 0);
}

/// Copies the start of `str` object `s` (its header and first characters;
/// only the ASCII object itself when more cannot be read: it ends a
/// mapping).
#[inline(always)]
fn copy_str(py: &PyProcess, dst: &mut [u8; PY_SNAPSHOT_STR], s: u64) -> u32 {
    if s == 0 {
        return 0;
    }
    let n = read_user_bytes(dst, s, PY_SNAPSHOT_STR as u64);
    if n != 0 {
        return n;
    }
    let len = py.unicode_ascii_data + read_user_u64(s + py.unicode_length) + 1;
    read_user_bytes(dst, s, len)
}

/// Process `tgid` forked `child`: a child of a CPython process runs the
/// same interpreter. (A new thread gets an entry too: its tid is removed at
/// its exit.)
#[inline(always)]
pub fn follow_fork(tgid: &u32, child: &u32) {
    // SAFETY: map value, copied.
    if let Some(py) = unsafe { PY_PROCESSES.get(tgid) }.copied() {
        let _ = PY_PROCESSES.insert(child, &py, 0);
    }
}

/// Process (or thread, see `follow_fork`) `tgid` exited or exec'd: it runs
/// no Python (yet).
#[inline(always)]
pub fn forget_process(tgid: &u32) {
    let _ = PY_PROCESSES.remove(tgid);
}

/// Thread `tid` exited or exec'd.
#[inline(always)]
pub fn forget_thread(tid: &u32) {
    let _ = PY_THREADS.remove(tid);
}
