//! Least privilege once attached: the agent keeps only the capabilities
//! the tracing loop still uses (the `caps` crate) and sets no_new_privs,
//! so that nothing it runs later (Graphviz's `dot` for /report) can gain
//! any. Capabilities and no_new_privs belong to each thread: the tracing
//! thread drops to [`KEPT`] after attaching (with single uprobes, to
//! [`KEPT_FOR_SINGLE_UPROBES`] too); the agent's other threads
//! (HTTP, alerts, journald) need none and drop them all as they start.

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What the tracing loop uses after the start, each for a reason:
/// - `CAP_SYS_PTRACE`: reading other users' processes: `/proc/PID/maps`,
///   `/proc/PID/mem` (mutex owners, the wait-for scan),
///   `process_vm_readv` (Python frames), `/proc/PID/root` (a container's
///   files);
/// - `CAP_DAC_READ_SEARCH`: reading the ELF files they map whatever
///   their owner and mode (symbols, unwind tables, build-ids);
/// - `CAP_CHECKPOINT_RESTORE`: `/proc/PID/map_files/`, the file a process
///   maps when its path no longer leads to it (replaced, deleted, another
///   mount namespace).
///
/// Probing a libc (or libpython) a process maps later needs no capability
/// with multi-uprobe links: the kernel checks them when the programs are
/// loaded, at the start, not when a link is made (the end-to-end test
/// probes a copy of libc after the drop).
pub const KEPT: &[Capability] = &[
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_CHECKPOINT_RESTORE,
];

/// Kept too when the probes are aya's single uprobes (a kernel before
/// 6.6): each later probe is a `perf_event_open` of a uprobe (CAP_PERFMON;
/// CAP_SYS_ADMIN on kernels with the 2025 fix, and before 5.8 for both)
/// and a BPF link (CAP_BPF), its program loaded then.
pub const KEPT_FOR_SINGLE_UPROBES: &[Capability] = &[
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_ADMIN,
];

/// The tracing thread, once the probes are attached: every capability
/// but [`KEPT`] (and [`KEPT_FOR_SINGLE_UPROBES`] unless `multi_links`)
/// leaves the bounding, permitted, effective and inheritable sets (ambient
/// ones all go), and no_new_privs is set. Returns what is kept (those the
/// agent had).
pub fn drop_after_attach(multi_links: bool) -> Result<Vec<Capability>> {
    let supported = caps::runtime::thread_all_supported();
    let mut keep: CapsHashSet = KEPT.iter().copied().collect();
    if !multi_links {
        keep.extend(KEPT_FOR_SINGLE_UPROBES.iter().copied());
    }
    let permitted = caps::read(None, CapSet::Permitted).context("cannot read capabilities")?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    restrict(&keep, &supported)?;
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}

/// A helper thread (it needs no capability): all of them dropped, and
/// no_new_privs. A failure is logged: the thread works without it.
pub fn drop_all_in_this_thread() {
    let supported = caps::runtime::thread_all_supported();
    if let Err(e) = restrict(&CapsHashSet::new(), &supported) {
        tracing::warn!("cannot drop a helper thread's capabilities: {e:#}");
    }
}

/// The calling thread keeps `keep` only. The bounding set first: dropping
/// from it takes CAP_SETPCAP, which the permitted set then loses. Without
/// CAP_SETPCAP (a unit that does not grant it) the bounding set stays as
/// the unit made it: with no_new_privs an exec gains nothing from it.
fn restrict(keep: &CapsHashSet, supported: &CapsHashSet) -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("cannot set no_new_privs")?;
    let bounding = caps::read(None, CapSet::Bounding).context("cannot read capabilities")?;
    let setpcap = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .context("cannot read capabilities")?;
    for cap in supported.iter().filter(|c| !keep.contains(c)) {
        if setpcap && bounding.contains(cap) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("cannot drop {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("cannot clear the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("cannot clear the inheritable capabilities")?;
    // Effective first: it must stay within the permitted set.
    caps::set(None, CapSet::Effective, keep).context("cannot set the effective capabilities")?;
    caps::set(None, CapSet::Permitted, keep).context("cannot set the permitted capabilities")?;
    Ok(())
}
