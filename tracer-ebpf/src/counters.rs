//! Per-CPU counters: everything the kernel side sees or cannot handle is
//! counted, and the collector reports it (nothing is dropped silently).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::{Counter, NUM_COUNTERS};

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    add(counter, 1);
}

/// Adds atomically: a program may be preempted by another on the same CPU
/// (PREEMPT kernels), so even a per-CPU slot can have two writers.
#[inline(always)]
pub fn add(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a valid, aligned map value.
        unsafe { atomic_add(slot, n) };
    }
}

/// `*slot += n` as one atomic instruction (BPF_ATOMIC).
///
/// # Safety
/// `slot` must be a valid, aligned pointer into map memory.
#[inline(always)]
pub unsafe fn atomic_add(slot: *mut u64, n: u64) {
    core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
        slot, n,
    );
}
