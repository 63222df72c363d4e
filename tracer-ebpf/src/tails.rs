//! Tail calls between the lock programs. The verifier walks every program
//! on its own, each path through it, and every `locktrace run` waits for it:
//! code reached from several programs is verified once when it is a program
//! of its own that they tail-call, not once in each of them.
//!
//! - `lock` (index [`ACQUIRE`]) records an acquisition: its own probe's, or,
//!   tail-called by a return probe (`try_return`, `cond_wait_return`: links
//!   without a cookie), the one that probe completed.
//! - `lock_nested` (index [`NESTED`]) finishes an acquisition by a thread
//!   that holds other locks: it finds the new dependencies.
//! - `emit_deps` (index [`EMIT_DEPS`]) sends new dependencies or a
//!   self-deadlock.
//! - `py_copy` (index [`PY_COPY`]) copies the code objects of the Python
//!   frames `emit_deps` is about to send, and tail-calls it back.
//!
//! What a program hands over is in the thread's held stack (`tail_*`).
//! The collector fills `TAILS` before it attaches any lock probe.

use aya_ebpf::{bindings::pt_regs, macros::map, maps::ProgramArray, programs::ProbeContext};
use tracer_common::{EventKind, HeldLock, HeldStack};

use crate::held::copy_lock;

#[map]
static TAILS: ProgramArray = ProgramArray::with_max_entries(4, 0);
/// `emit_deps`.
pub const EMIT_DEPS: u32 = 0;
/// `lock`.
pub const ACQUIRE: u32 = 1;
/// `lock_nested`.
pub const NESTED: u32 = 2;
/// `py_copy`.
pub const PY_COPY: u32 = 3;

/// Tail-calls program `index` with this program's context; returns only if
/// the call failed.
#[inline(always)]
pub fn tail_call(ctx: &ProbeContext, index: u32) {
    // SAFETY: `ctx` is this program's own context.
    unsafe { TAILS.tail_call(ctx, index) };
}

/// Leaves `to` and the rest in the thread's scratch and tail-calls program
/// `index`; returns only if the call failed.
#[inline(always)]
pub fn hand_over(
    regs: &pt_regs,
    index: u32,
    held: &mut HeldStack,
    to: &HeldLock,
    entry_ip: u64,
    event: EventKind,
    push_after: bool,
) {
    copy_lock(&mut held.tail_to, to);
    held.tail_entry_ip = entry_ip;
    held.tail_event = event as u32;
    held.tail_push = u32::from(push_after);
    // The registers are the program's context.
    let ctx = ProbeContext::new((regs as *const pt_regs).cast_mut().cast());
    // SAFETY: `ctx` is this program's own context.
    unsafe { TAILS.tail_call(&ctx, index) };
}
