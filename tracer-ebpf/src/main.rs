//! locktrace, kernel side: uprobes on libc's lock functions keep a held-lock
//! stack per thread and emit each new lock-order dependency once per process;
//! sched tracepoints follow forks, execs and exits.
//!
//! Cost matters (every lock operation of every traced thread pays a uprobe
//! hit): the hot path is a few O(1) map operations; the stack is copied only
//! when a dependency is new.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use aya_log_ebpf::warn;
use tracer_common::{
    gate_fingerprint, gate_mix, Counter, DependencyEvent, DependencyKey, FutexKey, FutexStats,
    HeldLock, HeldStack, LockEvent, LockKind, PyCodeCopy, PyFrameRaw, PyProcess, PyStack, COMM_LEN,
    COND_MUTEX_SHARED, EVENT_DEPENDENCY, EVENT_HANDOFF, EVENT_LOCK_RESET, EVENT_PROCESS_EXIT,
    EVENT_SELF_DEADLOCK, FILTER_ALL, HELD_FLAG_TIMED, HELD_FLAG_TRY, HELD_RECURSION_SHIFT,
    INIT_STACK_BYTES, MAX_HELD, MUTEX_KIND_ERRORCHECK, MUTEX_KIND_MASK, MUTEX_KIND_OFFSET,
    MUTEX_KIND_RECURSIVE, NUM_COUNTERS, PY_CODE_COPIES, PY_CREATOR_FRAMES, STACK_BYTES,
    STACK_CHUNK,
};

// Set by the collector at load time (EbpfLoader::set_global).
/// The collector's own tgid: its own lock calls must never be traced (its
/// futex and lock traffic would feed back into the ring buffer).
#[no_mangle]
static TRACER_TGID: u32 = 0;
/// `FILTER_ALL` or `FILTER_TRACED`.
#[no_mangle]
static FILTER_MODE: u32 = FILTER_ALL;
/// Non-zero when map `COMMS` holds command names to trace from exec on.
#[no_mangle]
static COMM_FILTER: u32 = 0;
/// Non-zero when map `CGROUPS` holds cgroup v2 ids whose processes are traced.
#[no_mangle]
static CGROUP_FILTER: u32 = 0;
/// Field offsets of the sched tracepoints, read from tracefs by the collector
/// (they differ between kernel versions).
#[no_mangle]
static FORK_CHILD_PID_OFFSET: u32 = 20;
#[no_mangle]
static EXIT_GROUP_DEAD_OFFSET: u32 = 32;

/// CPython processes (by tgid): where to find their threads' Python stacks.
/// Set by the collector; inherited by forked children (a mod_wsgi daemon is
/// a fork of an Apache process that loaded libpython).
#[map]
static PY_PROCESSES: HashMap<u32, PyProcess> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);
/// `PyThreadState` of Python threads (by tid), learned while they held the
/// GIL: a thread that blocks on a lock has released it.
#[map]
static PY_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

/// Held-lock stack of every thread that took a lock (by tid).
#[map]
static HELD: HashMap<u32, HeldStack> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);
/// Held-lock stack of a forking thread, for the child's main thread (by child
/// pid): the child inherits the parent's memory, so it holds those locks.
#[map]
static INHERIT: HashMap<u32, HeldStack> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);
/// Try and timed operations between entry and return (by tid).
#[map]
static PENDING_TRY: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);
/// Mutexes threads wait on conditions with, by (tgid, mutex): the thread,
/// or `COND_MUTEX_SHARED` (see `is_handoff`).
#[map]
static COND_MUTEXES: LruHashMap<[u64; 2], u64> = LruHashMap::with_max_entries(16384, 0);
/// Condition waits in progress (by tid): the mutex, re-acquired at return.
#[map]
static COND_WAITS: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);
/// Semaphores posted by a thread that had not taken them, by (tgid, address):
/// used for signalling, not as locks, so they order nothing.
#[map]
static SIGNAL_SEMS: LruHashMap<DependencyKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// The last `sem_post` of each thread (by tid): the stack pointer of the call
/// and the semaphore. Its probe may fire twice in one call (a retry loop
/// branches back before it): a second hit of the same call is ignored.
/// Cleared when the thread takes a semaphore.
#[map]
static LAST_POST: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(16384, 0);

/// Futex waits in progress (by tid).
#[map]
static FUTEX_WAITING: HashMap<u32, FutexWait> = HashMap::with_max_entries(65536, 0);
/// Blocking per futex word, read by the collector at the end (per CPU: no
/// atomics needed, the collector sums).
#[map]
static FUTEX_STATS: LruPerCpuHashMap<FutexKey, FutexStats> =
    LruPerCpuHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct FutexWait {
    uaddr: u64,
    start_ns: u64,
}

