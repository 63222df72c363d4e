//! Acquisitions and releases of mutexes, rwlocks and spinlocks: the generic
//! lock-order path. A blocking request orders after every lock the thread
//! holds (lockdep's rule); a try or timed request is remembered from its
//! entry to its return, and if it succeeded the lock is held but orders
//! nothing (it could not block forever).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{map, uprobe, uretprobe},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use tracer_common::{
    cookie_request, Counter, EventKind, HeldLock, HeldStack, LockKind, PyFrameRaw, HELD_FLAG_TIMED,
    MUTEX_KIND_ERRORCHECK, MUTEX_KIND_MASK, MUTEX_KIND_OFFSET, MUTEX_KIND_RECURSIVE,
};

use crate::{
    context::{call_site, lock_arg, regs},
    counters::count,
    emit::{emit_new_dependencies, emit_self_deadlock},
    filter::{current_traced, is_armed},
    handoff::is_handoff,
    python::note_python_site,
    held::{
        drop_stale, existing_held_stack, find_held, held_stack, push, release, remove_at,
        surely_owned, Released,
    },
    semaphores,
    tails::{hand_over, ACQUIRE, NESTED},
};

/// Try and timed operations between entry and return (by tid).
#[map]
static PENDING_TRY: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

pub use tracer_common::Pending;

/// A blocking acquisition of `to`: emit the dependencies `held -> to` that are
/// new for this process, then record `to` as held. `entry_ip` is non-zero
/// when called at the return of a condition wait (see `DependencyEvent`).
#[inline(always)]
pub fn acquire_blocking(regs: &pt_regs, mut to: HeldLock, entry_ip: u64) -> u32 {
    if !is_armed() {
        return 0;
    }
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    count(Counter::Acquire);
    if to.kind == LockKind::Semaphore as u32 && !semaphores::taken_as_lock(tgid, &tid, to.addr) {
        return 0;
    }
    let Some(held) = held_stack(tgid, tid) else {
        return 0;
    };
    if held.depth > 0 {
        drop_stale(held, &tgid);
    }
    if let Some(i) = find_held(held, to.addr) {
        if relock(regs, held, i, tgid, &to) {
            return 0;
        }
    }
    // Before the hand-over: `lock_nested` pushes the `to` it is given.
    note_python_site(tgid, tid, &mut to);
    if held.depth > 0 {
        // `lock_nested` finds the new dependencies and pushes `to`: a program
        // of its own for the verifier (see `tails`).
        hand_over(regs, NESTED, held, &to, entry_ip, EventKind::Dependency, true);
        // Only if the tail call failed (`TAILS` is filled before any probe
        // is attached).
        count(Counter::LostEvents);
    }
    push(held, to);
    0
}

/// The rest of an acquisition by a thread that holds other locks (see
/// `acquire_blocking`): the new dependencies are sent, and the lock pushed.
#[uprobe]
pub fn lock_nested(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(held) = existing_held_stack(&tid) else {
        return 0;
    };
    let to = held.tail_to;
    let entry_ip = held.tail_entry_ip;
    let event = if is_handoff(tgid, tid, held, &to) {
        EventKind::Handoff
    } else {
        EventKind::Dependency
    };
    emit_new_dependencies(regs(&ctx), held, tgid, &to, entry_ip, event);
    push(held, to);
    0
}

/// glibc's type of the mutex at `addr`: normal, recursive, error-checking.
#[inline(always)]
fn mutex_type(addr: u64) -> u32 {
    // SAFETY: reading user memory through the helper, which handles faults.
    let kind = unsafe { bpf_probe_read_user((addr + MUTEX_KIND_OFFSET) as *const u32) };
    kind.unwrap_or(0) & MUTEX_KIND_MASK
}

/// The holder requests a lock it already holds (entry `i` of `held`).
/// Returns true when that changes nothing more (a recursive re-lock keeps
/// the one entry, a self-deadlock is reported, an error-checking mutex
/// refuses);
/// false when the request is an ordinary acquisition (a reader re-reading).
#[inline(always)]
fn relock(
    regs: &pt_regs,
    held: &mut HeldStack,
    i: usize,
    tgid: u32,
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
            // One entry for every level: it goes once the last level is
            // unlocked (see `drop_stale`).
            MUTEX_KIND_RECURSIVE => {
                entry.kind = LockKind::RecursiveMutex as u32;
                return true;
            }
            MUTEX_KIND_ERRORCHECK => return true,
            _ => {}
        }
    }
    // A normal mutex or a spinlock: the thread waits for itself, if it
    // surely holds it (a release the probes missed must not make a false
    // self-deadlock).
    let entry = *entry;
    if surely_owned(held, &entry) {
        emit_self_deadlock(regs, tgid, &entry, to, held);
    }
    true
}

/// The lock a probed lock function was called for, and where.
#[inline(always)]
pub fn requested(ctx: &ProbeContext, kind: u32, flags: u32) -> HeldLock {
    let (callsite, above) = call_site(ctx);
    HeldLock {
        addr: lock_arg(ctx),
        callsite,
        kind,
        flags,
        sp: regs(ctx).rsp,
        bp: regs(ctx).rbp,
        above,
        py: PyFrameRaw::default(),
        py_caller: PyFrameRaw::default(),
    }
}

