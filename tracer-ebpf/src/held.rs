//! The held-lock stack of each thread: pushed at an acquisition, removed
//! from (in any order) at a probed release, or, for a mutex (whose unlock
//! is not probed), at the next acquisition once the mutex no longer names
//! the thread as its owner; inherited by a forked child's main thread.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    Counter, HeldLock, HeldStack, LockKind, CALLER_WORDS, MAX_HELD, MUTEX_KIND_MASK,
    MUTEX_KIND_RECURSIVE, RWLOCK_CUR_WRITER_OFFSET,
};

use crate::{
    context::{read_user_u32, BPF_F_NO_PREALLOC},
    counters::count,
    filter::current_traced,
    nstid::current_ns_tid,
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
        core::ptr::write_volatile(&mut dst.py.code, src.py.code);
        core::ptr::write_volatile(&mut dst.py.prev_instr, src.py.prev_instr);
        core::ptr::write_volatile(&mut dst.py_caller.code, src.py_caller.code);
        core::ptr::write_volatile(&mut dst.py_caller.prev_instr, src.py_caller.prev_instr);
    }
}

#[inline(always)]
pub fn push(held: &mut HeldStack, lock: HeldLock) {
    // Volatile (see `find_held`): after `remove_at`, LLVM knew the depth's
    // bound, dropped the check, and the verifier saw an unbounded index.
    // SAFETY: a valid, aligned field.
    let depth = unsafe { core::ptr::read_volatile(&held.depth) } as usize;
    match held.locks.get_mut(depth) {
        Some(slot) => {
            copy_lock(slot, &lock);
            held.depth = depth as u32 + 1;
        }
        None => count(Counter::HeldOverflow),
    }
}

/// The topmost entry of `held` for `addr`. The index counts down from the
/// constant `MAX_HELD - 1`, entries at or above `depth` skipped: an index
/// counted down from `depth - 1` is one that 6.1's verifier cannot bound
/// (it does not learn `depth >= 1` from the loop's exit test, sees `-1`
/// possible, and either refuses the index or never sees the loop end).
/// `depth` is read volatile so that LLVM does not fold the bound into
/// the loop again.
#[inline(always)]
pub fn find_held(held: &HeldStack, addr: u64) -> Option<usize> {
    // SAFETY: a valid, aligned field.
    let depth = unsafe { core::ptr::read_volatile(&held.depth) } as usize;
    for k in 0..MAX_HELD {
        let i = MAX_HELD - 1 - k;
        if i >= depth {
            continue;
        }
        if held.locks[i].addr == addr {
            return Some(i);
        }
    }
    None
}

/// What glibc's mutex says about its holder: `__lock`, `__count`,
/// `__owner`, `__nusers`, `__kind`, in one read.
#[inline(always)]
fn mutex_words(addr: u64) -> [u32; 5] {
    // SAFETY: reading user memory through the helper, which handles faults
    // (all zero then: held by nobody).
    unsafe { bpf_probe_read_user(addr as *const [u32; 5]) }.unwrap_or([0; 5])
}

/// Whether `owner`, a lock's owner field, names the thread of `held`: its
/// namespace tid, or for a forked child's main thread, the thread that
/// forked it (whose holds the child inherited with the memory).
#[inline(always)]
fn names_us(held: &HeldStack, owner: u32) -> bool {
    owner != 0 && (owner == held.ns_tid || owner == held.inherited_tid)
}

/// Whether the thread of `held` (its namespace tid learned, see
/// [`learn_ns_tid`]) holds the mutex at `addr` right now. Mutex unlocks are not probed, so this is
/// how a held entry is known to be still held: the lock word is taken, its
/// owner names the thread, and a recursive mutex still counts a level
/// (glibc clears the owner when the last level goes, before the word).
/// Memory reused for something else would have to look like a locked mutex
/// owned by this thread to pass.
#[inline(always)]
pub fn mutex_held_by(held: &HeldStack, addr: u64) -> bool {
    let [lock, count, owner, _, kind] = mutex_words(addr);
    lock != 0
        && names_us(held, owner)
        && (kind & MUTEX_KIND_MASK != MUTEX_KIND_RECURSIVE || count > 0)
}

#[inline(always)]
fn is_mutex(lock: &HeldLock) -> bool {
    lock.kind == LockKind::Mutex as u32 || lock.kind == LockKind::RecursiveMutex as u32
}