/// An operation between its entry and its return.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    lock: HeldLock,
    /// Where the function was entered (for the report's first frame when the
    /// return makes an event).
    entry_ip: u64,
}
/// Dependencies already sent to the collector (LRU: an evicted entry is only
/// sent again).
#[map]
static DEPENDENCIES: LruHashMap<DependencyKey, u8> = LruHashMap::with_max_entries(262144, 0);
/// Traced tgids when `FILTER_MODE == FILTER_TRACED`.
#[map]
static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);
/// cgroup v2 ids (the inode of the cgroup's directory) whose processes are
/// traced, when `CGROUP_FILTER` is set.
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(64, 0);
/// Command names (comm) whose processes are traced from exec on.
#[map]
static COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(64, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);
/// Scratch space for the `from` locks of new dependencies (see
/// `emit_new_dependencies`).
#[map]
static NEW_FROM: PerCpuArray<NewFrom> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct NewFrom {
    /// Entries used. Kept in map memory, which the verifier does not track:
    /// a counter in a register would be followed value by value, and with the
    /// other branches of the loop that exceeds its instruction budget.
    n: u64,
    locks: [HeldLock; MAX_HELD],
}
/// A zeroed held stack to create new `HELD` entries from (too large for the
/// 512-byte BPF stack).
#[map]
static EMPTY: PerCpuArray<HeldStack> = PerCpuArray::with_max_entries(1, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: reading a global the loader may have rewritten; volatile so the
    // compiler does not fold the default value in.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn is_traced(tgid: u32) -> bool {
    if tgid == global(&TRACER_TGID) {
        return false;
    }
    if global(&FILTER_MODE) == FILTER_ALL {
        return true;
    }
    // SAFETY: the value is not used, only its presence.
    if unsafe { TRACED.get(&tgid).is_some() } {
        return true;
    }
    // A service's cgroup (cgroup v2): processes in it are traced, whenever
    // and however they started.
    // SAFETY (both): a helper without preconditions; presence check only.
    global(&CGROUP_FILTER) != 0 && unsafe { CGROUPS.get(&bpf_get_current_cgroup_id()).is_some() }
}

/// (tgid, tid) of the current thread if it is traced.
#[inline(always)]
fn current_traced() -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_traced(tgid) {
        Some((tgid, pid_tgid as u32))
    } else {
        None
    }
}

