//! What programs read of their context and of the traced thread's memory:
//! registers, arguments, the caller's return address, user memory, and the
//! globals the collector sets at load time.

use tracer_common::CALLER_WORDS;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as probe_read_user_raw},
    programs::ProbeContext,
};

/// Map flag: allocate entries on insert (maps too large to preallocate).
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// A global the collector may have set (`EbpfLoader::set_global`).
#[inline(always)]
pub fn global(v: &'static u32) -> u32 {
    // SAFETY: reading a global the loader may have rewritten; volatile so the
    // compiler does not fold the default value in.
    unsafe { core::ptr::read_volatile(v) }
}

/// The caller's return address: at `[rsp]` on function entry, and still there
/// wherever the probe is placed before the function changes `rsp`.
#[inline(always)]
pub fn return_address(ctx: &ProbeContext) -> u64 {
    // SAFETY: reading user memory through the helper, which handles faults.
    unsafe { bpf_probe_read_user((*ctx.regs).rsp as *const u64) }.unwrap_or(0)
}

/// The caller's return address and the stack words above it, in one read
/// (see `HeldLock::above`).
#[inline(always)]
pub fn call_site(ctx: &ProbeContext) -> (u64, [u64; CALLER_WORDS]) {
    // SAFETY: reading user memory through the helper, which handles faults.
    let words = unsafe { bpf_probe_read_user((*ctx.regs).rsp as *const [u64; CALLER_WORDS + 1]) };
    match words {
        Ok(w) => (w[0], [w[1], w[2], w[3], w[4], w[5], w[6]]),
        // The top of a stack mapping: the return address alone.
        Err(_) => (return_address(ctx), [0; CALLER_WORDS]),
    }
}

#[inline(always)]
pub fn read_user_u32(addr: u64) -> u32 {
    // SAFETY: the helper handles faults (0 then).
    unsafe { bpf_probe_read_user(addr as *const u32) }.unwrap_or(0)
}

#[inline(always)]
pub fn read_user_u64(addr: u64) -> u64 {
    // SAFETY: the helper handles faults (0 then).
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// Reads `len` (at most `N`) bytes of user memory at `src` into `dst`.
#[inline(always)]
pub fn read_user_bytes<const N: usize>(dst: &mut [u8; N], src: u64, len: u64) -> u32 {
    let n = if len > N as u64 { N as u32 } else { len as u32 };
    // SAFETY: `dst` holds N >= n bytes; the helper handles faults.
    let ok = unsafe { probe_read_user_raw(dst.as_mut_ptr().cast(), n, src as *const _) } == 0;
    if ok {
        n
    } else {
        0
    }
}

/// The lock function's first argument: the lock.
#[inline(always)]
pub fn lock_arg(ctx: &ProbeContext) -> u64 {
    ctx.arg::<u64>(0).unwrap_or(0)
}

#[inline(always)]
pub fn regs(ctx: &ProbeContext) -> &pt_regs {
    // SAFETY: the context's registers are valid for the program's run.
    unsafe { &*ctx.regs }
}