/// Learns the thread's namespace tid if it is not known yet (see
/// `nstid`); 0 while its namespace is not known.
#[inline(always)]
pub fn learn_ns_tid(held: &mut HeldStack, tgid: &u32) -> u32 {
    if held.ns_tid == 0 {
        held.ns_tid = current_ns_tid(tgid);
    }
    held.ns_tid
}

/// Drops the held entries that the lock itself says this thread no longer
/// holds. Mutex unlocks are not probed: a mutex entry stays until here,
/// where it must be confirmed held (see [`mutex_held_by`]), and is dropped
/// when it cannot be, also while the thread's namespace tid is not known
/// (an edge lost, never one invented). A write-locked rwlock has its unlock
/// probed; its `__cur_writer` only catches a release the probes did not
/// see (one made while they were being attached).
#[inline(always)]
pub fn drop_stale(held: &mut HeldStack, tgid: &u32) {
    let ns_tid = learn_ns_tid(held, tgid);
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
        if is_mutex(&entry) {
            if !mutex_held_by(held, entry.addr) {
                count(if ns_tid == 0 && held.inherited_tid == 0 {
                    Counter::UnconfirmedHeld
                } else {
                    Counter::StaleHeld
                });
                continue;
            }
        } else if entry.kind == LockKind::RwlockWrite as u32 {
            let owner = read_user_u32(entry.addr + RWLOCK_CUR_WRITER_OFFSET);
            if owner == 0 || (ns_tid != 0 && !names_us(held, owner)) {
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

/// Whether the thread owns `lock` for sure: a mutex confirmed held (see
/// [`mutex_held_by`]), a write-locked rwlock whose `__cur_writer` names the
/// thread. A lock without an owner field is taken as held (its release is
/// probed). A finding that needs the thread to hold the lock (a
/// self-deadlock) must not be made otherwise.
#[inline(always)]
pub fn surely_owned(held: &HeldStack, lock: &HeldLock) -> bool {
    if is_mutex(lock) {
        mutex_held_by(held, lock.addr)
    } else if lock.kind == LockKind::RwlockWrite as u32 {
        names_us(held, read_user_u32(lock.addr + RWLOCK_CUR_WRITER_OFFSET))
    } else {
        true
    }
}

/// Removes entry `found` of `held`, keeping the order of the others.
#[inline(always)]
pub fn remove_at(held: &mut HeldStack, found: usize) {
    let depth = (held.depth as usize).min(MAX_HELD);
    if found >= depth {
        return;
    }
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
}

/// What a release did.
pub enum Released {
    /// The thread is not traced.
    NotTraced,
    /// The thread did not hold the lock.
    NotHeld,
    /// The entry, removed from the held stack.
    Entry(HeldLock),
}

/// Releases `lock` (an rwlock, a spinlock, a semaphore, or the mutex of a
/// condition wait): the topmost entry for it (locks need not be released
/// in LIFO order). Mutex unlocks are not probed: see [`drop_stale`].
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
    let Some(entry) = held.locks.get(found) else {
        return Released::NotHeld;
    };
    let removed = *entry;
    remove_at(held, found);
    Released::Entry(removed)
}

/// Thread `tid` of `tgid` forks `child`: the child's main thread will hold
/// what `tid` holds (see `INHERIT`); the mutexes among them name `tid` as
/// their owner (see `HeldStack::inherited_tid`).
#[inline(always)]
pub fn follow_fork(ctx: &TracePointContext, tgid: &u32, tid: &u32, child: &u32) {
    let Some(held) = HELD.get_ptr(tid) else {
        return;
    };
    // SAFETY: map value.
    let held = unsafe { &*held };
    if held.depth == 0 {
        return;
    }
    if INHERIT.insert(child, held, 0).is_err() {
        warn!(
            ctx,
            "locktrace: cannot record locks held across fork by {}", *tid
        );
        return;
    }
    if let Some(inherited) = INHERIT.get_ptr_mut(child) {
        // This runs in the forking thread: its namespace tid is at hand.
        let forker = if held.ns_tid != 0 {
            held.ns_tid
        } else {
            current_ns_tid(tgid)
        };
        // SAFETY: map value, not yet visible to the child.
        unsafe {
            (*inherited).inherited_tid = forker;
            (*inherited).ns_tid = 0;
        }
    }
}

/// Thread `tid` exited or exec'd: it holds nothing.
#[inline(always)]
pub fn forget_thread(tid: &u32) {
    let _ = HELD.remove(tid);
    let _ = INHERIT.remove(tid);
}
