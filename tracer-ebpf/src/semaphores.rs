//! POSIX semaphores, which are locks only by convention.
//!
//! CPython's `threading.Lock` is a semaphore taken with the trywait-first
//! protocol: `sem_trywait` while holding the GIL, and `sem_wait` (without
//! the GIL) only if that failed. An uncontended blocking acquisition is
//! therefore a successful `sem_trywait`, so such a try orders like a
//! blocking acquisition (unlike lockdep's rule for try operations), and a
//! failed one is when the thread's Python state must be noted (it is about
//! to release the GIL, after which it cannot be found from the GIL).
//!
//! A semaphore posted by a thread that had not taken it is used for
//! signalling (a queue, an event), not as a lock: it orders nothing. Nor
//! does CPython 2.7's GIL, a semaphore too (see `python::is_gil`).

use aya_ebpf::{
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use tracer_common::{DependencyKey, HeldLock, LockKind, HELD_FLAG_TRY};

use crate::{
    context::{lock_arg, regs},
    filter::current_traced,
    held::{release, Released},
    python::{is_gil, note_py_thread},
};

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

#[inline(always)]
fn signal_sem_key(tgid: u32, addr: u64) -> DependencyKey {
    DependencyKey {
        chain_key: 0,
        pid: tgid,
        kinds: 0,
        from: addr,
        to: addr,
    }
}

#[inline(always)]
pub fn is_signal_sem(tgid: u32, addr: u64) -> bool {
    // SAFETY: presence check only.
    unsafe { SIGNAL_SEMS.get(&signal_sem_key(tgid, addr)) }.is_some()
}

/// Thread `tid` takes semaphore `addr`: its next post is a new call (see
/// `LAST_POST`). Returns whether the semaphore is used as a lock (a
/// signalling one orders nothing, nor does CPython 2.7's GIL).
#[inline(always)]
pub fn taken_as_lock(tgid: u32, tid: &u32, addr: u64) -> bool {
    let _ = LAST_POST.remove(tid);
    !is_signal_sem(tgid, addr) && !is_gil(tgid, addr)
}

/// A try or timed request for `lock` failed.
#[inline(always)]
pub fn try_failed(tgid: u32, tid: u32, lock: &HeldLock) {
    if lock.kind == LockKind::Semaphore as u32 {
        // CPython's lock, contended: it will block without the GIL.
        note_py_thread(tgid, tid);
    }
}

/// Whether a successful try of `lock` orders like a blocking acquisition:
/// a `sem_trywait`, CPython's way of taking every lock first.
#[inline(always)]
pub fn try_orders_like_blocking(lock: &HeldLock) -> bool {
    lock.kind == LockKind::Semaphore as u32 && lock.flags & HELD_FLAG_TRY != 0
}

/// A post releases the semaphore if this thread holds it; a post by another
/// thread marks it as a signalling semaphore (see `SIGNAL_SEMS`), unless it
/// is the GIL.
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
    // The GIL is never held (see `taken_as_lock`): its post says nothing.
    if let Released::NotHeld = release(sem) {
        if !is_gil(tgid, sem) {
            let _ = SIGNAL_SEMS.insert(&signal_sem_key(tgid, sem), &1, 0);
        }
    }
    0
}

/// Thread `tid` exited.
#[inline(always)]
pub fn forget_thread(tid: &u32) {
    let _ = LAST_POST.remove(tid);
}