/// The caller's return address: at `[rsp]` on function entry, and still there
/// wherever the probe is placed before the function changes `rsp`.
#[inline(always)]
fn return_address(ctx: &ProbeContext) -> u64 {
    // SAFETY: reading user memory through the helper, which handles faults.
    unsafe { bpf_probe_read_user((*ctx.regs).rsp as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn read_user_u64(addr: u64) -> u64 {
    // SAFETY: the helper handles faults (0 then).
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// The current thread's `PyThreadState` in CPython process `py`: the GIL
/// holder's if that is this thread (remembered for later), else the one
/// remembered.
#[inline(always)]
fn py_thread_state(py: &PyProcess, tid: u32) -> u64 {
    let current = read_user_u64(py.tstate_current);
    if current != 0 && read_user_u64(current + py.tstate_native_thread_id) as u32 == tid {
        let _ = PY_THREADS.insert(&tid, &current, 0);
        return current;
    }
    // SAFETY: map value, copied.
    unsafe { PY_THREADS.get(&tid) }.copied().unwrap_or(0)
}

/// Notes the `PyThreadState` of the current thread if it holds the GIL (a
/// failed first `sem_trywait` of a CPython lock: the thread will release
/// the GIL and block).
#[inline(always)]
fn note_py_thread(tgid: u32, tid: u32) {
    // SAFETY: map value, read only.
    if let Some(py) = unsafe { PY_PROCESSES.get(&tgid) } {
        py_thread_state(py, tid);
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
    let tstate = py_thread_state(py, tid);
    if tstate == 0 {
        return Some((py, 0));
    }
    let cframe = read_user_u64(tstate + py.tstate_cframe);
    let mut frame = if cframe == 0 {
        0
    } else {
        read_user_u64(cframe + py.cframe_current_frame)
    };
    let mut depth = 0u32;
    for slot in out.iter_mut() {
        if frame == 0 {
            break;
        }
        *slot = PyFrameRaw {
            code: read_user_u64(frame + py.frame_code),
            prev_instr: read_user_u64(frame + py.frame_prev_instr),
        };
        depth += 1;
        frame = read_user_u64(frame + py.frame_previous);
    }
    Some((py, depth))
}

/// Fills `out` with the current thread's Python frames (innermost first),
/// if its process runs CPython.
#[inline(always)]
fn python_stack(tgid: u32, tid: u32, out: &mut PyStack) {
    out.depth = python_frames(tgid, tid, &mut out.frames).map_or(0, |(_, depth)| depth);
}

/// Reads `len` (at most `N`) bytes of user memory at `src` into `dst`.
#[inline(always)]
fn read_user_bytes<const N: usize>(dst: &mut [u8; N], src: u64, len: u64) -> u32 {
    let n = if len > N as u64 { N as u32 } else { len as u32 };
    // SAFETY: `dst` holds N >= n bytes; the helper handles faults.
    let ok = unsafe { probe_read_user_raw(dst.as_mut_ptr().cast(), n, src as *const _) } == 0;
    if ok {
        n
    } else {
        0
    }
}

/// The length of an ASCII `str` object at `s` with its characters copied
/// into `dst` (0 if it is not ASCII or cannot be read).
#[inline(always)]
fn copy_ascii<const N: usize>(py: &PyProcess, s: u64, dst: &mut [u8; N]) -> u32 {
    if s == 0 {
        return 0;
    }
    // SAFETY: the helper handles faults (0 then).
    let state: u32 =
        unsafe { bpf_probe_read_user((s + py.unicode_state) as *const u32) }.unwrap_or(0);
    if u64::from(state) & py.unicode_ascii_mask == 0 {
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
fn python_creator(
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

/// The thread's held-lock stack, created on its first lock.
#[inline(always)]
fn held_stack(tgid: u32, tid: u32) -> Option<&'static mut HeldStack> {
    if let Some(held) = HELD.get_ptr_mut(&tid) {
        // SAFETY: map value; only this thread writes its own entry.
        return Some(unsafe { &mut *held });
    }
    // A forked child's main thread (tid == tgid) starts with what the forking
    // thread held; any other new thread holds nothing.
    let inherited = if tid == tgid {
        INHERIT.get_ptr(&tid)
    } else {
        None
    };
    let init = match inherited {
        Some(p) => p,
        None => EMPTY.get_ptr(0)?,
    };
    // SAFETY: both are map values of the right type.
    HELD.insert(&tid, unsafe { &*init }, 0).ok()?;
    if inherited.is_some() {
        let _ = INHERIT.remove(&tid);
    }
    HELD.get_ptr_mut(&tid).map(|p| unsafe { &mut *p })
}

/// Copies a held-lock record field by field. A plain struct assignment
/// between map values and ring-buffer memory compiles to a call to the byte
/// loop of `memcpy`, which the verifier then walks instruction by instruction
/// (and rejects as too large).
#[inline(always)]
fn copy_lock(dst: &mut HeldLock, src: &HeldLock) {
    // SAFETY: both are valid, aligned references.
    unsafe {
        core::ptr::write_volatile(&mut dst.addr, src.addr);
        core::ptr::write_volatile(&mut dst.callsite, src.callsite);
        core::ptr::write_volatile(&mut dst.kind, src.kind);
        core::ptr::write_volatile(&mut dst.flags, src.flags);
    }
}

#[inline(always)]
fn push(held: &mut HeldStack, lock: HeldLock) {
    let depth = held.depth as usize;
    match held.locks.get_mut(depth) {
        Some(slot) => {
            copy_lock(slot, &lock);
            held.depth = depth as u32 + 1;
        }
        None => count(Counter::HeldOverflow),
    }
}

/// A blocking acquisition of `to`: emit the dependencies `held -> to` that are
/// new for this process, then record `to` as held. `entry_ip` is non-zero
/// when called at the return of a condition wait (see `DependencyEvent`).
#[inline(always)]
fn acquire_blocking(regs: &pt_regs, to: HeldLock, entry_ip: u64) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    count(Counter::Acquire);
    if to.kind == LockKind::Semaphore as u32 {
        let _ = LAST_POST.remove(&tid);
        if is_signal_sem(tgid, to.addr) {
            return 0;
        }
    }
    let Some(held) = held_stack(tgid, tid) else {
        return 0;
    };
    if let Some(i) = find_held(held, to.addr) {
        if relock(regs, held, i, tgid, tid, &to) {
            return 0;
        }
    }
    if held.depth > 0 {
        let event = if is_handoff(tgid, tid, held, &to) {
            EVENT_HANDOFF
        } else {
            EVENT_DEPENDENCY
        };
        emit_new_dependencies(regs, held, tgid, tid, &to, entry_ip, event);
    }
    push(held, to);
    0
}

/// The topmost entry of `held` for `addr`.
#[inline(always)]
fn find_held(held: &HeldStack, addr: u64) -> Option<usize> {
    let depth = (held.depth as usize).min(MAX_HELD);
    for k in 0..MAX_HELD {
        if k >= depth {
            break;
        }
        let i = depth - 1 - k;
        if let Some(h) = held.locks.get(i) {
            if h.addr == addr {
                return Some(i);
            }
        }
    }
    None
}

/// glibc's type of the mutex at `addr`: normal, recursive, error-checking.
#[inline(always)]
fn mutex_type(addr: u64) -> u32 {
    // SAFETY: reading user memory through the helper, which handles faults.
    let kind = unsafe { bpf_probe_read_user((addr + MUTEX_KIND_OFFSET) as *const u32) };
    kind.unwrap_or(0) & MUTEX_KIND_MASK
}

/// The holder requests a lock it already holds (entry `i` of `held`).
/// Returns true when that changes nothing more (a recursive re-lock is
/// counted, a self-deadlock reported, an error-checking mutex refuses);
/// false when the request is an ordinary acquisition (a reader re-reading).
#[inline(always)]
fn relock(
    regs: &pt_regs,
    held: &mut HeldStack,
    i: usize,
    tgid: u32,
    tid: u32,
    to: &HeldLock,
) -> bool {
    let Some(entry) = held.locks.get_mut(i) else {
        return true;
    };
    let kind = entry.kind;
    if kind == LockKind::Semaphore as u32 {
        // Taken again without a post by this thread: it was posted by
        // another (signalling); one entry stands for it.
        return true;
    }
    if kind == LockKind::RwlockRead as u32 && to.kind == LockKind::RwlockRead as u32 {
        return false;
    }
    if kind == LockKind::RwlockRead as u32 || kind == LockKind::RwlockWrite as u32 {
        // glibc refuses (EDEADLK) a writer re-locking, and a reader upgrading.
        return true;
    }
    if kind == LockKind::Mutex as u32 || kind == LockKind::RecursiveMutex as u32 {
        match mutex_type(to.addr) {
            MUTEX_KIND_RECURSIVE => {
                entry.kind = LockKind::RecursiveMutex as u32;
                entry.flags += 1 << HELD_RECURSION_SHIFT;
                return true;
            }
            MUTEX_KIND_ERRORCHECK => return true,
            _ => {}
        }
    }
    // A normal mutex or a spinlock: the thread waits for itself.
    let entry = *entry;
    emit_self_deadlock(regs, tgid, tid, &entry, to, held);
    true
}

/// The dependencies `held -> to` not yet sent for this process: their
/// `from` locks are gathered in `NEW_FROM` (per CPU) before the ring-buffer
/// slot is reserved, so that a steady workload reserves nothing.
///
/// The loops index by a counter, never by a bitmask of new entries: the
/// verifier follows every value of such a mask separately (2^16 paths).
#[inline(always)]
fn emit_new_dependencies(
    regs: &pt_regs,
    held: &HeldStack,
    tgid: u32,
    tid: u32,
    to: &HeldLock,
    entry_ip: u64,
    event: u32,
) {
    let Some(scratch) = NEW_FROM.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value; programs do not nest on one CPU.
    let scratch = unsafe { &mut *scratch };
    let n_ptr: *mut u64 = &mut scratch.n;
    // SAFETY (all volatile accesses): a valid, aligned map value field.
    unsafe { core::ptr::write_volatile(n_ptr, 0) };
    let depth = held.depth as usize;
    let mut all_held = 0u64;
    for i in 0..MAX_HELD {
        if i >= depth {
            break;
        }
        all_held ^= gate_mix(held.locks[i].addr);
    }
    for i in 0..MAX_HELD {
        if i >= depth {
            break;
        }
        let from = &held.locks[i];
        if from.addr == to.addr {
            continue;
        }
        if from.kind == LockKind::Semaphore as u32 && is_signal_sem(tgid, from.addr) {
            continue;
        }
        let mut key = dependency_key(tgid, from, to, event);
        key.gates = gate_fingerprint(all_held, from.addr);
        // SAFETY: presence check only.
        if unsafe { DEPENDENCIES.get(&key) }.is_some() {
            continue;
        }
        if DEPENDENCIES.insert(&key, &0, 0).is_err() {
            count(Counter::DependencyCacheFull);
        }
        let n = unsafe { core::ptr::read_volatile(n_ptr) } as usize;
        if let Some(slot) = scratch.locks.get_mut(n) {
            copy_lock(slot, from);
            unsafe { core::ptr::write_volatile(n_ptr, n as u64 + 1) };
        }
    }
    let n = unsafe { core::ptr::read_volatile(n_ptr) } as usize;
    if n == 0 {
        return;
    }
    if !submit(
        regs,
        tgid,
        tid,
        to,
        entry_ip,
        event,
        &scratch.locks,
        n,
        held,
    ) {
        // Forget them so that the next occurrence is sent again.
        for i in 0..MAX_HELD {
            if i >= n {
                break;
            }
            let mut key = dependency_key(tgid, &scratch.locks[i], to, event);
            key.gates = gate_fingerprint(all_held, scratch.locks[i].addr);
            let _ = DEPENDENCIES.remove(&key);
        }
    }
}

/// Reports, once per lock and mode, a thread requesting a lock it holds.
#[inline(always)]
fn emit_self_deadlock(
    regs: &pt_regs,
    tgid: u32,
    tid: u32,
    held: &HeldLock,
    to: &HeldLock,
    stack: &HeldStack,
) {
    let key = dependency_key(tgid, held, to, EVENT_SELF_DEADLOCK);
    // SAFETY: presence check only.
    if unsafe { DEPENDENCIES.get(&key) }.is_some() {
        return;
    }
    let Some(scratch) = NEW_FROM.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value; programs do not nest on one CPU.
    let scratch = unsafe { &mut *scratch };
    copy_lock(&mut scratch.locks[0], held);
    if submit(
        regs,
        tgid,
        tid,
        to,
        0,
        EVENT_SELF_DEADLOCK,
        &scratch.locks,
        1,
        stack,
    ) {
        let _ = DEPENDENCIES.insert(&key, &0, 0);
    }
}

/// Writes one event to the ring buffer; false (and counted) if it is full.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn submit(
    regs: &pt_regs,
    tgid: u32,
    tid: u32,
    to: &HeldLock,
    entry_ip: u64,
    event: u32,
    from: &[HeldLock; MAX_HELD],
    n: usize,
    held: &HeldStack,
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<DependencyEvent>(0) else {
        count(Counter::LostEvents);
        return false;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, exclusively owned ring-buffer slot.
    unsafe {
        (*ev).event = event;
        (*ev).pid = tgid;
        (*ev).tid = tid;
        (*ev).timestamp_ns = bpf_ktime_get_ns();
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        copy_lock(&mut (*ev).to, to);
        (*ev).entry_ip = entry_ip;
        (*ev).ip = regs.rip;
        (*ev).sp = regs.rsp;
        (*ev).bp = regs.rbp;
        // All slots (a fixed loop); only the first n_from are meaningful.
        for i in 0..MAX_HELD {
            copy_lock(&mut (*ev).from[i], &from[i]);
        }
        (*ev).n_from = n as u32;
        for i in 0..MAX_HELD {
            core::ptr::write_volatile(&mut (*ev).held[i], held.locks[i].addr);
        }
        (*ev).n_held = held.depth;
        python_stack(tgid, tid, &mut (*ev).py);
        (*ev).stack_len = copy_stack(&mut (*ev).stack, regs.rsp);
    }
    entry.submit(0);
    count(Counter::DependencyEvents);
    true
}

#[inline(always)]
fn signal_sem_key(tgid: u32, addr: u64) -> DependencyKey {
    DependencyKey {
        gates: 0,
        pid: tgid,
        kinds: 0,
        from: addr,
        to: addr,
    }
}

#[inline(always)]
fn is_signal_sem(tgid: u32, addr: u64) -> bool {
    // SAFETY: presence check only.
    unsafe { SIGNAL_SEMS.get(&signal_sem_key(tgid, addr)) }.is_some()
}

#[inline(always)]
fn dependency_key(pid: u32, from: &HeldLock, to: &HeldLock, event: u32) -> DependencyKey {
    DependencyKey::new(pid, event, (from.addr, from.kind), (to.addr, to.kind), 0)
}

/// Copies the user stack from `sp` up: first to the end of `sp`'s page, then
/// whole pages, stopping at the first page that cannot be read (the end of the
/// stack mapping). Returns the bytes copied.
#[inline(always)]
fn copy_stack(buf: &mut [u8; STACK_BYTES], sp: u64) -> u32 {
    let first = STACK_CHUNK - (sp as usize & (STACK_CHUNK - 1));
    let base = buf.as_mut_ptr();
    // SAFETY: first <= STACK_CHUNK and the later chunks end at most at
    // first + 2 * STACK_CHUNK <= STACK_BYTES.
    unsafe {
        if probe_read_user_raw(base.cast(), first as u32, sp as *const _) != 0 {
            count(Counter::StackTruncated);
            return 0;
        }
        let mut copied = first;
        for _ in 0..(STACK_BYTES / STACK_CHUNK - 1) {
            if copied + STACK_CHUNK > STACK_BYTES {
                break;
            }
            let dst = base.add(copied);
            let src = (sp as usize + copied) as *const _;
            if probe_read_user_raw(dst.cast(), STACK_CHUNK as u32, src) != 0 {
                break;
            }
            copied += STACK_CHUNK;
        }
        copied as u32
    }
}

/// What a release did.
enum Released {
    /// The thread is not traced.
    NotTraced,
    /// The thread did not hold the lock.
    NotHeld,
    /// One level of a recursive mutex.
    Level,
    /// The entry, removed from the held stack.
    Entry(HeldLock),
}

/// Releases `lock`: the topmost entry for it (locks need not be released in
/// LIFO order), or one recursion level of a recursive mutex.
#[inline(always)]
fn release(lock: u64) -> Released {
    let Some((_, tid)) = current_traced() else {
        return Released::NotTraced;
    };
    count(Counter::Release);
    let Some(held) = HELD.get_ptr_mut(&tid) else {
        return Released::NotHeld;
    };
    // SAFETY: map value; only this thread writes its own entry.
    let held = unsafe { &mut *held };
    let Some(found) = find_held(held, lock) else {
        return Released::NotHeld;
    };
    let depth = (held.depth as usize).min(MAX_HELD);
    let Some(entry) = held.locks.get_mut(found) else {
        return Released::NotHeld;
    };
    if entry.flags >> HELD_RECURSION_SHIFT > 0 {
        entry.flags -= 1 << HELD_RECURSION_SHIFT;
        return Released::Level;
    }
    let removed = *entry;
    for j in 0..MAX_HELD - 1 {
        if j < found {
            continue;
        }
        if j + 1 >= depth {
            break;
        }
        let (low, high) = held.locks.split_at_mut(j + 1);
        if let (Some(dst), Some(src)) = (low.last_mut(), high.first()) {
            copy_lock(dst, src);
        }
    }
    held.depth = depth as u32 - 1;
    Released::Entry(removed)
}

#[inline(always)]
fn lock_arg(ctx: &ProbeContext) -> u64 {
    ctx.arg::<u64>(0).unwrap_or(0)
}

#[inline(always)]
fn requested(ctx: &ProbeContext, kind: LockKind, flags: u32) -> HeldLock {
    HeldLock {
        addr: lock_arg(ctx),
        callsite: return_address(ctx),
        kind: kind as u32,
        flags,
    }
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> &pt_regs {
    // SAFETY: the context's registers are valid for the program's run.
    unsafe { &*ctx.regs }
}

#[uprobe]
pub fn mutex_lock(ctx: ProbeContext) -> u32 {
    acquire_blocking(regs(&ctx), requested(&ctx, LockKind::Mutex, 0), 0)
}

#[uprobe]
pub fn rwlock_rdlock(ctx: ProbeContext) -> u32 {
    acquire_blocking(regs(&ctx), requested(&ctx, LockKind::RwlockRead, 0), 0)
}

#[uprobe]
pub fn rwlock_wrlock(ctx: ProbeContext) -> u32 {
    acquire_blocking(regs(&ctx), requested(&ctx, LockKind::RwlockWrite, 0), 0)
}

#[uprobe]
pub fn spin_lock(ctx: ProbeContext) -> u32 {
    acquire_blocking(regs(&ctx), requested(&ctx, LockKind::Spinlock, 0), 0)
}

/// Unlock of any kind (mutex, rwlock, spinlock).
#[uprobe]
pub fn unlock(ctx: ProbeContext) -> u32 {
    if let Released::NotHeld = release(lock_arg(&ctx)) {
        count(Counter::UnmatchedRelease);
    }
    0
}

/// Entry of a try or timed operation: remember the lock until the return
/// says whether it was taken. A timed request for a normal mutex the thread
/// holds waits for itself until the timeout: a self-deadlock.
#[inline(always)]
fn try_entry(ctx: &ProbeContext, kind: LockKind, flags: u32) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let pending = requested(ctx, kind, flags);
    if flags & HELD_FLAG_TIMED != 0 {
        if let Some(held) = HELD.get_ptr_mut(&tid) {
            // SAFETY: map value; only this thread writes its own entry.
            let held = unsafe { &mut *held };
            if let Some(i) = find_held(held, pending.addr) {
                if let Some(entry) = held.locks.get(i) {
                    let entry = *entry;
                    let normal_mutex = entry.kind == LockKind::Mutex as u32 && {
                        let t = mutex_type(pending.addr);
                        t != MUTEX_KIND_RECURSIVE && t != MUTEX_KIND_ERRORCHECK
                    };
                    if normal_mutex {
                        emit_self_deadlock(regs(ctx), tgid, tid, &entry, &pending, held);
                    }
                }
            }
        }
    }
    let pending = Pending {
        lock: pending,
        entry_ip: regs(ctx).rip,
    };
    let _ = PENDING_TRY.insert(&tid, &pending, 0);
    0
}

#[uprobe]
pub fn mutex_trylock(ctx: ProbeContext) -> u32 {
    try_entry(&ctx, LockKind::Mutex, HELD_FLAG_TRY)
}

#[uprobe]
pub fn mutex_timedlock(ctx: ProbeContext) -> u32 {
    try_entry(&ctx, LockKind::Mutex, HELD_FLAG_TIMED)
}

#[uprobe]
pub fn rwlock_tryrdlock(ctx: ProbeContext) -> u32 {
    try_entry(&ctx, LockKind::RwlockRead, HELD_FLAG_TRY)
}

#[uprobe]
pub fn rwlock_trywrlock(ctx: ProbeContext) -> u32 {
    try_entry(&ctx, LockKind::RwlockWrite, HELD_FLAG_TRY)
}

#[uprobe]
pub fn spin_trylock(ctx: ProbeContext) -> u32 {
    try_entry(&ctx, LockKind::Spinlock, HELD_FLAG_TRY)
}

/// Return of a try or timed operation (all return 0 on success): a
/// successful one holds the lock (or one more level of a recursive mutex it
/// holds), and adds no dependency of its own (it could not block forever).
#[uretprobe]
pub fn try_return(ctx: RetProbeContext) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    // SAFETY: copied out before the entry is removed.
    let Some(pending) = (unsafe { PENDING_TRY.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PENDING_TRY.remove(&tid);
    let ret: i64 = ctx.ret();
    if ret as i32 != 0 {
        if pending.lock.kind == LockKind::Semaphore as u32 {
            // CPython's lock, contended: it will block without the GIL.
            note_py_thread(tgid, tid);
        }
        return 0;
    }
    let entry_ip = pending.entry_ip;
    let pending = pending.lock;
    if pending.kind == LockKind::Semaphore as u32 && pending.flags & HELD_FLAG_TRY != 0 {
        // CPython takes every lock with sem_trywait first (the GIL held),
        // and waits only if that fails: an uncontended blocking acquire is a
        // successful sem_trywait. So it orders like a blocking one.
        // SAFETY: the context's registers are valid for the program's run.
        let regs = unsafe { &*ctx.regs };
        return acquire_blocking(regs, pending, entry_ip);
    }
    if pending.kind == LockKind::Semaphore as u32 {
        let _ = LAST_POST.remove(&tid);
        if is_signal_sem(tgid, pending.addr) {
            return 0;
        }
    }
    count(Counter::Acquire);
    let Some(held) = held_stack(tgid, tid) else {
        return 0;
    };
    if pending.kind == LockKind::Mutex as u32 {
        if let Some(i) = find_held(held, pending.addr) {
            // Only a recursive mutex can be taken again by its holder.
            if let Some(entry) = held.locks.get_mut(i) {
                entry.kind = LockKind::RecursiveMutex as u32;
                entry.flags += 1 << HELD_RECURSION_SHIFT;
            }
            return 0;
        }
    }
    push(held, pending);
    0
}

#[uprobe]
pub fn sem_wait(ctx: ProbeContext) -> u32 {
    acquire_blocking(regs(&ctx), requested(&ctx, LockKind::Semaphore, 0), 0)
}

#[uprobe]
pub fn sem_trywait(ctx: ProbeContext) -> u32 {
    try_entry(&ctx, LockKind::Semaphore, HELD_FLAG_TRY)
}

#[uprobe]
pub fn sem_timedwait(ctx: ProbeContext) -> u32 {
    try_entry(&ctx, LockKind::Semaphore, HELD_FLAG_TIMED)
}

/// A post releases the semaphore if this thread holds it; a post by another
/// thread marks it as a signalling semaphore (see `SIGNAL_SEMS`).
#[uprobe]
pub fn sem_post(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let sem = lock_arg(&ctx);
    let call = [regs(&ctx).rsp, sem];
    // SAFETY: copied out.
    if unsafe { LAST_POST.get(&tid) }.copied() == Some(call) {
        return 0;
    }
    let _ = LAST_POST.insert(&tid, &call, 0);
    if let Released::NotHeld = release(sem) {
        let _ = SIGNAL_SEMS.insert(&signal_sem_key(tgid, sem), &1, 0);
    }
    0
}

/// `pthread_mutex_init`/`_destroy`, `pthread_rwlock_*`, `sem_init`/`_destroy`:
/// the address becomes a new lock instance. The collector drops the old
/// one's dependencies (and their entries in `DEPENDENCIES`); an init's call
/// site is the new lock's class.
#[inline(always)]
fn lock_reset(ctx: &ProbeContext, init: u32) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve::<LockEvent>(0) else {
        count(Counter::LostEvents);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, exclusively owned ring-buffer slot
    // (written field by field: the event is too large for the BPF stack).
    unsafe {
        write_lock_event(
            ev,
            EVENT_LOCK_RESET,
            tgid,
            tid,
            init,
            lock_arg(ctx),
            return_address(ctx),
        );
        if init != 0 {
            python_creator(tgid, tid, &mut (*ev).py_creator, &mut (*ev).py_code);
            let sp = (*ctx.regs).rsp;
            (*ev).sp = sp;
            (*ev).init_stack_len =
                read_user_bytes(&mut (*ev).init_stack, sp, INIT_STACK_BYTES as u64);
        }
    }
    entry.submit(0);
    0
}

/// The fixed part of a `LockEvent`, and no Python frames.
///
/// # Safety
/// `ev` must point to a writable `LockEvent`.
#[inline(always)]
unsafe fn write_lock_event(
    ev: *mut LockEvent,
    event: u32,
    pid: u32,
    tid: u32,
    init: u32,
    addr: u64,
    callsite: u64,
) {
    (*ev).event = event;
    (*ev).pid = pid;
    (*ev).tid = tid;
    (*ev).init = init;
    (*ev).addr = addr;
    (*ev).callsite = callsite;
    for i in 0..PY_CREATOR_FRAMES {
        (*ev).py_creator[i] = PyFrameRaw::default();
    }
    for i in 0..PY_CODE_COPIES {
        (*ev).py_code[i].code = 0;
    }
    (*ev).sp = 0;
    (*ev).init_stack_len = 0;
}

#[uprobe]
pub fn lock_init(ctx: ProbeContext) -> u32 {
    lock_reset(&ctx, 1)
}

#[uprobe]
pub fn lock_destroy(ctx: ProbeContext) -> u32 {
    lock_reset(&ctx, 0)
}

/// The thread that alone waits on conditions with `mutex` (its wake-up
/// mutex), if one does.
#[inline(always)]
fn wakeup_mutex_owner(tgid: u32, mutex: u64) -> Option<u32> {
    // SAFETY: map value, copied.
    let v = unsafe { COND_MUTEXES.get(&[u64::from(tgid), mutex]) }.copied()?;
    (v & COND_MUTEX_SHARED == 0).then_some(v as u32)
}

/// Whether requesting `to` while holding `held` is a wake-up hand-off: the
/// thread holds only its own wake-up mutexes and requests another thread's
/// (mod_wsgi's workers: each holds its own mutex and locks the next idle
/// worker's to wake it). A cycle of those cannot close (see
/// `EVENT_HANDOFF`).
#[inline(always)]
fn is_handoff(tgid: u32, tid: u32, held: &HeldStack, to: &HeldLock) -> bool {
    if to.kind != LockKind::Mutex as u32 && to.kind != LockKind::RecursiveMutex as u32 {
        return false;
    }
    match wakeup_mutex_owner(tgid, to.addr) {
        Some(owner) if owner != tid => {}
        _ => return false,
    }
    let depth = held.depth as usize;
    for i in 0..MAX_HELD {
        if i >= depth {
            break;
        }
        if wakeup_mutex_owner(tgid, held.locks[i].addr) != Some(tid) {
            return false;
        }
    }
    true
}

/// Notes that thread `tid` waits on a condition with `mutex`: the mutex is
/// its wake-up mutex, unless another thread does so too. Kept after the
/// wait (LRU): a worker's wake-up mutex is its own between waits too.
#[inline(always)]
fn note_cond_waiter(tgid: u32, tid: u32, mutex: u64) {
    let key = [u64::from(tgid), mutex];
    // SAFETY: map value, copied.
    let value = match unsafe { COND_MUTEXES.get(&key) }.copied() {
        None => u64::from(tid),
        Some(v) if v == u64::from(tid) => return,
        Some(_) => COND_MUTEX_SHARED,
    };
    let _ = COND_MUTEXES.insert(&key, &value, 0);
}

/// Entry of `pthread_cond_wait` and its timed variants: the mutex (second
/// argument) is released for the wait, inside glibc.
#[uprobe]
pub fn cond_wait(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let mutex = ctx.arg::<u64>(1).unwrap_or(0);
    note_cond_waiter(tgid, tid, mutex);
    let kind = match release(mutex) {
        Released::Entry(entry) => entry.kind,
        _ => LockKind::Mutex as u32,
    };
    let wait = Pending {
        lock: HeldLock {
            addr: mutex,
            callsite: return_address(&ctx),
            kind,
            flags: 0,
        },
        entry_ip: regs(&ctx).rip,
    };
    let _ = COND_WAITS.insert(&tid, &wait, 0);
    0
}

/// Return of a condition wait: glibc re-took the mutex (whatever the result),
/// a blocking acquisition ordered after every lock the thread still holds.
#[uretprobe]
pub fn cond_wait_return(ctx: RetProbeContext) -> u32 {
    let Some((_, tid)) = current_traced() else {
        return 0;
    };
    // SAFETY: copied out before the entry is removed.
    let Some(wait) = (unsafe { COND_WAITS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = COND_WAITS.remove(&tid);
    // SAFETY: the context's registers are valid for the program's run.
    let regs = unsafe { &*ctx.regs };
    acquire_blocking(regs, wait.lock, wait.entry_ip)
}

/// The cost floor for `cargo xtask bench`: attached where the real programs
/// go, it measures the price of the probe hit alone.
#[uprobe]
pub fn floor_entry(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn floor_return(_ctx: RetProbeContext) -> u32 {
    0
}

// Syscall tracepoints have a fixed layout: the syscall number at 8, then
// each argument in 8 bytes from 16.
const SYSCALL_ARG0: usize = 16;
const SYSCALL_ARG1: usize = 24;
const FUTEX_CMD_MASK: u64 = 0x7f; // without FUTEX_PRIVATE_FLAG, CLOCK_REALTIME
const FUTEX_WAIT: u64 = 0;
const FUTEX_LOCK_PI: u64 = 6;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAIT_REQUEUE_PI: u64 = 11;
const FUTEX_LOCK_PI2: u64 = 13;

/// A traced thread starts waiting on a futex: lock contention (glibc's
/// locks, and futex-based locks without a libc entry point, like Rust's and
/// parking_lot's), or other blocking. Condition waits are left out: a
/// thread waiting for work is not contention.
#[tracepoint]
pub fn futex_enter(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current_traced() else {
        return 0;
    };
    // SAFETY: fixed syscall tracepoint layout.
    let op = unsafe { ctx.read_at::<u64>(SYSCALL_ARG1) }.unwrap_or(u64::MAX) & FUTEX_CMD_MASK;
    let waits = matches!(
        op,
        FUTEX_WAIT | FUTEX_WAIT_BITSET | FUTEX_LOCK_PI | FUTEX_LOCK_PI2 | FUTEX_WAIT_REQUEUE_PI
    );
    // SAFETY: presence check only.
    if !waits || unsafe { COND_WAITS.get(&tid) }.is_some() {
        return 0;
    }
    let Ok(uaddr) = (unsafe { ctx.read_at::<u64>(SYSCALL_ARG0) }) else {
        return 0;
    };
    let wait = FutexWait {
        uaddr,
        // SAFETY: a helper without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = FUTEX_WAITING.insert(&tid, &wait, 0);
    0
}

#[tracepoint]
pub fn futex_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: copied out before the entry is removed.
    let Some(wait) = (unsafe { FUTEX_WAITING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = FUTEX_WAITING.remove(&tid);
    // SAFETY: a helper without preconditions.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(wait.start_ns);
    count(Counter::FutexWaits);
    if let Some(slot) = COUNTERS.get_ptr_mut(Counter::FutexWaitNs as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += ns };
    }
    let key = FutexKey {
        pid: tgid,
        _pad: 0,
        uaddr: wait.uaddr,
    };
    match FUTEX_STATS.get_ptr_mut(&key) {
        Some(stats) => {
            // SAFETY: this CPU's value; no concurrent writer.
            unsafe {
                (*stats).waits += 1;
                (*stats).wait_ns += ns;
            }
        }
        None => {
            let stats = FutexStats {
                waits: 1,
                wait_ns: ns,
            };
            let _ = FUTEX_STATS.insert(&key, &stats, 0);
        }
    }
    0
}

#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if !is_traced(tgid) {
        return 0;
    }
    // SAFETY: offset read from this kernel's tracepoint format.
    let Ok(child) = (unsafe { ctx.read_at::<u32>(global(&FORK_CHILD_PID_OFFSET) as usize) }) else {
        return 0;
    };
    if global(&FILTER_MODE) != FILTER_ALL {
        // Threads are added too (their tid is never a tgid unless they exec,
        // and then they are the same program): harmless, removed at exit.
        let _ = TRACED.insert(&child, &1, 0);
    }
    // SAFETY: map value, copied. (A new thread gets an entry too: its tid
    // is removed at its exit.)
    if let Some(py) = unsafe { PY_PROCESSES.get(&tgid) }.copied() {
        let _ = PY_PROCESSES.insert(&child, &py, 0);
    }
    if let Some(held) = HELD.get_ptr(&tid) {
        // SAFETY: map value.
        let held = unsafe { &*held };
        if held.depth > 0 && INHERIT.insert(&child, held, 0).is_err() {
            warn!(
                &ctx,
                "locktrace: cannot record locks held across fork by {}", tid
            );
        }
    }
    0
}

#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // A new program holds no locks, and runs no Python yet.
    let _ = HELD.remove(&tid);
    let _ = INHERIT.remove(&tid);
    let _ = PY_PROCESSES.remove(&tgid);
    let _ = PY_THREADS.remove(&tid);
    if global(&COMM_FILTER) != 0 {
        if let Ok(comm) = bpf_get_current_comm() {
            // SAFETY: presence check only.
            if unsafe { COMMS.get(&comm) }.is_some() {
                let _ = TRACED.insert(&tgid, &1, 0);
            }
        }
    }
    0
}

#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let _ = HELD.remove(&tid);
    let _ = PENDING_TRY.remove(&tid);
    let _ = COND_WAITS.remove(&tid);
    let _ = FUTEX_WAITING.remove(&tid);
    let _ = LAST_POST.remove(&tid);
    let _ = INHERIT.remove(&tid);
    let _ = PY_THREADS.remove(&tid);
    if tid != tgid {
        let _ = TRACED.remove(&tid);
        let _ = PY_PROCESSES.remove(&tid);
    }
    // SAFETY: offset read from this kernel's tracepoint format.
    let group_dead =
        unsafe { ctx.read_at::<u8>(global(&EXIT_GROUP_DEAD_OFFSET) as usize) }.unwrap_or(0);
    if group_dead != 0 {
        // Tell the collector (before the pid leaves the filter) so that it
        // forgets the process: its pid may be reused.
        if is_traced(tgid) {
            match EVENTS.reserve::<LockEvent>(0) {
                Some(mut entry) => {
                    // SAFETY: a reserved, exclusively owned slot.
                    unsafe {
                        write_lock_event(entry.as_mut_ptr(), EVENT_PROCESS_EXIT, tgid, tid, 0, 0, 0)
                    };
                    entry.submit(0);
                }
                None => count(Counter::LostEvents),
            }
        }
        let _ = TRACED.remove(&tgid);
        let _ = PY_PROCESSES.remove(&tgid);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
