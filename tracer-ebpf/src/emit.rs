//! Writing records to the ring buffer. Each dependency is sent once per
//! process and chain key (`DEPENDENCIES`), so a steady workload costs no
//! ring-buffer traffic; the stack is copied only for a new one.
//!
//! Sending (the record, the stack copy, the Python frames, the held-back
//! inits, the deferred fallback) is its own program, `emit_deps`, reached by
//! a tail call (see `tails`).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use tracer_common::{
    chain_key_mix, chain_key_without, Counter, DeferredDependency, DependencyEvent, DependencyKey,
    EventKind, HeldLock, HeldStack, LockEvent, LockKind, PyFrameRaw, COMM_LEN,
    DEFERRED_STACK_BYTES, MAX_HELD, PY_CODE_COPIES, PY_CREATOR_FRAMES, STACK_BYTES, STACK_CHUNK,
};

use crate::{
    context::BPF_F_NO_PREALLOC,
    counters::count,
    held::{copy_lock, existing_held_stack, push},
    instances::flush_init,
    python::{copy_event_codes, is_python, python_stack},
    semaphores::is_signal_sem,
    tails::{hand_over, tail_call, EMIT_DEPS, PY_COPY},
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);
/// Dependencies already sent to the collector (LRU: an evicted entry is only
/// sent again).
#[map]
static DEPENDENCIES: LruHashMap<DependencyKey, u8> = LruHashMap::with_max_entries(262144, 0);
/// Dependencies the ring buffer had no room for, by key: delayed, not lost.
/// The collector reads and deletes them (see `DeferredDependency`).
#[map]
static DEFERRED: HashMap<DependencyKey, DeferredDependency> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);
/// A zeroed deferred record to create `DEFERRED` entries from (too large for
/// the 512-byte BPF stack). Never written, so safe to share on any CPU.
#[map]
static EMPTY_DEFERRED: PerCpuArray<DeferredDependency> = PerCpuArray::with_max_entries(1, 0);

/// The dependencies `held -> to` not yet sent for this process: their
/// `from` locks are gathered in `NEW_FROM` (per CPU) before the ring-buffer
/// slot is reserved, so that a steady workload reserves nothing.
///
/// The loops index by a counter, never by a bitmask of new entries: the
/// verifier follows every value of such a mask separately (2^16 paths).
#[inline(always)]
pub fn emit_new_dependencies(
    regs: &pt_regs,
    held: &mut HeldStack,
    tgid: u32,
    to: &HeldLock,
    entry_ip: u64,
    event: EventKind,
) {
    // The thread's own scratch (per-CPU scratch would not survive
    // preemption). Its count lives in map memory, which the verifier does
    // not follow value by value: a counter in a register would be, and with
    // the other branches of the loop that exceeds its instruction budget.
    let n_ptr: *mut u64 = &mut held.n_new;
    // SAFETY (all volatile accesses): a valid, aligned map value field.
    unsafe { core::ptr::write_volatile(n_ptr, 0) };
    let depth = held.depth as usize;
    let mut all_held = 0u64;
    for i in 0..MAX_HELD {
        if i >= depth {
            break;
        }
        all_held ^= chain_key_mix(held.locks[i].addr);
    }
    for i in 0..MAX_HELD {
        if i >= depth {
            break;
        }
        let from = held.locks[i];
        if from.addr == to.addr {
            continue;
        }
        if from.kind == LockKind::Semaphore as u32 && is_signal_sem(tgid, from.addr) {
            continue;
        }
        let mut key = dependency_key(tgid, &from, to, event);
        key.chain_key = chain_key_without(all_held, from.addr);
        // SAFETY: presence check only.
        if unsafe { DEPENDENCIES.get(&key) }.is_some() {
            continue;
        }
        if DEPENDENCIES.insert(&key, &0, 0).is_err() {
            count(Counter::DependencyCacheFull);
        }
        let n = unsafe { core::ptr::read_volatile(n_ptr) } as usize;
        if let Some(slot) = held.new_from.get_mut(n) {
            copy_lock(slot, &from);
            unsafe { core::ptr::write_volatile(n_ptr, n as u64 + 1) };
        }
    }
    let n = unsafe { core::ptr::read_volatile(n_ptr) } as usize;
    if n == 0 {
        return;
    }
    // `emit_deps` sends them and pushes `to`; this program ends there.
    hand_over(regs, EMIT_DEPS, held, to, entry_ip, event, true);
    // Only if the tail call failed (`TAILS` is filled before any probe is
    // attached): forgotten, so that their next occurrences are sent again.
    for i in 0..MAX_HELD {
        if i >= n {
            break;
        }
        let from = held.new_from[i];
        let mut key = dependency_key(tgid, &from, to, event);
        key.chain_key = chain_key_without(all_held, from.addr);
        count(Counter::LostEvents);
        let _ = DEPENDENCIES.remove(&key);
    }
}

