//! The held-lock stack of each thread: pushed at an acquisition, removed
//! from (in any order) at a release, inherited by a forked child's main
//! thread.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    Counter, HeldLock, HeldStack, LockKind, CALLER_WORDS, HELD_RECURSION_SHIFT, MAX_HELD,
    MUTEX_OWNER_OFFSET, RWLOCK_CUR_WRITER_OFFSET,
};

use crate::{
    context::{read_user_u32, BPF_F_NO_PREALLOC},
    counters::count,
    filter::current_traced,
};

/// Held-lock stack of every thread that took a lock (by tid).
#[map]
static HELD: HashMap<u32, HeldStack> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);
/// Held-lock stack of a forking thread, for the child's main thread (by child
/// pid): the child inherits the parent's memory, so it holds those locks.
#[map]
static INHERIT: HashMap<u32, HeldStack> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);
/// A zeroed held stack to create new `HELD` entries from (too large for the
/// 512-byte BPF stack).
#[map]
static EMPTY: PerCpuArray<HeldStack> = PerCpuArray::with_max_entries(1, 0);

/// The thread's held-lock stack, created on its first lock.
#[inline(always)]
pub fn held_stack(tgid: u32, tid: u32) -> Option<&'static mut HeldStack> {
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

/// The thread's held-lock stack if it has one (no entry is created).
#[inline(always)]
pub fn existing_held_stack(tid: &u32) -> Option<&'static mut HeldStack> {
    // SAFETY: map value; only this thread writes its own entry.
    HELD.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
}

/// Copies a held-lock record field by field. A plain struct assignment
/// between map values and ring-buffer memory compiles to a call to the byte
/// loop of `memcpy`, which the verifier then walks instruction by instruction
/// (and rejects as too large).
#[inline(always)]
pub fn copy_lock(dst: &mut HeldLock, src: &HeldLock) {
    // SAFETY: both are valid, aligned references.
    unsafe {
        core::ptr::write_volatile(&mut dst.addr, src.addr);
        core::ptr::write_volatile(&mut dst.callsite, src.callsite);
        core::ptr::write_volatile(&mut dst.kind, src.kind);
        core::ptr::write_volatile(&mut dst.flags, src.flags);
        core::ptr::write_volatile(&mut dst.sp, src.sp);
        core::ptr::write_volatile(&mut dst.bp, src.bp);
        for i in 0..CALLER_WORDS {
            core::ptr::write_volatile(&mut dst.above[i], src.above[i]);
        }
    }
}

#[inline(always)]
pub fn push(held: &mut HeldStack, lock: HeldLock) {
    let depth = held.depth as usize;
    match held.locks.get_mut(depth) {
        Some(slot) => {
            copy_lock(slot, &lock);
            held.depth = depth as u32 + 1;
        }
        None => count(Counter::HeldOverflow),
    }
}

/// The topmost entry of `held` for `addr`. `depth` is read volatile, with
/// no `min`: then LLVM cannot prove `depth - 1 - k < MAX_HELD` and keeps the
/// bounds check that the verifier needs (with the bound known, it dropped
/// the check and the verifier saw a possibly negative index).
#[inline(always)]
pub fn find_held(held: &HeldStack, addr: u64) -> Option<usize> {
    // SAFETY: a valid, aligned field.
    let depth = unsafe { core::ptr::read_volatile(&held.depth) } as usize;
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

/// The owner field of a held lock that records its owner: a mutex's
/// `__owner`, a write-locked rwlock's `__cur_writer` (both the owner's tid in
/// its pid namespace). None for locks without one (read-locked rwlocks,
/// spinlocks, semaphores).
#[inline(always)]
fn owner_of(lock: &HeldLock) -> Option<u32> {
    let offset =
        if lock.kind == LockKind::Mutex as u32 || lock.kind == LockKind::RecursiveMutex as u32 {
            MUTEX_OWNER_OFFSET
        } else if lock.kind == LockKind::RwlockWrite as u32 {
            RWLOCK_CUR_WRITER_OFFSET
        } else {
            return None;
        };
    Some(read_user_u32(lock.addr + offset))
}

/// Drops the held entries that the lock itself says this thread no longer
/// holds: a release the probes did not see (the program's, or one made
/// while the probes were being attached) must never order anything. A lock
/// whose owner field is 0 is held by nobody; one owned by another thread is
/// not ours, once the thread's namespace tid is known (see
/// [`learn_ns_tid`]); until then, an owner equal to the thread's host tid
/// teaches it (the init pid namespace, where most processes run).
#[inline(always)]
pub fn drop_stale(held: &mut HeldStack, host_tid: u32) {
    let depth = (held.depth as usize).min(MAX_HELD);
    // The count of entries kept lives in map memory (the scratch counter),
    // which the verifier does not follow value by value.
    let kept: *mut u64 = &mut held.n_new;
    // SAFETY (volatile accesses): a valid, aligned map value field.
    unsafe { core::ptr::write_volatile(kept, 0) };
    for i in 0..MAX_HELD {
        if i >= depth {
            break;
        }
        let entry = held.locks[i];
        if let Some(owner) = owner_of(&entry) {
            if held.ns_tid == 0 && owner == host_tid {
                held.ns_tid = host_tid;
            }
            if owner == 0 || (held.ns_tid != 0 && owner != held.ns_tid) {
                count(Counter::StaleHeld);
                continue;
            }
        }
        let k = unsafe { core::ptr::read_volatile(kept) } as usize;
        if k != i {
            if let Some(slot) = held.locks.get_mut(k) {
                copy_lock(slot, &entry);
            }
        }
        unsafe { core::ptr::write_volatile(kept, k as u64 + 1) };
    }
    held.depth = unsafe { core::ptr::read_volatile(kept) } as u32;
}

/// Whether the thread owns `lock` for sure: its owner field names the
/// thread. A lock without an owner field (or a thread whose namespace tid
/// is not known yet) is not sure: a finding that needs the thread to hold
/// the lock (a self-deadlock) must not be made from it.
#[inline(always)]
pub fn surely_owned(held: &HeldStack, lock: &HeldLock) -> bool {
    match owner_of(lock) {
        Some(owner) => held.ns_tid != 0 && owner == held.ns_tid,
        None => true,
    }
}

/// Learns the thread's tid in its pid namespace from a mutex it is about to
/// unlock and holds: glibc wrote it into the mutex's owner field.
#[inline(always)]
fn learn_ns_tid(held: &mut HeldStack, entry: &HeldLock) {
    if held.ns_tid != 0 || entry.kind != LockKind::Mutex as u32 {
        return;
    }
    let owner = read_user_u32(entry.addr + MUTEX_OWNER_OFFSET);
    if owner != 0 {
        held.ns_tid = owner;
    }
}

/// What a release did.
pub enum Released {
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
pub fn release(lock: u64) -> Released {
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
    learn_ns_tid(held, &removed);
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

/// Thread `tid` forks `child`: the child's main thread will hold what `tid`
/// holds (see `INHERIT`).
#[inline(always)]
pub fn follow_fork(ctx: &TracePointContext, tid: &u32, child: &u32) {
    if let Some(held) = HELD.get_ptr(tid) {
        // SAFETY: map value.
        let held = unsafe { &*held };
        if held.depth > 0 && INHERIT.insert(child, held, 0).is_err() {
            warn!(
                ctx,
                "locktrace: cannot record locks held across fork by {}", *tid
            );
        }
    }
}

/// Thread `tid` exited or exec'd: it holds nothing.
#[inline(always)]
pub fn forget_thread(tid: &u32) {
    let _ = HELD.remove(tid);
    let _ = INHERIT.remove(tid);
}
