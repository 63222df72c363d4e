//! Wake-up hand-offs. A thread that alone waits on conditions with a mutex
//! owns it as its wake-up mutex; requesting another thread's wake-up mutex
//! while holding only one's own is how a pool hands work to an idle worker
//! (mod_wsgi's worker threads each own a mutex and lock the next idle one's
//! to wake it). Such dependencies are sent as `EventKind::Handoff`, apart
//! from ordinary ones: a cycle made only of hand-offs cannot close, since
//! each worker waits on its own condition, not on the others' mutexes.

use aya_ebpf::{macros::map, maps::LruHashMap};
use tracer_common::{HeldLock, HeldStack, LockKind, COND_MUTEX_SHARED, MAX_HELD};

/// Mutexes threads wait on conditions with, by (tgid, mutex): the thread,
/// or `COND_MUTEX_SHARED` (see `is_handoff`).
#[map]
static COND_MUTEXES: LruHashMap<[u64; 2], u64> = LruHashMap::with_max_entries(16384, 0);

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
/// `EventKind::Handoff`).
#[inline(always)]
pub fn is_handoff(tgid: u32, tid: u32, held: &HeldStack, to: &HeldLock) -> bool {
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
pub fn note_cond_waiter(tgid: u32, tid: u32, mutex: u64) {
    let key = [u64::from(tgid), mutex];
    // SAFETY: map value, copied.
    let value = match unsafe { COND_MUTEXES.get(&key) }.copied() {
        None => u64::from(tid),
        Some(v) if v == u64::from(tid) => return,
        Some(_) => COND_MUTEX_SHARED,
    };
    let _ = COND_MUTEXES.insert(&key, &value, 0);
}
