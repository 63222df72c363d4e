//! Watching `free` in one process (see the kernel side's `freed`): a heap
//! lock freed without a destroy, its memory then a new lock that no init
//! call announces (zeroed, `PTHREAD_MUTEX_INITIALIZER`, a C++ `std::mutex`,
//! which never calls `pthread_mutex_init` or `_destroy`), is the same
//! address, so without the free the new lock would inherit the old one's
//! dependencies: a false inversion.
//!
//! A probe on `free` costs every call a trap, so it is put only in the
//! processes whose dependencies name a heap lock, when the first one is
//! seen (`--watch-free` puts it everywhere from the start instead). The
//! time it went in is kept: a heap lock's dependency recorded before that
//! cannot be judged (see `reuse`).

use std::{
    num::NonZeroU32,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    UProbe,
};
use tracing::{debug, warn};

use crate::kernel::links::{Attacher, FreeLink, Group, Watch};
use crate::kernel::load::Probes;
use crate::kernel::multi;
use crate::kernel::targets::FileId;

/// How long the watch of an exited process stays known.
const GONE_KEPT: Duration = Duration::from_secs(60);

/// Whether a process's frees are seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// From `since` (CLOCK_MONOTONIC ns; 0 with `--watch-free`) until its
    /// next exec, if it exec'd since.
    Since { since: u64, until: Option<u64> },
    /// Not yet.
    No,
    /// Not now: the tracer's descriptors are short (tried again later).
    Refused,
    /// They cannot be: no `free` in the probed files it maps.
    Never,
}

impl Watched {
    /// Whether a record made at `ns` had the process's frees watched.
    pub fn covers(self, ns: u64) -> bool {
        matches!(self, Watched::Since { since, until } if since <= ns && until.is_none_or(|u| ns < u))
    }
}

impl Probes {
    /// Whether process `pid`'s frees are watched.
    pub fn frees_watched(&self, pid: u32) -> Watched {
        if self.watch_free {
            return Watched::Since {
                since: 0,
                until: None,
            };
        }
        let watches = &self.links.frees;
        match watches.by_process.get(&pid) {
            Some(w) => Watched::Since {
                since: w.since,
                until: w.until,
            },
            None if watches.unwatchable.contains_key(&pid) => Watched::Never,
            None if watches.refused.recently_refused(pid) => Watched::Refused,
            None => Watched::No,
        }
    }

    /// Process `pid` exec'd, or a new process got pid `pid` (a fork), at
    /// `at_ns` (CLOCK_MONOTONIC): a watch made before covers the old
    /// program only.
    pub fn frees_new_program(&mut self, pid: u32, at_ns: u64) {
        let watches = &mut self.links.frees;
        watches.unwatchable.remove(&pid);
        if let Some(w) = watches.by_process.get_mut(&pid) {
            if w.since < at_ns && w.until.is_none() {
                w.until = Some(at_ns);
            }
        }
    }

    /// Puts the `free` probe of the probed files that process `pid` maps
    /// (`mapped`: their device and inode) in it, unless it is there for
    /// its current program.
    pub fn watch_frees(&mut self, pid: u32, mapped: &[FileId]) -> Result<Watched> {
        let now = self.frees_watched(pid);
        if matches!(now, Watched::Since { until: None, .. } | Watched::Never) {
            return Ok(now);
        }
        let groups: Vec<(FileId, std::path::PathBuf, Group)> = self
            .links
            .plans
            .iter()
            .filter(|(id, _)| mapped.contains(id))
            .filter_map(|(id, plan)| Some((*id, plan.open_path.clone(), plan.free.clone()?)))
            .collect();
        if groups.is_empty() {
            self.links.frees.unwatchable.insert(pid, ());
            return Ok(Watched::Never);
        }
        let needed: usize = match self.links.attacher {
            Attacher::Multi(_) => groups.len(),
            Attacher::Single => groups.iter().map(|(_, _, g)| g.offsets.len()).sum(),
        };
        if !crate::host::descriptors::room_for_links(needed as u64) {
            if self.links.frees.refused.refuse(pid) {
                warn!(
                    pid,
                    "no file descriptor to spare for watching a process's frees: its heap \
                     locks are not judged until one is (counted in the summary's lock_memory)"
                );
            }
            return Ok(Watched::Refused);
        }
        let mut made = Vec::new();
        for (_, path, group) in &groups {
            match &self.links.attacher {
                Attacher::Multi(programs) => {
                    let program = programs
                        .get(group.program)
                        .ok_or_else(|| anyhow!("program {} was not loaded", group.program))?;
                    let link = multi::attach(
                        program.as_fd(),
                        path,
                        &group.offsets,
                        &group.cookies,
                        false,
                        Some(pid),
                    )?;
                    made.push(FreeLink::Multi(link));
                }
                Attacher::Single => {
                    let scope = UProbeScope::OneProcess(
                        NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0"))?,
                    );
                    let uprobe: &mut UProbe = self.program(group.program)?.try_into()?;
                    if uprobe.fd().is_err() {
                        uprobe.load()?;
                    }
                    for (&offset, &cookie) in group.offsets.iter().zip(&group.cookies) {
                        let at = UProbeAttachPoint {
                            location: UProbeAttachLocation::AbsoluteOffset(offset),
                            cookie: Some(cookie),
                        };
                        let id = uprobe.attach(at, path, scope)?;
                        made.push(FreeLink::Single(uprobe.take_link(id)?));
                    }
                }
            }
        }
        let since = crate::host::proc::clock_ns(libc::CLOCK_MONOTONIC);
        debug!(pid, links = made.len(), "frees watched");
        let watch = Watch {
            since,
            until: None,
            links: made,
            gone_at: None,
        };
        if let Some(old) = self.links.frees.by_process.insert(pid, watch) {
            // Another program's files (an exec).
            self.links.closers.push(std::thread::spawn(move || {
                multi::close_concurrently(old.links)
            }));
        }
        Ok(Watched::Since { since, until: None })
    }

    /// Processes whose frees are watched now (for the summary).
    pub fn processes_watching_frees(&self) -> usize {
        self.links.frees.by_process.len()
    }

    /// Processes refused a watch for lack of descriptors so far.
    pub fn processes_refused_watches(&self) -> u64 {
        self.links.frees.refused.processes
    }

    /// Closes the `free` links of processes that exited (in the background:
    /// each close waits for a grace period). Their watch stays known for
    /// [`GONE_KEPT`]: records of a process are processed after its exit
    /// (those the kernel deferred while the ring buffer was full).
    pub(super) fn unwatch_exited(&mut self) {
        let watches = &mut self.links.frees;
        let now = Instant::now();
        watches
            .by_process
            .retain(|_, w| w.gone_at.is_none_or(|at| now - at < GONE_KEPT));
        watches
            .unwatchable
            .retain(|&pid, _| crate::host::proc::is_process(pid));
        watches.refused.forget_exited();
        let mut closing: Vec<FreeLink> = Vec::new();
        for (&pid, w) in watches.by_process.iter_mut() {
            if w.gone_at.is_none() && !crate::host::proc::is_process(pid) {
                w.gone_at = Some(now);
                closing.append(&mut w.links);
            }
        }
        if !closing.is_empty() {
            self.links.closers.push(std::thread::spawn(move || {
                multi::close_concurrently(closing)
            }));
        }
    }
}
