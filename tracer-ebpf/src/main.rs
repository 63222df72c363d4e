//! locktrace, kernel side: uprobes on libc's lock functions keep a held-lock
//! stack per thread and emit each new lock-order dependency once per process;
//! sched tracepoints follow forks, execs and exits.
//!
//! Cost matters (every lock operation of every traced thread pays a uprobe
//! hit): the hot path is a few O(1) map operations; the stack is copied only
//! when a dependency is new.
//!
//! One module per concern, each owning its maps. The generic lock-order path
//! is `acquire` -> `held` -> `emit`; the heuristics for locks that are not
//! plain locks live apart, each with its reason: `semaphores` (CPython's
//! trywait-first protocol, signalling semaphores), `handoff` (wake-up
//! mutexes), `condvar` (the mutex a condition wait releases and re-takes).
//!
//! Functions that use a tid or tgid as a map key take it by reference, as
//! the map calls do: a key passed by value gets a stack slot of its own, and
//! in `acquire_blocking` that alone made LLVM duplicate the tail of
//! `emit_new_dependencies` (`mutex_lock` grew from 1,647 to 2,321
//! instructions, more for the verifier to walk).
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no `AtomicU64::fetch_add` in core, but
// the instruction exists (BPF_ATOMIC); see `counters::add`.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod acquire;
mod condvar;
mod context;
mod counters;
mod emit;
mod filter;
mod floor;
mod freed;
mod futex;
mod handoff;
mod held;
mod instances;
mod nstid;
mod process;
mod python;
mod semaphores;
mod tails;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