/// The kind and flags of the request, from the probe's cookie (see
/// `probe_cookie`).
#[inline(always)]
fn cookie(ctx: &ProbeContext) -> (u32, u32) {
    // SAFETY: a helper reading the probe's own attach cookie.
    cookie_request(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) })
}

/// Every blocking lock function (pthread_mutex_lock, the rwlock and spin
/// locks, sem_wait): one program, the kind in the probe's cookie.
#[uprobe]
pub fn lock(ctx: ProbeContext) -> u32 {
    let (kind, flags) = cookie(&ctx);
    // One call of `acquire_blocking` (two would be inlined twice, and
    // verified twice).
    let (to, entry_ip) = if kind == 0 {
        // Tail-called by a return probe (see `tails`).
        match handed_over() {
            Some(handed) => handed,
            None => return 0,
        }
    } else {
        (requested(&ctx, kind, flags), 0)
    };
    acquire_blocking(regs(&ctx), to, entry_ip)
}

/// The acquisition a return probe handed over (see [`acquire_later`]).
#[inline(always)]
fn handed_over() -> Option<(HeldLock, u64)> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let held = existing_held_stack(&tid)?;
    Some((held.tail_to, held.tail_entry_ip))
}

/// Has `lock` record the acquisition of `to` (a return probe's, which
/// completed it): by a tail call, so that `acquire_blocking` is verified in
/// one program only. The program ends there.
#[inline(always)]
pub fn acquire_later(regs: &pt_regs, to: &HeldLock, entry_ip: u64) -> u32 {
    if !is_armed() {
        return 0;
    }
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let Some(held) = held_stack(tgid, tid) else {
        return 0;
    };
    hand_over(regs, ACQUIRE, held, to, entry_ip, EventKind::Dependency, true);
    // Only if the tail call failed (`TAILS` is filled before any probe is
    // attached).
    count(Counter::LostEvents);
    0
}

/// Unlock of an rwlock or a spinlock (mutex unlocks are not probed: a held
/// mutex is checked against its owner field instead, see `drop_stale`).
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
pub fn try_entry(ctx: &ProbeContext, kind: u32, flags: u32) -> u32 {
    if !is_armed() {
        return 0;
    }
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let pending = requested(ctx, kind, flags);
    // Recorded first: a self-deadlock below ends this program (its report
    // is sent by a tail call).
    let record = Pending {
        lock: pending,
        entry_ip: regs(ctx).rip,
    };
    let _ = PENDING_TRY.insert(&tid, &record, 0);
    if flags & HELD_FLAG_TIMED != 0 {
        if let Some(held) = existing_held_stack(&tid) {
            drop_stale(held, &tgid);
            if let Some(i) = find_held(held, pending.addr) {
                if let Some(entry) = held.locks.get(i) {
                    let entry = *entry;
                    let normal_mutex = entry.kind == LockKind::Mutex as u32 && {
                        let t = mutex_type(pending.addr);
                        t != MUTEX_KIND_RECURSIVE && t != MUTEX_KIND_ERRORCHECK
                    };
                    if normal_mutex && surely_owned(held, &entry) {
                        emit_self_deadlock(regs(ctx), tgid, &entry, &pending, held);
                    }
                }
            }
        }
    }
    0
}

/// Every try and timed lock function (and sem_trywait, sem_timedwait...):
/// one program, the kind and `HELD_FLAG_TRY` or `HELD_FLAG_TIMED` in the
/// probe's cookie.
#[uprobe]
pub fn try_lock(ctx: ProbeContext) -> u32 {
    let (kind, flags) = cookie(&ctx);
    try_entry(&ctx, kind, flags)
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
        semaphores::try_failed(tgid, tid, &pending.lock);
        return 0;
    }
    let entry_ip = pending.entry_ip;
    let pending = pending.lock;
    if semaphores::try_orders_like_blocking(&pending) {
        // SAFETY: the context's registers are valid for the program's run.
        let regs = unsafe { &*ctx.regs };
        return acquire_later(regs, &pending, entry_ip);
    }
    if pending.kind == LockKind::Semaphore as u32
        && !semaphores::taken_as_lock(tgid, &tid, pending.addr)
    {
        return 0;
    }
    count(Counter::Acquire);
    let Some(held) = held_stack(tgid, tid) else {
        return 0;
    };
    if pending.kind == LockKind::Mutex as u32 {
        drop_stale(held, &tgid);
        if let Some(i) = find_held(held, pending.addr) {
            // Only a recursive mutex can be taken again by its holder: one
            // entry for every level. Any other mutex was free for this try
            // to succeed: its entry is from a hold that ended unprobed (the
            // owner check passed only because the thread took it again).
            if mutex_type(pending.addr) == MUTEX_KIND_RECURSIVE {
                if let Some(entry) = held.locks.get_mut(i) {
                    entry.kind = LockKind::RecursiveMutex as u32;
                }
                return 0;
            }
            remove_at(held, i);
        }
    }
    let mut pending = pending;
    note_python_site(tgid, tid, &mut pending);
    push(held, pending);
    0
}

/// The lock of the thread's try or timed operation in progress, if any.
#[inline(always)]
pub fn pending_lock(tid: &u32) -> Option<HeldLock> {
    // SAFETY: copied out of the map value.
    unsafe { PENDING_TRY.get(tid) }.map(|p| p.lock)
}

/// Thread `tid` exited.
#[inline(always)]
pub fn forget_thread(tid: &u32) {
    let _ = PENDING_TRY.remove(tid);
}
