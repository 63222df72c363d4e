//! Condition waits. `pthread_cond_wait` releases its mutex inside glibc and
//! re-takes it before returning, without calling the probed lock functions:
//! the entry probe releases the mutex, the return probe re-acquires it as a
//! blocking acquisition ordered after every lock the thread still holds.

use aya_ebpf::{
    macros::{map, uprobe, uretprobe},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{HeldLock, LockKind, PyFrameRaw};

use crate::{
    acquire::{acquire_later, Pending},
    context::{call_site, regs},
    filter::current_traced,
    handoff::note_cond_waiter,
    held::{release, Released},
};

/// Condition waits in progress (by tid): the mutex, re-acquired at return.
#[map]
static COND_WAITS: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// Entry of `pthread_cond_wait` and its timed variants: the mutex (second
/// argument) is released for the wait, inside glibc.
#[uprobe]
pub fn cond_wait(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let mutex = ctx.arg::<u64>(1).unwrap_or(0);
    note_cond_waiter(tgid, tid, mutex);
    let kind = match release(mutex) {
        Released::Entry(entry) => entry.kind,
        _ => LockKind::Mutex as u32,
    };
    let (callsite, above) = call_site(&ctx);
    let wait = Pending {
        lock: HeldLock {
            addr: mutex,
            callsite,
            kind,
            flags: 0,
            sp: regs(&ctx).rsp,
            bp: regs(&ctx).rbp,
            above,
            py: PyFrameRaw::default(),
            py_caller: PyFrameRaw::default(),
        },
        entry_ip: regs(&ctx).rip,
    };
    let _ = COND_WAITS.insert(&tid, &wait, 0);
    0
}

/// Return of a condition wait: glibc re-took the mutex (whatever the result),
/// a blocking acquisition ordered after every lock the thread still holds.
#[uretprobe]
pub fn cond_wait_return(ctx: RetProbeContext) -> u32 {
    let Some((_, tid)) = current_traced() else {
        return 0;
    };
    // SAFETY: copied out before the entry is removed.
    let Some(wait) = (unsafe { COND_WAITS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = COND_WAITS.remove(&tid);
    // SAFETY: the context's registers are valid for the program's run.
    let regs = unsafe { &*ctx.regs };
    acquire_later(regs, &wait.lock, wait.entry_ip)
}

/// Whether thread `tid` is in a condition wait.
#[inline(always)]
pub fn in_cond_wait(tid: &u32) -> bool {
    // SAFETY: presence check only.
    unsafe { COND_WAITS.get(tid) }.is_some()
}

/// Thread `tid` exited.
#[inline(always)]
pub fn forget_thread(tid: &u32) {
    let _ = COND_WAITS.remove(tid);
}
