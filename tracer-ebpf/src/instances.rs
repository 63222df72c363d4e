//! Lock initialization and destruction: the address becomes a new lock
//! instance (reused memory must not inherit the old one's dependencies), and
//! an init's call site, its caller and its Python creator name the new
//! lock's class.
//!
//! Servers create and destroy locks per request (APR makes a mutex per
//! pool), and most of them never nest with another lock: the collector
//! needs nothing of them. So an init is kept here (`PENDING_INITS`) and sent
//! only when its lock first takes part in a dependency (`flush_init`, just
//! before the dependency, so the collector reads them in order); a destroy
//! of a lock whose init was never sent is dropped with it. Locks the
//! collector has heard of (`KNOWN_LOCKS`) have their inits and destroys sent
//! at once, as must be for reused memory.

use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel,
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use tracer_common::{Counter, EventKind, LockEvent, LockKey, INIT_STACK_BYTES};

use crate::{
    context::{lock_arg, read_user_bytes, return_address, BPF_F_NO_PREALLOC},
    counters::count,
    emit::{write_lock_event, EVENTS},
    filter::current_traced,
    freed::note_named,
    python::python_creator,
};

/// Inits not sent yet, by process and address (allocated on use: a full
/// map only means that further inits are sent at once, as before).
#[map]
static PENDING_INITS: HashMap<LockKey, LockEvent> =
    HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);
/// Locks the collector has heard of (a dependency named them). LRU: an
/// evicted lock's next init is only held back again.
#[map]
static KNOWN_LOCKS: LruHashMap<LockKey, u8> = LruHashMap::with_max_entries(65536, 0);
/// How many times each traced process exec'd since it was first seen here
/// (absent: never). A held-back init carries its image's number, and
/// `flush_init` drops one made by an earlier image: a lock of the new
/// program at the same address (a non-PIE program's global) must not be
/// classed by the old program's init site. LRU: an evicted process counts
/// from 0 again, so its older inits only fail to match and are dropped (a
/// lock classed without its init; never another lock's init).
#[map]
static IMAGES: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);
/// A zeroed event to create `PENDING_INITS` entries from (too large for the
/// BPF stack). Never written.
#[map]
static EMPTY_LOCK_EVENT: PerCpuArray<LockEvent> = PerCpuArray::with_max_entries(1, 0);

/// `pthread_mutex_init`/`_destroy`, `pthread_rwlock_*`, `sem_init`/`_destroy`:
/// the address becomes a new lock instance. The collector drops the old
/// one's dependencies (and their entries in `DEPENDENCIES`); an init's call
/// site is the new lock's class.
#[inline(always)]
fn lock_reset(ctx: &ProbeContext, init: u32) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let key = LockKey {
        pid: tgid,
        _pad: 0,
        addr: lock_arg(ctx),
    };
    if init != 0 {
        // SAFETY: presence check only.
        let known = unsafe { KNOWN_LOCKS.get(&key) }.is_some();
        if !known && hold_back(ctx, &key, tid) {
            count(Counter::InitsHeldBack);
            return 0;
        }
    } else {
        // An init never sent: the pair is dropped.
        if PENDING_INITS.remove(&key).is_ok() {
            count(Counter::ResetsElided);
            return 0;
        }
        let _ = KNOWN_LOCKS.remove(&key);
    }
    let Some(mut entry) = EVENTS.reserve::<LockEvent>(0) else {
        count(Counter::LostEvents);
        return 0;
    };
    // SAFETY: `ev` points to a reserved, exclusively owned ring-buffer slot
    // (written field by field: the event is too large for the BPF stack).
    unsafe { write_reset(entry.as_mut_ptr(), ctx, tgid, tid, init) };
    entry.submit(0);
    count(Counter::LockRecords);
    0
}

