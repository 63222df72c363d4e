//! Process and thread lifecycle (sched tracepoints): a forked child is traced
//! like its parent and inherits the locks the forking thread held and its
//! Python description; an exec starts afresh; an exit forgets the thread's
//! state in every module and tells the collector when the process is gone
//! (its pid may be reused).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use tracer_common::{Counter, EventKind, LockEvent};

use crate::{
    acquire, condvar,
    context::global,
    counters::count,
    emit::{write_lock_event, EVENTS},
    filter::{self, is_traced},
    futex, held, instances, nstid, python, semaphores,
};

/// Field offsets of the sched tracepoints, read from tracefs by the collector
/// (they differ between kernel versions).
#[no_mangle]
static FORK_CHILD_PID_OFFSET: u32 = 20;
/// [`NO_GROUP_DEAD`] on kernels whose `sched_process_exit` has no
/// `group_dead` field (6.1 has none).
#[no_mangle]
static EXIT_GROUP_DEAD_OFFSET: u32 = 32;
/// See [`EXIT_GROUP_DEAD_OFFSET`]: the process then ends with its main
/// thread's exit.
const NO_GROUP_DEAD: u32 = u32::MAX;

/// Exited processes the ring buffer had no room to announce: the
/// collector reads them with the deferred dependencies.
#[map]
static EXITS_DEFERRED: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

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
    filter::follow_fork(&child);
    python::follow_fork(&tgid, &child);
    held::follow_fork(&ctx, &tgid, &tid, &child);
    nstid::follow_fork(&tgid, &child);
    0
}

#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // A new program holds no locks, and runs no Python yet.
    held::forget_thread(&tid);
    python::forget_process(&tgid);
    python::forget_thread(&tid);
    // Its address space is new: the collector separates the previous
    // image's lock instances from this one's (a non-PIE program has its
    // globals at the same addresses as the one before it). The previous
    // image's records are all in the ring buffer already: its other threads
    // died before this tracepoint, and this thread wrote its own first.
    if is_traced(tgid) {
        instances::follow_exec(&tgid);
        announce(EventKind::ProcessExec, tgid, tid);
    }
    filter::follow_exec(&tgid);
    0
}

/// Tells the collector that process `tgid` exited or exec'd: both end its
/// lock instances. When the ring buffer has no room, the pid waits in
/// `EXITS_DEFERRED`, which the collector handles as an exit: an exec needs
/// the same (the old image's locks forgotten; the new image's dependencies
/// deferred meanwhile may be forgotten with them: lost, never joined).
#[inline(always)]
fn announce(kind: EventKind, tgid: u32, tid: u32) {
    match EVENTS.reserve::<LockEvent>(0) {
        Some(mut entry) => {
            // SAFETY: a reserved, exclusively owned slot.
            // An exec's time (CLOCK_MONOTONIC) in `addr`: the collector
            // keeps what it learned of the new image after it.
            let at = if kind as u32 == EventKind::ProcessExec as u32 {
                // SAFETY: a helper with no argument.
                unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
            } else {
                0
            };
            unsafe { write_lock_event(entry.as_mut_ptr(), kind, tgid, tid, 0, at, 0) };
            entry.submit(0);
            count(Counter::LockRecords);
        }
        None => {
            if EXITS_DEFERRED.insert(&tgid, &0, 0).is_ok() {
                count(Counter::DeferredDependencies);
            } else {
                count(Counter::LostEvents);
            }
        }
    }
}

#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    held::forget_thread(&tid);
    acquire::forget_thread(&tid);
    condvar::forget_thread(&tid);
    futex::forget_thread(&tid);
    semaphores::forget_thread(&tid);
    python::forget_thread(&tid);
    if tid != tgid {
        filter::forget(&tid);
        python::forget_process(&tid);
        nstid::forget(&tid);
    }
    let offset = global(&EXIT_GROUP_DEAD_OFFSET);
    let group_dead = if offset == NO_GROUP_DEAD {
        // Without the field: the main thread's exit stands for the
        // process's. Its other threads, when the main one left first
        // (pthread_exit in main), are then forgotten early: their later
        // lock operations go unseen or are seen as a new process's, which
        // loses findings but makes none up.
        tid == tgid
    } else {
        // SAFETY: offset read from this kernel's tracepoint format.
        unsafe { ctx.read_at::<u8>(offset as usize) }.unwrap_or(0) != 0
    };
    if group_dead {
        // Tell the collector (before the pid leaves the filter) so that it
        // forgets the process: its pid may be reused.
        if is_traced(tgid) {
            announce(EventKind::ProcessExit, tgid, tid);
        }
        filter::forget(&tgid);
        python::forget_process(&tgid);
        nstid::forget(&tgid);
        instances::forget_process(&tgid);
    }
    0
}
