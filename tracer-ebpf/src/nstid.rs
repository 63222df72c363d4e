//! A thread's tid in its own pid namespace: the id glibc writes into the
//! owner field of a mutex it holds. Mutex unlocks are not probed, so a held
//! mutex is confirmed by that field at the next acquisition; in a container
//! the field holds the namespace's tid, not the host's that
//! `bpf_get_current_pid_tgid` returns.
//!
//! `bpf_get_ns_current_pid_tgid` gives it, given the namespace (the device
//! and inode of `/proc/PID/ns/pid`) and only if the thread is in that
//! namespace: a wrong guess yields nothing, never a wrong tid. The
//! collector's own namespace is a global (most processes share it); the
//! namespace of a process in another is written by the collector into
//! `PID_NS` when it sees the process, and copied to a forked child (a
//! child in a new namespace simply does not match).

use aya_ebpf::{
    bindings::bpf_pidns_info, helpers::generated::bpf_get_ns_current_pid_tgid, macros::map,
    maps::HashMap,
};

// Set by the collector at load time: its own pid namespace.
#[no_mangle]
static PIDNS_DEV: u64 = 0;
#[no_mangle]
static PIDNS_INO: u64 = 0;

/// The pid namespace (device, inode) of traced processes that are not in
/// the collector's, by tgid.
#[map]
static PID_NS: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(16384, 0);

/// The current thread's tid in namespace (dev, ino), or 0 if it is not in
/// that namespace.
#[inline(always)]
fn tid_in(dev: u64, ino: u64) -> u32 {
    if ino == 0 {
        return 0;
    }
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `info` is a valid buffer of the size passed.
    let ret = unsafe {
        bpf_get_ns_current_pid_tgid(
            dev,
            ino,
            &mut info,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    if ret == 0 {
        info.pid
    } else {
        0
    }
}

/// The current thread's namespace tid (it belongs to process `tgid`), or 0
/// while its namespace is not known.
#[inline(always)]
pub fn current_ns_tid(tgid: &u32) -> u32 {
    // SAFETY (both): globals the loader may have rewritten; volatile so the
    // compiler does not fold the defaults in.
    let (dev, ino) = unsafe {
        (
            core::ptr::read_volatile(&PIDNS_DEV),
            core::ptr::read_volatile(&PIDNS_INO),
        )
    };
    let tid = tid_in(dev, ino);
    if tid != 0 {
        return tid;
    }
    // SAFETY: copied out of the map value.
    match unsafe { PID_NS.get(tgid) } {
        Some(ns) => tid_in(ns[0], ns[1]),
        None => 0,
    }
}

/// Process `parent` forked `child`: most children stay in its namespace.
#[inline(always)]
pub fn follow_fork(parent: &u32, child: &u32) {
    // SAFETY: copied out of the map value.
    if let Some(ns) = unsafe { PID_NS.get(parent) }.copied() {
        let _ = PID_NS.insert(child, &ns, 0);
    }
}

/// Process or thread `id` is gone.
#[inline(always)]
pub fn forget(id: &u32) {
    let _ = PID_NS.remove(id);
}