/// Sends what a lock program left in the thread's scratch (see
/// `hand_over`): the new dependencies `new_from[..n_new] -> tail_to`, then
/// pushes `tail_to`; or a self-deadlock on it.
#[uprobe]
pub fn emit_deps(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(held) = existing_held_stack(&tid) else {
        return 0;
    };
    // The code objects the event names are copied first (`py_copy`, which
    // comes back here): the collector reads the copies before the event.
    if held.tail_py_copied == 0 && is_python(tgid) {
        held.tail_py_copied = 1;
        tail_call(&ctx, PY_COPY);
    }
    held.tail_py_copied = 0;
    // SAFETY: the context's registers are valid for the program's run.
    let regs = unsafe { &*ctx.regs };
    let to = held.tail_to;
    let entry_ip = held.tail_entry_ip;
    let event = match held.tail_event {
        e if e == EventKind::SelfDeadlock as u32 => EventKind::SelfDeadlock,
        e if e == EventKind::Handoff as u32 => EventKind::Handoff,
        _ => EventKind::Dependency,
    };
    if held.tail_push == 0 {
        send_self_deadlock(regs, tgid, tid, &to, held);
        return 0;
    }
    send_new_dependencies(regs, held, tgid, tid, &to, entry_ip, event);
    push(held, to);
    0
}

/// Copies the code objects of the Python frames that the event `emit_deps`
/// is sending names (see `python::copy_event_codes`), then goes back to it.
/// A program of its own: verified once, and never in `emit_deps`'s paths.
#[uprobe]
pub fn py_copy(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(held) = existing_held_stack(&tid) else {
        return 0;
    };
    copy_event_codes(&EVENTS, tgid, tid, held);
    tail_call(&ctx, EMIT_DEPS);
    // Only if the tail call failed (`TAILS` is filled before any probe is
    // attached): the event is not sent.
    held.tail_py_copied = 0;
    count(Counter::LostEvents);
    0
}

/// Sends `new_from[..n_new] -> to`, each found new by
/// `emit_new_dependencies`.
#[inline(always)]
fn send_new_dependencies(
    regs: &pt_regs,
    held: &mut HeldStack,
    tgid: u32,
    tid: u32,
    to: &HeldLock,
    entry_ip: u64,
    event: EventKind,
) {
    let n = (held.n_new as usize).min(MAX_HELD);
    if n == 0 || submit(regs, tgid, tid, to, entry_ip, event, n, held) {
        return;
    }
    let depth = held.depth as usize;
    let mut all_held = 0u64;
    for i in 0..MAX_HELD {
        if i >= depth {
            break;
        }
        all_held ^= chain_key_mix(held.locks[i].addr);
    }
    // No room in the ring buffer: each new dependency waits in DEFERRED for
    // the collector; one that cannot is forgotten, so that its next
    // occurrence is sent again.
    for i in 0..MAX_HELD {
        if i >= n {
            break;
        }
        let from = held.new_from[i];
        let mut key = dependency_key(tgid, &from, to, event);
        key.chain_key = chain_key_without(all_held, from.addr);
        if defer(regs, &key, tgid, tid, &from, to, event, held) {
            count(Counter::DeferredDependencies);
        } else {
            count(Counter::LostEvents);
            let _ = DEPENDENCIES.remove(&key);
        }
    }
}

