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
use tracer_common::{futex_waits_on_word, Counter, FutexKey, FutexStats, FUTEX_CMD_MASK};

use crate::{
    condvar::in_cond_wait,
    counters::{add, count},
    filter::current_traced,
};

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
    let Some((_, tid)) = current_traced() else {
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

/// Thread `tid` exited (in a wait or not).
#[inline(always)]
pub fn forget_thread(tid: &u32) {
    let _ = FUTEX_WAITING.remove(tid);
}
