//! Which processes the kernel side traces, set again while tracing goes on
//! (the agent's SIGHUP): the filter maps (`TRACED`, `COMMS`, `CGROUPS`)
//! take the new filter's names and processes; the probes, and everything
//! the collector learned, stay.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::maps::HashMap;

use crate::host::{preflight, proc};
use crate::kernel::load::{comm_key, Filter, Probes};

/// What a new filter changed: the processes traced from now on, and those
/// no longer traced (the collector forgets their lock instances, as at an
/// exit: what they do while untraced is unseen).
#[derive(Debug, Default)]
pub struct Retraced {
    pub added: Vec<u32>,
    pub removed: Vec<u32>,
}

impl Filter {
    /// The filter naming `pids` (processes, checked by the caller), the
    /// processes running `comms` and those in `cgroup_dirs` now, with
    /// their descendants: never the tracer itself (it may run in the
    /// cgroup it traces).
    pub fn naming(pids: &[u32], comms: &[String], cgroup_dirs: &[PathBuf]) -> Result<Filter> {
        let mut named = pids.to_vec();
        for comm in comms {
            named.extend(proc::pids_with_comm(comm));
        }
        let cgroups = cgroup_dirs
            .iter()
            .map(|dir| preflight::cgroup_id(dir))
            .collect::<Result<Vec<_>>>()?;
        for dir in cgroup_dirs {
            named.extend(proc::pids_in_cgroup(dir));
        }
        named.retain(|&p| p != std::process::id());
        named.sort_unstable();
        named.dedup();
        Ok(Filter {
            pids: named,
            comms: comms.to_vec(),
            cgroups,
            cgroup_dirs: cgroup_dirs.to_vec(),
            ..Filter::default()
        })
    }
}

impl Probes {
    /// Whether [`Probes::retrace`] can apply a filter: the kernel side was
    /// loaded filtered and [`Filter::reloadable`] (its command-name and
    /// cgroup checks are on whatever the filter named at the start). A
    /// host-wide tracer traces everything, without a filter to change.
    pub fn can_retrace(&self) -> bool {
        !self.host_wide && self.reloadable
    }

    /// Traces what `filter` (made by [`Filter::naming`]) names from now on,
    /// and its processes' descendants: command names and cgroups are
    /// checked in the kernel from now on, the processes that match now are
    /// added, and the traced processes that no longer match (nor descend
    /// from one that does) are no longer traced.
    pub fn retrace(&mut self, filter: &Filter) -> Result<Retraced> {
        anyhow::ensure!(
            self.can_retrace(),
            "the kernel side was not loaded with a filter to change"
        );
        replace_keys(self, "COMMS", filter.comms.iter().map(|c| comm_key(c)))?;
        replace_keys(self, "CGROUPS", filter.cgroups.iter().copied())?;
        self.cgroup_dirs = filter.cgroup_dirs.clone();
        self.cgroup_filter = !filter.cgroups.is_empty();
        let mut wanted: HashSet<u32> = filter.pids.iter().copied().collect();
        wanted.extend(proc::descendants(&filter.pids));
        wanted.remove(&std::process::id());
        let traced: Vec<u32> = {
            let map: HashMap<_, u32, u8> = HashMap::try_from(self.map("TRACED")?)?;
            map.keys().filter_map(|k| k.ok()).collect()
        };
        let mut out = Retraced::default();
        let mut still: HashSet<u32> = HashSet::new();
        {
            let mut map: HashMap<_, u32, u8> = HashMap::try_from(self.map_mut("TRACED")?)?;
            for id in traced {
                // A thread's entry goes with its process; a gone one's is
                // the exit tracepoint's to remove.
                let Some(tgid) = proc::tgid_of(id) else {
                    continue;
                };
                if wanted.contains(&tgid) {
                    still.insert(tgid);
                    continue;
                }
                let _ = map.remove(&id);
                if id == tgid {
                    out.removed.push(tgid);
                }
            }
        }
        // What the kernel side knew the threads of a process no longer
        // traced held: they release it unseen.
        for &pid in &out.removed {
            for tid in proc::threads(pid) {
                self.forget_thread(tid)?;
            }
        }
        let mut added: Vec<u32> = wanted.difference(&still).copied().collect();
        added.sort_unstable();
        for pid in added {
            // Locks it holds now were taken unseen: nothing stale from an
            // earlier time it was traced may stay held (a lock released
            // while untraced would order every later lock after it).
            for tid in proc::threads(pid) {
                self.forget_thread(tid)?;
            }
            match self.trace_pid(pid) {
                Ok(()) => out.added.push(pid),
                // It exited meanwhile.
                Err(e) => tracing::debug!(pid, "cannot trace a process: {e:#}"),
            }
        }
        Ok(out)
    }
}

/// Sets map `name`'s keys to `keys` (each with value 1).
fn replace_keys<K: aya::Pod + Eq + std::hash::Hash>(
    probes: &mut Probes,
    name: &str,
    keys: impl Iterator<Item = K>,
) -> Result<()> {
    let keys: HashSet<K> = keys.collect();
    let mut map: HashMap<_, K, u8> = HashMap::try_from(probes.map_mut(name)?)?;
    let old: Vec<K> = map.keys().filter_map(|k| k.ok()).collect();
    for k in old.iter().filter(|k| !keys.contains(k)) {
        let _ = map.remove(k);
    }
    for k in keys {
        map.insert(k, 1, 0)
            .with_context(|| format!("cannot set the filter map {name}"))?;
    }
    Ok(())
}
