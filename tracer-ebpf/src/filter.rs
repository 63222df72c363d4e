//! Which processes are traced: all but the collector, or those the collector
//! names (by pid, command name or cgroup) and their children.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, HashMap},
};
use tracer_common::{COMM_LEN, FILTER_ALL};

use crate::context::global;

// Set by the collector at load time (EbpfLoader::set_global).
/// The collector's own tgid: its own lock calls must never be traced (its
/// futex and lock traffic would feed back into the ring buffer).
#[no_mangle]
static TRACER_TGID: u32 = 0;
/// `FILTER_ALL` or `FILTER_TRACED`.
#[no_mangle]
static FILTER_MODE: u32 = FILTER_ALL;
/// Non-zero when map `COMMS` holds command names to trace from exec on.
#[no_mangle]
static COMM_FILTER: u32 = 0;
/// Non-zero when map `CGROUPS` holds cgroup v2 ids whose processes are traced.
#[no_mangle]
static CGROUP_FILTER: u32 = 0;

/// Entry 0 is set by the collector once every probe of the files it
/// attaches first is live (see `kernel::attach` in the collector). Until
/// then no acquisition is recorded: a lock taken while some release probe
/// was not yet live could stay in a held stack for ever, and order every
/// later lock of its thread after it (a false edge).
#[map]
static ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Whether acquisitions are recorded yet (see `ARMED`).
#[inline(always)]
pub fn is_armed() -> bool {
    ARMED.get(0).is_some_and(|v| *v != 0)
}

/// Traced tgids when `FILTER_MODE == FILTER_TRACED`.
#[map]
static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);
/// cgroup v2 ids (the inode of the cgroup's directory) whose processes are
/// traced, when `CGROUP_FILTER` is set.
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(64, 0);
/// Command names (comm) whose processes are traced from exec on.
#[map]
static COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(64, 0);

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    if tgid == global(&TRACER_TGID) {
        return false;
    }
    if global(&FILTER_MODE) == FILTER_ALL {
        return true;
    }
    // SAFETY: the value is not used, only its presence.
    if unsafe { TRACED.get(&tgid).is_some() } {
        return true;
    }
    // A service's cgroup (cgroup v2): processes in it are traced, whenever
    // and however they started.
    // SAFETY (both): a helper without preconditions; presence check only.
    global(&CGROUP_FILTER) != 0 && unsafe { CGROUPS.get(&bpf_get_current_cgroup_id()).is_some() }
}

/// (tgid, tid) of the current thread if it is traced.
#[inline(always)]
pub fn current_traced() -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_traced(tgid) {
        Some((tgid, pid_tgid as u32))
    } else {
        None
    }
}

/// A traced process forked `child` (a process or a thread): it is traced too.
#[inline(always)]
pub fn follow_fork(child: &u32) {
    if global(&FILTER_MODE) != FILTER_ALL {
        // Threads are added too (their tid is never a tgid unless they exec,
        // and then they are the same program): harmless, removed at exit.
        let _ = TRACED.insert(child, &1, 0);
    }
}

/// Process `tgid` exec'd: traced from now on if its new command name is one
/// the collector named, or if it runs in a traced cgroup (a service's
/// process is often moved into its cgroup between its fork and its exec).
/// The entry tells the collector to put the probes in it, when they are
/// per process.
#[inline(always)]
pub fn follow_exec(tgid: &u32) {
    // SAFETY: a helper without preconditions; presence check only.
    if global(&CGROUP_FILTER) != 0 && unsafe { CGROUPS.get(&bpf_get_current_cgroup_id()).is_some() }
    {
        let _ = TRACED.insert(tgid, &1, 0);
    }
    if global(&COMM_FILTER) != 0 {
        if let Ok(comm) = bpf_get_current_comm() {
            // SAFETY: presence check only.
            if unsafe { COMMS.get(&comm) }.is_some() {
                let _ = TRACED.insert(tgid, &1, 0);
            }
        }
    }
}

/// Thread or process `id` exited.
#[inline(always)]
pub fn forget(id: &u32) {
    let _ = TRACED.remove(id);
}
