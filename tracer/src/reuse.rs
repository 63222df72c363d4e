//! Which dependencies can be judged, given where their locks live. A lock
//! instance is its address, and a lock announced by no init call (zeroed
//! memory, `PTHREAD_MUTEX_INITIALIZER`, every C++ `std::mutex`, which never
//! calls `pthread_mutex_init` or `_destroy`) looks the same as the lock that
//! was at that address before. Locks in a file's image are never freed, and
//! a semaphore needs `sem_init` (an init resets the instance). Otherwise:
//!
//! - **Heap**: its memory may be freed and become another lock. Once its
//!   process's frees are watched (`kernel::frees`), a free forgets the locks
//!   in it; a dependency recorded before that cannot be judged. It is
//!   dropped, and the kernel side's cache forgets it, so that its next
//!   occurrence is sent again and judged.
//! - **Stack**: a frame that returns ends its locks without a call anyone
//!   sees, and the next frame's locks take their addresses. Dependencies of
//!   locks on the stack (thread-local ones, which live at the top of a
//!   thread's stack, included) are dropped: a real inversion through such a
//!   lock is missed, none is invented.

use serde::Serialize;
use tracer_common::{chain_key_of, chain_key_without, DependencyKey, LockKind};
use tracing::debug;

use crate::kernel::decode::RawRequest;
use crate::kernel::frees::Watched;
use crate::kernel::load::Probes;
use crate::kernel::targets::FileId;
use crate::symbolize::{LockMemory, Symbolizer};

/// What the gate kept out, for the summary.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReuseStats {
    /// Dependency records naming a heap lock, recorded before their
    /// process's frees were watched: not judged (sent again when they
    /// recur).
    pub before_free_watch: u64,
    /// Dependency records naming a lock on a thread's stack: not judged.
    pub on_stack: u64,
    /// Dependency records naming a heap lock of a process whose frees
    /// cannot be watched (no `free` in the probed files: glibc before
    /// 2.34): judged, with the risk the README states.
    pub unwatched: u64,
    /// Processes whose frees were watched.
    pub processes_watched: u64,
    /// Processes whose frees could not be watched for lack of file
    /// descriptors (for a while: tried again): their heap locks'
    /// dependency records meanwhile are in `before_free_watch`.
    pub watches_refused: u64,
}

#[derive(Default)]
pub struct ReuseGate {
    pub stats: ReuseStats,
}

impl ReuseGate {
    /// Whether the dependencies of `raw` may be judged. Those that may not
    /// leave the kernel side's cache.
    pub fn admit(
        &mut self,
        raw: &RawRequest,
        symbolizer: &mut Symbolizer,
        probes: &mut Probes,
    ) -> bool {
        let mut on_heap = false;
        let locks = std::iter::once(&raw.to).chain(&raw.from);
        for lock in locks {
            if lock.kind == LockKind::Semaphore as u32 {
                continue;
            }
            match symbolizer.lock_memory(raw.pid, lock.addr, raw.sp) {
                // Unknown: the process was gone before its mappings were
                // read (its records processed after its exit). Judged as
                // before this gate: holding back every dependency of such
                // a process lost real inversions of short-lived ones.
                LockMemory::Image | LockMemory::Shared | LockMemory::Unknown => {}
                LockMemory::Stack => {
                    self.stats.on_stack += 1;
                    self.forget(raw, probes);
                    return false;
                }
                LockMemory::Heap => on_heap = true,
            }
        }
        if !on_heap {
            return true;
        }
        let mut watched = probes.frees_watched(raw.pid);
        let stale =
            matches!(watched, Watched::Since { until: Some(u), .. } if raw.timestamp_ns >= u);
        if watched == Watched::No || stale {
            watched = self.watch(raw.pid, symbolizer, probes);
        }
        // (`since` is taken once the breakpoints are in: a record made
        // before it may have had a free unseen before it.)
        if watched.covers(raw.timestamp_ns) {
            return true;
        }
        if watched == Watched::Never {
            self.stats.unwatched += 1;
            return true;
        }
        self.stats.before_free_watch += 1;
        self.forget(raw, probes);
        false
    }

    /// Watches the frees of process `pid` from now on (`run`'s command,
    /// before it runs; a process that `run` traces, when its fork is seen).
    pub fn watch(&mut self, pid: u32, symbolizer: &mut Symbolizer, probes: &mut Probes) -> Watched {
        let before = probes.frees_watched(pid);
        let mapped = mapped_files(pid, symbolizer);
        if mapped.is_empty() {
            // Its mappings are unknown (gone): nothing can be watched.
            return before;
        }
        match probes.watch_frees(pid, &mapped) {
            Ok(watched) => {
                if watched != before && matches!(watched, Watched::Since { .. }) {
                    self.stats.processes_watched += 1;
                }
                watched
            }
            Err(e) => {
                // Gone, most often: its heap locks' records stay unjudged.
                debug!(pid, "cannot watch the frees of a process: {e:#}");
                before
            }
        }
    }

    /// The kernel side's cache forgets the dependencies of `raw`.
    fn forget(&self, raw: &RawRequest, probes: &mut Probes) {
        let all_held = chain_key_of(&raw.held);
        let keys: Vec<DependencyKey> = raw
            .from
            .iter()
            .map(|from| {
                DependencyKey::of_dependency(
                    raw.pid,
                    raw.handoff,
                    (from.addr, from.kind),
                    (raw.to.addr, raw.to.kind),
                    chain_key_without(all_held, from.addr),
                )
            })
            .collect();
        if let Err(e) = probes.forget_dependencies(&keys) {
            debug!("cannot forget dependencies in the kernel: {e:#}");
        }
    }
}

/// The files process `pid` maps (device, inode), as the collector knows its
/// mappings (kept after its exit until its exit record is processed).
fn mapped_files(pid: u32, symbolizer: &mut Symbolizer) -> Vec<FileId> {
    let mut mapped: Vec<FileId> = symbolizer
        .spaces()
        .mappings(pid)
        .filter(|m| m.is_file())
        .map(|m| FileId {
            dev: m.dev,
            inode: m.inode,
        })
        .collect();
    mapped.sort_unstable();
    mapped.dedup();
    mapped
}