/// Keeps one new dependency in `DEFERRED` with a short stack window.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn defer(
    regs: &pt_regs,
    key: &DependencyKey,
    tgid: u32,
    tid: u32,
    from: &HeldLock,
    to: &HeldLock,
    event: EventKind,
    held: &HeldStack,
) -> bool {
    let Some(zero) = EMPTY_DEFERRED.get_ptr(0) else {
        return false;
    };
    // SAFETY: a map value of the right type, never written.
    if DEFERRED.insert(key, unsafe { &*zero }, 0).is_err() {
        return false;
    }
    let Some(d) = DEFERRED.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: our own new entry; the collector skips it until `event` is
    // set, last.
    unsafe {
        (*d).pid = tgid;
        (*d).tid = tid;
        (*d).timestamp_ns = bpf_ktime_get_ns();
        (*d).cgroup_id = bpf_get_current_cgroup_id();
        (*d).comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        copy_lock(&mut (*d).from, from);
        copy_lock(&mut (*d).to, to);
        (*d).ip = regs.rip;
        (*d).sp = regs.rsp;
        (*d).bp = regs.rbp;
        for i in 0..MAX_HELD {
            core::ptr::write_volatile(&mut (*d).held[i], held.locks[i].addr);
        }
        (*d).n_held = held.depth;
        let len = DEFERRED_STACK_BYTES as u32;
        (*d).stack_len = if probe_read_user_raw(
            (*d).stack.as_mut_ptr().cast(),
            len,
            regs.rsp as *const _,
        ) == 0
        {
            len
        } else {
            0
        };
        core::ptr::write_volatile(&mut (*d).event, event as u32);
    }
    true
}

/// Reports, once per lock and mode, a thread requesting a lock it holds.
#[inline(always)]
pub fn emit_self_deadlock(
    regs: &pt_regs,
    tgid: u32,
    entry: &HeldLock,
    to: &HeldLock,
    held: &mut HeldStack,
) {
    let key = dependency_key(tgid, entry, to, EventKind::SelfDeadlock);
    // SAFETY: presence check only.
    if unsafe { DEPENDENCIES.get(&key) }.is_some() {
        return;
    }
    copy_lock(&mut held.new_from[0], entry);
    // `emit_deps` sends it; this program ends there.
    hand_over(regs, EMIT_DEPS, held, to, 0, EventKind::SelfDeadlock, false);
    // Only if the tail call failed; not marked sent: the next request
    // reports it.
    count(Counter::LostEvents);
}

/// Sends the self-deadlock `new_from[0] -> to` (see `emit_self_deadlock`).
#[inline(always)]
fn send_self_deadlock(regs: &pt_regs, tgid: u32, tid: u32, to: &HeldLock, held: &mut HeldStack) {
    let entry = held.new_from[0];
    let key = dependency_key(tgid, &entry, to, EventKind::SelfDeadlock);
    if submit(regs, tgid, tid, to, 0, EventKind::SelfDeadlock, 1, held) {
        let _ = DEPENDENCIES.insert(&key, &0, 0);
    } else {
        // Not marked sent: the next request reports it.
        count(Counter::LostEvents);
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
    event: EventKind,
    n: usize,
    held: &HeldStack,
) -> bool {
    // The held-back inits of the locks named go first (see `instances`);
    // one that cannot sends the dependency to `DEFERRED`.
    let mut inits_sent = flush_init(tgid, to.addr);
    for i in 0..MAX_HELD {
        if i >= n {
            break;
        }
        inits_sent &= flush_init(tgid, held.new_from[i].addr);
    }
    if !inits_sent {
        return false;
    }
    // A full ring buffer is not a loss yet: see `defer`.
    let Some(mut entry) = EVENTS.reserve::<DependencyEvent>(0) else {
        return false;
    };
    let from = &held.new_from;
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, exclusively owned ring-buffer slot.
    unsafe {
        (*ev).event = event as u32;
        (*ev).pid = tgid;
        (*ev).tid = tid;
        (*ev).timestamp_ns = bpf_ktime_get_ns();
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
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
fn dependency_key(pid: u32, from: &HeldLock, to: &HeldLock, event: EventKind) -> DependencyKey {
    DependencyKey::new(
        pid,
        event as u32,
        (from.addr, from.kind),
        (to.addr, to.kind),
        0,
    )
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

/// The fixed part of a `LockEvent`, and no Python frames.
///
/// # Safety
/// `ev` must point to a writable `LockEvent`.
#[inline(always)]
pub unsafe fn write_lock_event(
    ev: *mut LockEvent,
    event: EventKind,
    pid: u32,
    tid: u32,
    init: u32,
    addr: u64,
    callsite: u64,
) {
    (*ev).event = event as u32;
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
    (*ev).bp = 0;
    (*ev).init_stack_len = 0;
}