/// Keeps an init in `PENDING_INITS`; false if the map is full.
#[inline(always)]
fn hold_back(ctx: &ProbeContext, key: &LockKey, tid: u32) -> bool {
    let Some(zero) = EMPTY_LOCK_EVENT.get_ptr(0) else {
        return false;
    };
    // SAFETY: a map value of the right type, never written. An entry left
    // by an earlier init at this address (memory reused without a destroy)
    // is replaced: the collector never heard of that lock.
    if PENDING_INITS.insert(key, unsafe { &*zero }, 0).is_err() {
        return false;
    }
    let Some(ev) = PENDING_INITS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: our own entry; `flush_init` skips it until `event` is set.
    unsafe {
        write_reset(ev, ctx, key.pid, tid, 1);
        (*ev)._pad = image_of(key.pid);
        core::ptr::write_volatile(&mut (*ev).event, EventKind::LockReset as u32);
    }
    true
}

/// The number of process `tgid`'s current program image (see `IMAGES`).
#[inline(always)]
fn image_of(tgid: u32) -> u32 {
    // SAFETY: a plain value read once.
    unsafe { IMAGES.get(&tgid) }.copied().unwrap_or(0)
}

/// Process `tgid` exec'd: its held-back inits are the old image's.
#[inline(always)]
pub fn follow_exec(tgid: &u32) {
    let next = image_of(*tgid).wrapping_add(1);
    let _ = IMAGES.insert(tgid, &next, 0);
}

/// Process `tgid` exited: its pid may be reused, as a first image.
#[inline(always)]
pub fn forget_process(tgid: &u32) {
    let _ = IMAGES.remove(tgid);
}

/// # Safety
/// `ev` must point to a writable `LockEvent`.
#[inline(always)]
unsafe fn write_reset(ev: *mut LockEvent, ctx: &ProbeContext, tgid: u32, tid: u32, init: u32) {
    write_lock_event(
        ev,
        EventKind::LockReset,
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
        (*ev).bp = (*ctx.regs).rbp;
        (*ev).init_stack_len = read_user_bytes(&mut (*ev).init_stack, sp, INIT_STACK_BYTES as u64);
    }
}

/// Before a dependency naming the lock at `addr` is sent: its held-back
/// init goes first, and the lock is known from now on (its destroy and its
/// address's next init are sent at once). False if the init had to stay
/// in the map (no room in the ring buffer): the dependency must then wait
/// in `DEFERRED` too, where the collector takes the init with it (sent
/// through the ring buffer, it would be classed without its init).
#[inline(always)]
pub fn flush_init(tgid: u32, addr: u64) -> bool {
    let key = LockKey {
        pid: tgid,
        _pad: 0,
        addr,
    };
    // SAFETY: presence check only.
    if unsafe { KNOWN_LOCKS.get(&key) }.is_none() {
        let _ = KNOWN_LOCKS.insert(&key, &0, 0);
    }
    note_named(tgid, addr);
    let Some(pending) = PENDING_INITS.get_ptr(&key) else {
        return true;
    };
    // SAFETY: a map value; read once.
    if unsafe { core::ptr::read_volatile(&(*pending).event) } == 0 {
        return true;
    }
    // Made by the program this process ran before its exec: not this
    // lock's init (the lock is classed without one).
    // SAFETY: a map value; `_pad` was written before `event`.
    if unsafe { (*pending)._pad } != image_of(tgid) {
        let _ = PENDING_INITS.remove(&key);
        return true;
    }
    // No room in the ring buffer: the init stays here, and the collector
    // takes it from the map with the dependency (which then waits in
    // `DEFERRED` too).
    let Some(mut entry) = EVENTS.reserve::<LockEvent>(0) else {
        return false;
    };
    // SAFETY: copies one map value into a reserved slot of its size.
    let copied = unsafe {
        bpf_probe_read_kernel(
            entry.as_mut_ptr().cast(),
            core::mem::size_of::<LockEvent>() as u32,
            pending.cast(),
        )
    };
    // Whoever deletes the entry owns the init: here, or the collector
    // taking it with a deferred dependency (then this dependency is
    // deferred too, to come after it).
    if copied == 0 && PENDING_INITS.remove(&key).is_ok() {
        entry.submit(0);
        count(Counter::LockRecords);
        true
    } else {
        entry.discard(0);
        false
    }
}

#[uprobe]
pub fn lock_init(ctx: ProbeContext) -> u32 {
    lock_reset(&ctx, 1)
}

#[uprobe]
pub fn lock_destroy(ctx: ProbeContext) -> u32 {
    lock_reset(&ctx, 0)
}
