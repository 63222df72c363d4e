//! Futex waits of traced threads: how long they block, per futex word. This
//! sees lock contention whatever the lock (glibc's, and futex-based locks
//! without a libc entry point, like Rust's and parking_lot's), and other
//! blocking; condition waits are left out (a thread waiting for work is not
//! contention). Which futex calls wait: see `futex_waits_on_word`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, LruPerCpuHashMap},
    programs::TracePointContext,
};
use tracer_common::{
    futex_waits_on_word, Counter, FutexKey, FutexStats, FutexWait, HeldLock, LockKind,
    FUTEX_CMD_MASK, MAX_HELD, RWLOCK_SIZE,
};

use crate::{
    acquire::pending_lock,
    condvar::in_cond_wait,
    counters::{add, atomic_add, count},
    filter::current_traced,
    held::existing_held_stack,
    python::is_gil,
};

/// Futex waits in progress (by tid).
#[map]
static FUTEX_WAITING: HashMap<u32, FutexWait> = HashMap::with_max_entries(65536, 0);
/// Blocking per futex word, read by the collector at the end (per CPU: no
/// atomics needed, the collector sums).
#[map]
static FUTEX_STATS: LruPerCpuHashMap<FutexKey, FutexStats> =
    LruPerCpuHashMap::with_max_entries(16384, 0);

// Syscall tracepoints have a fixed layout: the syscall number at 8, then
// each argument in 8 bytes from 16.
const SYSCALL_ARG0: usize = 16;
const SYSCALL_ARG1: usize = 24;

/// A traced thread starts waiting on a futex: lock contention (glibc's
/// locks, and futex-based locks without a libc entry point, like Rust's and
/// parking_lot's), or other blocking. Condition waits are left out: a
/// thread waiting for work is not contention.
#[tracepoint]
pub fn futex_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    // SAFETY: fixed syscall tracepoint layout.
    let op = unsafe { ctx.read_at::<u64>(SYSCALL_ARG1) }.unwrap_or(u64::MAX) & FUTEX_CMD_MASK;
    if !futex_waits_on_word(op) || in_cond_wait(&tid) {
        return 0;
    }
    let Ok(uaddr) = (unsafe { ctx.read_at::<u64>(SYSCALL_ARG0) }) else {
        return 0;
    };
    let wait = FutexWait {
        uaddr,
        // SAFETY: a helper without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        // CPython 2.7's GIL is never held (see `python::is_gil`), but a
        // wait for it is one in a probed lock function (`sem_wait`) for its
        // own word: not a lock the probes cannot see.
        lock_wait: u64::from(requested_lock_covers(&tid, uaddr) || is_gil(tgid, uaddr)),
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
    add(Counter::FutexWaitNs, ns);
    let key = FutexKey {
        pid: tgid,
        _pad: 0,
        uaddr: wait.uaddr,
    };
    match FUTEX_STATS.get_ptr_mut(&key) {
        Some(stats) => {
            // SAFETY: this CPU's value, added to atomically (a program may
            // be preempted by another on the same CPU).
            unsafe {
                atomic_add(&mut (*stats).waits, 1);
                atomic_add(&mut (*stats).wait_ns, ns);
                atomic_add(&mut (*stats).lock_waits, wait.lock_wait);
            }
        }
        None => {
            let stats = FutexStats {
                waits: 1,
                wait_ns: ns,
                lock_waits: wait.lock_wait,
            };
            let _ = FUTEX_STATS.insert(&key, &stats, 0);
        }
    }
    0
}

/// Whether the thread waits for a lock it requested through a probed lock
/// function (its held stack has the blocking request, `PENDING_TRY` a timed
/// one) whose futex word `uaddr` is: the lock's own word, or, for an rwlock,
/// one inside it. Other waits are on locks the order analysis cannot see.
#[inline(always)]
fn requested_lock_covers(tid: &u32, uaddr: u64) -> bool {
    if pending_lock(tid).is_some_and(|l| covers(&l, uaddr)) {
        return true;
    }
    let Some(held) = existing_held_stack(tid) else {
        return false;
    };
    let depth = (held.depth as usize).min(MAX_HELD);
    for i in 0..MAX_HELD {
        if i >= depth {
            break;
        }
        if covers(&held.locks[i], uaddr) {
            return true;
        }
    }
    false
}

#[inline(always)]
fn covers(lock: &HeldLock, uaddr: u64) -> bool {
    if lock.kind == LockKind::RwlockRead as u32 || lock.kind == LockKind::RwlockWrite as u32 {
        uaddr >= lock.addr && uaddr < lock.addr + RWLOCK_SIZE
    } else {
        uaddr == lock.addr
    }
}

/// Thread `tid` exited (in a wait or not).
#[inline(always)]
pub fn forget_thread(tid: &u32) {
    let _ = FUTEX_WAITING.remove(tid);
}
