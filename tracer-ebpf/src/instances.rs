//! Lock initialization and destruction: the address becomes a new lock
//! instance (reused memory must not inherit the old one's dependencies), and
//! an init's call site, its caller and its Python creator name the new
//! lock's class.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::{Counter, EventKind, LockEvent, INIT_STACK_BYTES};

use crate::{
    context::{lock_arg, read_user_bytes, return_address},
    counters::count,
    emit::{write_lock_event, EVENTS},
    filter::current_traced,
    python::python_creator,
};

/// `pthread_mutex_init`/`_destroy`, `pthread_rwlock_*`, `sem_init`/`_destroy`:
/// the address becomes a new lock instance. The collector drops the old
/// one's dependencies (and their entries in `DEPENDENCIES`); an init's call
/// site is the new lock's class.
#[inline(always)]
fn lock_reset(ctx: &ProbeContext, init: u32) -> u32 {
    let Some((tgid, tid)) = current_traced() else {
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve::<LockEvent>(0) else {
        count(Counter::LostEvents);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, exclusively owned ring-buffer slot
    // (written field by field: the event is too large for the BPF stack).
    unsafe {
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
            (*ev).init_stack_len =
                read_user_bytes(&mut (*ev).init_stack, sp, INIT_STACK_BYTES as u64);
        }
    }
    entry.submit(0);
    0
}

#[uprobe]
pub fn lock_init(ctx: ProbeContext) -> u32 {
    lock_reset(&ctx, 1)
}

#[uprobe]
pub fn lock_destroy(ctx: ProbeContext) -> u32 {
    lock_reset(&ctx, 0)
}
